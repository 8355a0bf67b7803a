"""Closed-form timing for one device: latency = schedule features · cost vector.

Events on one device with no queueing run back to back, so each utterance's latency is a
sum of per-event costs, and every cost is linear in a schedule feature (a measured verify
table too: calls are counted per block size). Stacking cost
vectors for many (device, network) configurations turns a sweep into one matrix product.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..network import Network
from .costs import CostModel
from .replay import FEATURES, FI, VERIFY_SIZE_FEATURES


def cost_theta(cost: CostModel, rtt_s, up_Bps, down_Bps, overhead_bytes, extra_s=0.0, edge_scale=1.0,
               cloud_scale=1.0) -> np.ndarray:
    """Seconds per unit of each schedule feature: the one mapping from costs and network to the cost vector.

    Network fields and scales may be arrays (one value per configuration), giving (features, configurations);
    scalars give (features,). ``extra_s`` is the expected jitter and loss delay per message; the scales
    multiply edge and cloud model time (1 / speed-up).
    """
    shape = np.broadcast(rtt_s, up_Bps, down_Bps, overhead_bytes, extra_s, edge_scale, cloud_scale).shape
    th = np.zeros((len(FEATURES),) + shape)
    e, c = edge_scale, cloud_scale
    th[FI["edge_prefills"]] = cost.edge_prefill_a * e
    th[FI["edge_prefill_tokens"]] = cost.edge_prefill_b * e
    th[FI["draft_steps"]] = cost.edge_step_a * e
    th[FI["draft_ctx"]] = cost.edge_step_c * e
    th[FI["gate_calls"]] = cost.gate_s
    th[FI["up_msgs"]] = rtt_s / 2 + overhead_bytes / up_Bps + extra_s
    th[FI["up_bytes"]] = 1.0 / up_Bps
    th[FI["down_msgs"]] = rtt_s / 2 + overhead_bytes / down_Bps + extra_s
    th[FI["down_bytes"]] = 1.0 / down_Bps
    th[FI["cloud_prefills"]] = cost.cloud_prefill_a * c
    th[FI["cloud_prefill_tokens"]] = cost.cloud_prefill_b * c
    th[FI["verify_calls"]] = cost.verify_a * c
    th[FI["verify_tokens"]] = cost.verify_b * c
    th[FI["verify_ctx"]] = cost.verify_c * c
    th[FI["prefill_verify_tokens"]] = cost.cloud_prefill_b * c  # merged into a prefill pass: its slope
    th[FI["cloud_steps"]] = cost.cloud_step_a * c
    th[FI["cloud_ctx"]] = cost.cloud_step_c * c
    if cost.verify_table is not None:
        # a call of j tokens already pays verify_a + verify_b·j through verify_calls and verify_tokens: its size's
        # count adds the rest of its table entry (negative where the table is below that line; the call's sum is
        # its table entry, ≥ 0). Calls longer than the table pay the last entry plus verify_b per extra token.
        for j, name in enumerate(VERIFY_SIZE_FEATURES, 1):
            th[FI[name]] = (cost.verify_table[j - 1] - cost.verify_a - cost.verify_b * j) * c
    return th


def cost_vector(cost: CostModel, net: Network) -> np.ndarray:
    """Seconds per unit of each schedule feature, for one device and network (jitter and loss at their mean)."""
    return cost_theta(cost, net.rtt_s, net.up_Bps, net.down_Bps, net.overhead_bytes, net.expected_extra_s)


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
    "cloud_verify": ("verify_calls", "verify_tokens", "verify_ctx", "prefill_verify_tokens", *VERIFY_SIZE_FEATURES),
    "cloud_decode": ("cloud_steps", "cloud_ctx"),
    "downlink": ("down_msgs", "down_bytes"),
}


def breakdown(features: np.ndarray, theta: np.ndarray) -> dict[str, np.ndarray]:
    """Seconds per part of the run, per utterance, for one configuration (theta of shape (features,))."""
    return {part: features[:, [FI[f] for f in names]] @ theta[[FI[f] for f in names]]
            for part, names in PARTS.items()}
