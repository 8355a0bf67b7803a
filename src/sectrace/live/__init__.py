"""Live runs: the cloud verifier as a service, the edge client, a shaped network path, validation.

Imports torch, transformers and FastAPI (the ``live`` extra); the simulator never needs it.
"""
