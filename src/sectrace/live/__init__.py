"""Live runs: the cloud verifier as a service, the edge client, a shaped network path, validation.

Needs the ``live`` extra (FastAPI, uvicorn, httpx, MessagePack) and ``collect`` (torch, transformers)
for the models; the simulator never imports it. docs/live.md explains the pieces.
"""

from .client import CloudClient, CloudInputs, LiveRun, LiveSession, decode_live
from .proxy import ShapingProxy

__all__ = ["CloudClient", "CloudInputs", "LiveRun", "LiveSession", "ShapingProxy", "decode_live"]
