"""Model loading, prompts and datasets: what `collect` and the live service both need (torch imported lazily)."""
