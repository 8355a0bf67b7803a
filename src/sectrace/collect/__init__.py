"""Model backends (transformers), trie exploration, timing probes, datasets and shards: `sectrace collect`."""
