"""The two gates the protocol itself needs for its baselines; the rest live in ``sectrace.gates``."""

from __future__ import annotations

from dataclasses import dataclass

from .policy import Block


@dataclass(frozen=True)
class Always:
    """Escalate every block (the lossless reference with exact top-1 acceptance)."""

    def escalate(self, block: Block) -> bool:
        return True


@dataclass(frozen=True)
class Never:
    """Never escalate: the drafter's own caption."""

    def escalate(self, block: Block) -> bool:
        return False
