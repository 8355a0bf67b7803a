"""sectrace: edge–cloud speculative decoding for speech emotion captioning, collected once, replayed exactly."""

__version__ = "0.1.0"
