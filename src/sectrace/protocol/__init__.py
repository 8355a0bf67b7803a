"""The draft–verify protocol: policy, gate and acceptance interfaces and the state machine.

Pure logic: no I/O, no clock. Everything that decodes (live models, trace replay,
the live edge client) drives :func:`run`.
"""

from .engine import (
    CloudStart,
    CloudStep,
    CloudUnavailable,
    Commit,
    CoverageMiss,
    Draft,
    DraftToken,
    Fallback,
    GateCall,
    Judgement,
    Prefill,
    Run,
    Session,
    Verify,
    accepted_prefix,
    bonus_earned,
    committed_tokens,
    run,
)
from .policy import (
    CLOUD_CACHES,
    PRIVACY_MODES,
    VERIFIER_MODE_FOR_PRIVACY,
    Accept,
    Always,
    Block,
    Gate,
    Never,
    Policy,
    PolicyError,
    SessionGate,
    cloud_only,
    drafter_only,
    lossless,
)

__all__ = [
    "Accept", "Always", "Block", "CLOUD_CACHES", "CloudStart", "CloudStep", "CloudUnavailable", "Commit",
    "CoverageMiss", "Draft", "DraftToken", "Fallback", "Gate", "GateCall", "Judgement", "Never", "PRIVACY_MODES",
    "Policy", "PolicyError", "Prefill", "Run", "Session", "SessionGate", "VERIFIER_MODE_FOR_PRIVACY", "Verify", "accepted_prefix",
    "bonus_earned", "cloud_only", "committed_tokens", "drafter_only", "lossless", "run",
]
