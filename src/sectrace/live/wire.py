"""What travels between the edge and the cloud verifier, and how it is encoded.

Token ids go as packed little-endian int32 (4 bytes each, the size the simulator prices),
bodies as MessagePack. JSON bodies are accepted too (ids as lists, bytes as base64): curl,
browsers and schema-driven fuzzers speak JSON. The request models below are the one place
the service's inputs are described; the OpenAPI schema is generated from them.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import struct
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

MSGPACK = "application/msgpack"
JSON = "application/json"
TOKEN_STREAM = "application/x-sectrace-tokens"
#: One streamed token (cloud-only decoding): id, the verifier's probability of it, end of caption.
TOKEN_RECORD = struct.Struct("<if?")
ID_FIELDS = ("prompt", "committed", "draft", "new")
BYTES_FIELDS = ("audio",)
TENSOR_DTYPES = ("float32", "float16", "int64", "int32", "bool")


class WireError(Exception):
    """A request the service cannot take; ``status`` is the HTTP status to answer with."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def pack_ids(ids) -> bytes:
    return np.asarray(list(ids), dtype="<i4").tobytes()


def unpack_ids(data: bytes, field: str) -> list[int]:
    if len(data) % 4:
        raise WireError(422, f"{field}: packed token ids must be a multiple of 4 bytes (little-endian int32), "
                             f"got {len(data)}")
    return np.frombuffer(data, dtype="<i4").tolist()


Ids = list[StrictInt]


class Tensor(BaseModel):
    """An audio-feature tensor (e.g. Whisper log-mels): raw little-endian bytes, dtype and shape."""

    model_config = ConfigDict(extra="forbid")
    dtype: Literal["float32", "float16", "int64", "int32", "bool"]
    shape: list[StrictInt] = Field(max_length=4)
    data: bytes


class Session(BaseModel):
    """What the cloud is told about an utterance: verifier view, prompt, and audio if the privacy mode sends it."""

    model_config = ConfigDict(extra="forbid")
    mode: Literal["audio", "blind"] = "blind"
    prompt: Ids = Field(min_length=1)
    features: dict[str, Tensor] | None = None
    audio: bytes | None = None  # raw PCM16 mono (privacy mode `raw`)


class Judge(BaseModel):
    """A block to verify after ``committed`` caption tokens, with the acceptance rule and whether a bonus is wanted."""

    model_config = ConfigDict(extra="forbid")
    committed: Ids = []
    draft: Ids = Field(min_length=1)
    accept: str = "top1"
    bonus: StrictBool = True


class OpenRequest(Session, Judge):
    """POST /v1/sessions: open a stateful session and verify its first block in the same round trip."""


class VerifyRequest(BaseModel):
    """POST /v1/sessions/{id}/verify: keep ``base`` held tokens, append ``new``, verify ``draft``."""

    model_config = ConfigDict(extra="forbid")
    base: StrictInt = Field(ge=0)
    new: Ids = []
    draft: Ids = Field(min_length=1)
    accept: str = "top1"
    bonus: StrictBool = True


class StatelessRequest(Session, Judge):
    """POST /v1/verify: everything in every call, nothing kept."""


class GenerateRequest(Session):
    """POST /v1/generate: cloud-only decoding, tokens streamed back as they are made."""

    max_new_tokens: StrictInt = Field(ge=1)


def decode_body(raw: bytes, content_type: str | None, max_items: int | None = None) -> dict:
    """Bytes → a plain dict with ids as lists of ints and binary fields as bytes.

    ``max_items`` bounds every list (and packed id field) before it is built: an 8 MB body of one-byte
    MessagePack ints would otherwise become a list of 8 million (64 MB of pointers) before any limit
    is checked, and pydantic would then validate every item."""
    ct = (content_type or JSON).split(";")[0].strip().lower()
    if ct in (MSGPACK, "application/x-msgpack", "application/vnd.msgpack"):
        import msgpack

        kw = {} if max_items is None else {"max_array_len": max_items, "max_map_len": max_items}
        try:
            obj = msgpack.unpackb(raw, raw=False, strict_map_key=True, **kw)
        except ValueError as exc:
            if max_items is not None and "exceeds max_" in str(exc):
                raise WireError(413, f"the body holds a list of more than {max_items} items, over this "
                                     "service's limit") from None
            raise WireError(400, f"the body is not valid MessagePack ({type(exc).__name__})") from None
        except Exception as exc:  # msgpack raises several types for malformed input
            raise WireError(400, f"the body is not valid MessagePack ({type(exc).__name__})") from None
        binary = True
    elif ct == JSON:
        # json.loads has no limits and holds the GIL throughout (a thread does not help): count first. A
        # valid body's commas separate at most four id lists and a few fields; base64 has none.
        if max_items is not None and raw.count(b",") > 4 * max_items + 64:
            raise WireError(413, f"the body holds more than {4 * max_items} list items, over this service's "
                                 f"limit of {max_items} token ids per field")
        try:
            obj = json.loads(raw)
        except (ValueError, RecursionError):
            raise WireError(400, "the body is not valid JSON") from None
        binary = False
    else:
        raise WireError(415, f"unsupported content type {ct!r}; send {MSGPACK} (or {JSON})")
    if not isinstance(obj, dict):
        raise WireError(422, "the body must be an object (a map of field names to values)")
    for f in ID_FIELDS:
        v = obj.get(f)
        n = len(v) // 4 if isinstance(v, (bytes, bytearray)) else len(v) if isinstance(v, list) else 0
        if max_items is not None and n > max_items:
            raise WireError(413, f"{f}: {n} token ids is over this service's limit of {max_items}")
        if isinstance(v, (bytes, bytearray)):
            obj[f] = unpack_ids(bytes(v), f)
    if not binary:
        for f in BYTES_FIELDS:
            obj[f] = _b64(obj[f], f) if isinstance(obj.get(f), str) else obj.get(f, None)
        if isinstance(obj.get("features"), dict):
            for name, t in obj["features"].items():
                if isinstance(t, dict) and isinstance(t.get("data"), str):
                    t["data"] = _b64(t["data"], f"features.{name}.data")
    for f in BYTES_FIELDS:
        if f in obj and obj[f] is None:
            del obj[f]
    return obj


def _b64(text: str, field: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise WireError(422, f"{field}: in JSON, binary fields are base64 strings") from None


def parse(model: type[BaseModel], obj: dict):
    """Validate into ``model``; the first problem becomes one sentence (422)."""
    try:
        return model.model_validate(obj)
    except ValidationError as exc:
        e = exc.errors()[0]
        where = ".".join(str(p) for p in e.get("loc", ())) or "body"
        raise WireError(422, f"{where}: {e.get('msg', 'invalid')}") from None


def encode_body(obj: dict, binary: bool) -> tuple[bytes, str]:
    if binary:
        import msgpack

        return msgpack.packb(obj, use_bin_type=True, use_single_float=True), MSGPACK
    return json.dumps(_jsonable(obj), separators=(",", ":")).encode(), JSON


def _jsonable(obj):
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (bytes, bytearray)):
        return base64.b64encode(obj).decode()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def tensor_to_wire(t) -> dict:
    """A torch tensor → the Tensor wire form (float tensors go as float32 unless already float16)."""
    import torch

    t = t.detach().cpu()
    if t.dtype.is_floating_point and t.dtype != torch.float16:
        t = t.float()
    arr = t.numpy()
    data = arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    return {"dtype": str(arr.dtype), "shape": list(arr.shape), "data": data}


def tensor_from_wire(t: Tensor, max_elements: int):
    import torch

    n = 1
    for d in t.shape:
        if d < 0:
            raise WireError(422, "features: tensor dimensions cannot be negative")
        if d > max_elements:  # also when another dimension is 0: numpy cannot shape past int64 (a 500)
            raise WireError(413, f"features: a tensor dimension of {d} is over this service's limit of "
                                 f"{max_elements} elements")
        n *= d
    if n > max_elements:
        raise WireError(413, f"features: a tensor of {n} elements is over this service's limit of {max_elements}")
    dt = np.dtype(t.dtype).newbyteorder("<")
    if len(t.data) != n * dt.itemsize:
        raise WireError(422, f"features: {len(t.data)} bytes do not hold a {t.dtype} tensor of shape {t.shape}")
    return torch.from_numpy(np.frombuffer(t.data, dtype=dt).reshape(t.shape).copy())
