"""Closed-form timing for one device: latency = schedule features · cost vector.

Events on one device with no queueing run back to back, so each utterance's latency is a
sum of per-event costs, and every cost is linear in a schedule feature. Stacking cost
vectors for many (device, network) configurations turns a sweep into one matrix product.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .costs import CostModel, Network
from .replay import FEATURES, FI


def cost_vector(cost: CostModel, net: Network) -> np.ndarray:
    """Seconds per unit of each schedule feature."""
    theta = np.zeros(len(FEATURES))
    theta[FI["edge_prefills"]] = cost.edge_prefill_a
    theta[FI["edge_prefill_tokens"]] = cost.edge_prefill_b
    theta[FI["draft_steps"]] = cost.edge_step_a
    theta[FI["draft_ctx"]] = cost.edge_step_c
    theta[FI["gate_calls"]] = cost.gate_s
    extra = net.expected_extra_s  # 0 without jitter and loss
    theta[FI["up_msgs"]] = net.rtt_s / 2 + net.overhead_bytes / net.up_Bps + extra
    theta[FI["up_bytes"]] = 1.0 / net.up_Bps
    theta[FI["down_msgs"]] = net.rtt_s / 2 + net.overhead_bytes / net.down_Bps + extra
    theta[FI["down_bytes"]] = 1.0 / net.down_Bps
    theta[FI["cloud_prefills"]] = cost.cloud_prefill_a
    theta[FI["cloud_prefill_tokens"]] = cost.cloud_prefill_b
    theta[FI["verify_calls"]] = cost.verify_a
    theta[FI["verify_tokens"]] = cost.verify_b
    theta[FI["verify_ctx"]] = cost.verify_c
    theta[FI["cloud_steps"]] = cost.cloud_step_a
    theta[FI["cloud_ctx"]] = cost.cloud_step_c
    return theta


def cost_matrix(configs: Sequence[tuple[CostModel, Network]]) -> np.ndarray:
    """(features, configurations)."""
    return np.column_stack([cost_vector(c, n) for c, n in configs])


def latency(features: np.ndarray, theta: np.ndarray) -> np.ndarray:
    """(utterances, features) @ (features, configs) → seconds (utterances, configs); NaN rows stay NaN."""
    return features @ theta


# Parts of the overhead, for breakdowns: which features belong to which part.
PARTS = {
    "edge_prefill": ("edge_prefills", "edge_prefill_tokens"),
    "edge_drafting": ("draft_steps", "draft_ctx"),
    "gate": ("gate_calls",),
    "uplink": ("up_msgs", "up_bytes"),
    "cloud_prefill": ("cloud_prefills", "cloud_prefill_tokens"),
    "cloud_verify": ("verify_calls", "verify_tokens", "verify_ctx"),
    "cloud_decode": ("cloud_steps", "cloud_ctx"),
    "downlink": ("down_msgs", "down_bytes"),
}


def breakdown(features: np.ndarray, theta: np.ndarray) -> dict[str, np.ndarray]:
    """Seconds per part of the run, per utterance, for one configuration (theta of shape (features,))."""
    return {part: features[:, [FI[f] for f in names]] @ theta[[FI[f] for f in names]]
            for part, names in PARTS.items()}
