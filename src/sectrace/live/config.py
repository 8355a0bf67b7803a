"""What the operator sets for `sectrace serve`: the limits on requests and clients, and the API keys.

Why a module of its own: the command line builds both before the model loads (minutes), so a mistake is
one sentence at once, and every part of the service reads the same :class:`Limits`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError


@dataclass
class Limits:
    """What one request and one client may ask for (each breach is a clear 4xx or 503)."""

    max_draft: int = 32
    max_prompt: int = 4096
    max_context: int = 8192  # prompt + committed + draft tokens in one session
    max_new_tokens: int = 512  # cloud-only decoding
    max_body_bytes: int = 8 * 2**20
    max_feature_elements: int = 2 * 2**20
    sessions_per_client: int = 16
    max_sessions: int = 256
    idle_s: float = 120.0
    #: KV-cache bytes all sessions and calls may hold together; None: a quarter of this machine's memory
    #: (half the device's free memory on CUDA), resolved by create_app.
    max_kv_bytes: int | None = None
    header_timeout_s: float = 10.0  # a request's headers must arrive within this of its first byte
    body_timeout_s: float = 60.0  # and its body within this of its headers

    def check(self) -> None:
        """Each limit must allow something: one sentence per mistake (the command line's options)."""
        for name, flag, lo in (("max_draft", "--max-draft", 1), ("max_prompt", "max_prompt", 1),
                               ("max_context", "--max-context", 2), ("max_new_tokens", "max_new_tokens", 1),
                               ("max_body_bytes", "--max-body", 1), ("max_feature_elements", "max_feature_elements", 1),
                               ("sessions_per_client", "--sessions-per-client", 1),
                               ("max_sessions", "--max-sessions", 1)):
            v = getattr(self, name)
            if not isinstance(v, int) or v < lo:
                raise UserError(f"{flag} must be a whole number of at least {lo}, not {v}")
        for name, flag in (("idle_s", "--idle"), ("header_timeout_s", "--header-timeout"),
                           ("body_timeout_s", "--body-timeout")):
            v = getattr(self, name)
            if not v > 0 or v == float("inf"):
                raise UserError(f"{flag} must be a positive duration, not {v} s")
        if self.max_kv_bytes is not None and self.max_kv_bytes < 1:
            raise UserError(f"--max-kv-memory must be positive, not {self.max_kv_bytes} bytes")



def parse_keys(text: str) -> dict[str, str]:
    """Key file lines: ``NAME KEY`` or just ``KEY`` (named client1, client2, …); ``#`` starts a comment."""
    keys: dict[str, str] = {}
    for n, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) > 2:
            raise UserError(f"key file line {n}: write NAME KEY or KEY")
        name, key = (parts if len(parts) == 2 else (f"client{len(keys) + 1}", parts[0]))
        if len(key) < 16:
            raise UserError(f"key file line {n}: a key must be at least 16 characters (use e.g. "
                            "python -c 'import secrets; print(secrets.token_urlsafe(24))')")
        if name in keys:
            raise UserError(f"key file line {n}: client name {name!r} appears twice")
        keys[name] = key
    if not keys:
        raise UserError("the key file holds no keys; write one KEY (or NAME KEY) per line")
    return keys
