"""Named device and network profiles, each with the source of its figures written next to it.

A device profile fixes one side of the cost model (edge or cloud); a network profile fixes
the path between them. Figures are typical values, not guarantees: where a preset is derived
(scaled) rather than measured, its ``source`` says how.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import UserError
from ..network import Network
from .costs import CostModel

# --- devices ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EdgeDevice:
    """Edge drafter speed: decode at ``tps`` output tokens/s; ``ttft_s`` to encode audio + prompt."""

    name: str
    tps: float
    ttft_s: float
    source: str

    def apply(self, cost: CostModel) -> CostModel:
        return replace(cost, edge_step_a=1.0 / self.tps, edge_step_c=0.0, edge_prefill_a=self.ttft_s,
                       edge_prefill_b=0.0, source=_join(cost.source, f"edge={self.name}"))


@dataclass(frozen=True)
class CloudDevice:
    """Cloud verifier speed: decode at ``tps``; prefill ``ttft_s``; a verify call costs one decode
    step plus ``verify_per_token_s`` per extra judged token (the block runs as one forward pass)."""

    name: str
    tps: float
    ttft_s: float
    verify_per_token_s: float
    source: str

    def apply(self, cost: CostModel) -> CostModel:
        step = 1.0 / self.tps
        cost = cost.with_linear_verify(step, self.verify_per_token_s, 0.0)  # a measured verify table goes too
        return replace(cost, cloud_step_a=step, cloud_step_c=0.0, cloud_prefill_a=self.ttft_s, cloud_prefill_b=0.0,
                       source=_join(cost.source, f"cloud={self.name}"))


def _join(src: str, extra: str) -> str:
    return f"{src}, {extra}" if src else extra


_STUDY = "the study's Table 1 (MER2024 subset, 332 files; the team's shared/reference/study-tables.csv)"


def study_decode_rate(otps: float, oet_s: float, ttft_s: float) -> float:
    """The decode rate a row of the study's Table 2 implies, in tokens/s.

    The study's rows do not add up as it defines them (TTFT + OET exceeds the total in every row); they fit
    OET = the whole generation call, prefill included. So a caption has N = OTPS × OET tokens, the first comes
    out of the prefill (TTFT) and the other N − 1 are decoded in OET − TTFT. Reading OTPS itself as the decode
    rate counts the prefill twice (7.74 s + 72 / 2.10 tok/s = 42.0 s for an edge caption the study timed at
    34.89 s). docs/study.md shows the arithmetic for every row."""
    return (otps * oet_s - 1.0) / (oet_s - ttft_s)


# The study's Table 2 rows the device presets are read from: (OTPS tok/s, OET s, TTFT s).
_STUDY_EDGE = (2.10, 34.80, 7.74)  # Qwen2.5-Omni-3B FP32 on 2 CPU cores
_STUDY_CLOUD = (24.16, 3.25, 0.39)  # Qwen2.5-Omni-7B on 1x A100
_EDGE_TPS = study_decode_rate(*_STUDY_EDGE)
_A100_TPS = study_decode_rate(*_STUDY_CLOUD)
_READ = "decode rate (N - 1) / (OET - TTFT) with N = OTPS x OET (study_decode_rate)"

# Decoding a 7B model at batch 1 is memory-bandwidth bound, so a GPU of another kind is
# approximated by scaling the study's A100 by the ratio of memory bandwidths (vendor datasheets).
# The study's A100 held 42.5 GB of GPU memory, so it was an 80 GB card: 2.04 TB/s (A100 80GB SXM).
_A100_BW = 2039.0

EDGE_DEVICES = {
    "study-cpu-2core": EdgeDevice(
        "study-cpu-2core", _EDGE_TPS, 7.74,
        f"measured: Qwen2.5-Omni-3B FP32 on 2 CPU cores, OTPS 2.10 tok/s over OET 34.80 s, TTFT 7.74 s; "
        f"{_READ} = {_EDGE_TPS:.2f} tok/s; {_STUDY}"),
    "study-cpu-2core-x4": EdgeDevice(
        "study-cpu-2core-x4", 4 * _EDGE_TPS, 7.74 / 4,
        "derived: study-cpu-2core scaled 4x (what --edge-speedup 4 does); a what-if, not a measurement"),
}

CLOUD_DEVICES = {
    "study-a100": CloudDevice(
        "study-a100", _A100_TPS, 0.39, 0.004,
        f"measured: Qwen2.5-Omni-7B on 1x A100, OTPS 24.16 tok/s over OET 3.25 s, TTFT 0.39 s; "
        f"{_READ} = {_A100_TPS:.2f} tok/s; {_STUDY}. "
        "Per extra verified token 4 ms: an assumption (the study did not time block verification)"),
    "h100-sxm": CloudDevice(
        "h100-sxm", _A100_TPS * 3350.0 / _A100_BW, 0.39 * _A100_BW / 3350.0, 0.004 * _A100_BW / 3350.0,
        "derived: study-a100 x memory bandwidth ratio 3.35/2.04 TB/s (NVIDIA H100 SXM and A100 80GB SXM "
        "datasheets); assumes bandwidth-bound decoding"),
    "l4": CloudDevice(
        "l4", _A100_TPS * 300.0 / _A100_BW, 0.39 * _A100_BW / 300.0, 0.004 * _A100_BW / 300.0,
        "derived: study-a100 x memory bandwidth ratio 0.30/2.04 TB/s (NVIDIA L4 and A100 80GB SXM datasheets); "
        "assumes bandwidth-bound decoding"),
}


def edge_device(name: str) -> EdgeDevice:
    try:
        return EDGE_DEVICES[name.lower()]
    except KeyError:
        raise UserError(f"unknown edge device {name!r}; use one of {', '.join(EDGE_DEVICES)}") from None


def cloud_device(name: str) -> CloudDevice:
    try:
        return CLOUD_DEVICES[name.lower()]
    except KeyError:
        raise UserError(f"unknown cloud device {name!r}; use one of {', '.join(CLOUD_DEVICES)}") from None


# --- networks -----------------------------------------------------------------------------


@dataclass(frozen=True)
class NetworkPreset:
    network: Network
    source: str


def _net(name, rtt, up_mbit, down_mbit, jitter, loss, source):
    return NetworkPreset(Network(rtt_s=rtt, up_Bps=up_mbit * 1e6 / 8, down_Bps=down_mbit * 1e6 / 8,
                                 overhead_bytes=100, jitter=jitter, loss=loss, rto_s=0.2, name=name), source)


#: Typical figures. RTO 200 ms is Linux TCP's minimum retransmission timeout (TCP_RTO_MIN, include/net/tcp.h);
#: RFC 6298 allows 1 s. Per-message overhead 100 B: TCP/IP headers (40 B) plus a small framing header.
NETWORK_PRESETS = {
    "lan": _net("lan", 0.001, 1000, 1000, None, 0.0,
                "wired gigabit Ethernet in one building: sub-millisecond RTT; an idealised reference path"),
    "wifi": _net("wifi", 0.010, 100, 200, "expon(scale=0.002)", 0.001,
                 "typical home Wi-Fi 5/6 to a nearby cloud region: ~10 ms RTT, tens to hundreds of Mbit/s; "
                 "exponential queueing jitter (mean 2 ms) is a modelling choice"),
    "4g": _net("4g", 0.050, 10, 30, "lognorm(s=0.6,scale=0.006)", 0.005,
               "LTE: 3GPP TR 36.913 targets 10 ms user-plane latency; measured end-to-end RTT is typically "
               "40-60 ms (Opensignal mobile reports), uplink ~10 Mbit/s, downlink ~30 Mbit/s"),
    "5g": _net("5g", 0.020, 50, 200, "lognorm(s=0.5,scale=0.003)", 0.002,
               "5G NR (sub-6 GHz): ITU-R M.2410 requires 4 ms user-plane latency for eMBB; measured end-to-end "
               "RTT ~20-30 ms (Opensignal), uplink ~50 Mbit/s, downlink ~200 Mbit/s"),
    "leo-satellite": _net("leo-satellite", 0.045, 10, 100, "lognorm(s=0.6,scale=0.008)", 0.01,
                          "LEO (Starlink): the operator's specifications page states 25-60 ms latency, "
                          "uplink 5-20 Mbit/s, downlink 25-220 Mbit/s"),
    "satellite": _net("satellite", 0.600, 3, 25, "lognorm(s=0.4,scale=0.02)", 0.01,
                      "geostationary: propagation alone is 4 x 35,786 km / c = 477 ms per round trip; "
                      "~600 ms with processing and ground segments"),
}


def network_preset(name: str) -> Network:
    try:
        return NETWORK_PRESETS[name.lower()].network
    except KeyError:
        raise UserError(f"unknown network {name!r}; use one of {', '.join(NETWORK_PRESETS)}") from None


def base_cost(trace, mode: str = "fit", edge: str | None = None, cloud: str | None = None) -> CostModel:
    """The cost model to price with: fitted to the trace's timings (``fit``) or the study's devices (``study``:
    the presets study-cpu-2core and study-a100, so both flags price the study alike), then the named edge and
    cloud device presets applied on top (the CLI's --costs/--edge-device/--cloud-device)."""
    from .costs import fit_costs

    if mode not in ("fit", "study"):
        raise UserError(f"unknown cost mode {mode!r}; use fit (the trace's timings) or study (the study's devices)")
    if mode == "fit":
        cost = fit_costs(trace.timings)
    else:
        cost = CLOUD_DEVICES["study-a100"].apply(EDGE_DEVICES["study-cpu-2core"].apply(CostModel(source="")))
    if edge:
        cost = edge_device(edge).apply(cost)
    if cloud:
        cost = cloud_device(cloud).apply(cost)
    return cost
