"""Timing probes and hardware description, measured on the machine that collects.

Each probe runs once to warm up, then ``repeats`` times; every repeat is one row of
timings.parquet, so readers take medians. A probe is a real forward pass through the same
cached path the exploration uses: a decode step at context c crops one position and runs it
again; a verify of n tokens crops n and runs them in one pass.
"""

from __future__ import annotations

import os
import platform
import resource
import time

from ..models.lm import CachedLM
from ..simulate.costs import VERIFY_TABLE_MAX

VERIFY_NS = tuple(range(1, VERIFY_TABLE_MAX + 1))
CAPTION_CTX = (0, 32, 64)


def verify_sizes(ks=()) -> tuple[int, ...]:
    """Every block size a verify call of these policies can carry, to be timed: 1 … k+1 for each block size k
    (a block cut short by EOS or by a correction in the drafter's own run is shorter than k; a stateful call
    also re-runs the last correction or bonus token, one more), and never fewer than 1 … 16, the sizes the
    cost model's verify table prices one by one. Verify time is not linear in the block size on real
    hardware, so timing only k would leave the others to a guess."""
    top = max([VERIFY_TABLE_MAX, *(int(k) + 1 for k in ks if k and k > 0)])
    return tuple(range(1, top + 1))


def _filler(prompt: list[int], n: int) -> list[int]:
    return [prompt[i % len(prompt)] for i in range(n)]


def _timed(lm: CachedLM, seq, n) -> float:
    import torch

    lm.forget_logits()  # time a forward pass, never a reuse of stored rows
    if lm.device.type == "cuda":
        torch.cuda.synchronize(lm.device)
    t0 = time.perf_counter()
    lm.logits_for(seq, n)  # .cpu() inside waits for the device
    return time.perf_counter() - t0


def probe(model, vocab, prompt: list[int], side: str, device: str, threads: int | None, repeats: int = 5,
          first_kwargs: dict | None = None, verify: bool = False, ctxs=CAPTION_CTX, ns=VERIFY_NS,
          progress=None) -> list[tuple]:
    """Rows (side, phase, new_tokens, context_tokens, seconds, device, threads)."""
    rows = []
    lm = CachedLM(model, vocab, first_kwargs, slots=1)  # one cache cropped in place, as a decoder runs: no copies
    for r in range(1 + max(1, repeats // 2)):  # prefill is the costly one: fewer repeats
        lm.reset()
        t = _timed(lm, prompt, 1)
        if r:
            rows.append((side, "prefill", len(prompt), 0, t, device, threads))
    for c in ctxs:
        seq = prompt + _filler(prompt, c + 1)
        lm.logits_for(seq[:-1], 1)
        for r in range(1 + repeats):
            t = _timed(lm, seq, 1)
            if r:
                rows.append((side, "decode", 1, len(seq) - 1, t, device, threads))
        if verify:
            for n in ns:
                seq_n = prompt + _filler(prompt, c + n)
                lm.logits_for(seq_n[:-n], 1)
                for r in range(1 + repeats):
                    t = _timed(lm, seq_n, n)
                    if r:
                        rows.append((side, "verify", n, len(seq_n) - n, t, device, threads))
        if progress:
            progress()
    return rows


def hardware(device: str, threads: int | None) -> dict:
    """What the side ran on: CPU model, cores, RAM; the GPU's name and memory when on CUDA."""
    import psutil
    import torch

    info = {"device": device, "threads": threads or torch.get_num_threads(), "platform": platform.platform(),
            "cpu": _cpu_name(), "cpu_cores_logical": psutil.cpu_count(), "cpu_cores_physical": psutil.cpu_count(False),
            "ram_gb": round(psutil.virtual_memory().total / 1e9, 2), "torch": torch.__version__}
    if device.startswith("cuda") and torch.cuda.is_available():
        idx = torch.device(device).index or 0
        props = torch.cuda.get_device_properties(idx)
        info.update(gpu=props.name, gpu_memory_gb=round(props.total_memory / 1e9, 2), cuda=torch.version.cuda)
        try:
            import pynvml

            pynvml.nvmlInit()
            h = pynvml.nvmlDeviceGetHandleByIndex(idx)
            info["gpu_driver"] = pynvml.nvmlSystemGetDriverVersion()
            info["gpu_utilization_pct_at_start"] = pynvml.nvmlDeviceGetUtilizationRates(h).gpu
        except Exception:  # pynvml is optional
            pass
    return info


def peaks(cloud_device: str) -> dict:
    import torch

    out = {"peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 3)}
    if cloud_device.startswith("cuda") and torch.cuda.is_available():
        out["peak_gpu_memory_gb"] = round(torch.cuda.max_memory_allocated(torch.device(cloud_device)) / 1e9, 3)
    return out


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or os.uname().machine


class GpuSampler:
    """Samples the cloud GPU's utilisation and memory (pynvml) in a background thread while collecting.

    Optional: without CUDA or pynvml it records nothing and says so.
    """

    def __init__(self, device: str, every_s: float = 1.0):
        self.device, self.every = device, every_s
        self.util: list[int] = []
        self.mem: list[int] = []
        self._stop = None
        self.note = None

    def __enter__(self):
        import threading

        try:
            import torch

            if not (self.device.startswith("cuda") and torch.cuda.is_available()):
                self.note = "no CUDA device"
                return self
            import pynvml

            pynvml.nvmlInit()
            handle = pynvml.nvmlDeviceGetHandleByIndex(torch.device(self.device).index or 0)
        except Exception as exc:  # pynvml missing or no driver
            self.note = self.note or f"not sampled ({type(exc).__name__}); pip install nvidia-ml-py to sample"
            return self
        self._stop = threading.Event()

        def loop():
            while not self._stop.wait(self.every):
                try:
                    self.util.append(int(pynvml.nvmlDeviceGetUtilizationRates(handle).gpu))
                    self.mem.append(int(pynvml.nvmlDeviceGetMemoryInfo(handle).used))
                except Exception:
                    return

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self._stop is not None:
            self._stop.set()
            self._thread.join(timeout=5)

    def summary(self) -> dict:
        if not self.util:
            return {"gpu_sampling": self.note or "no samples"}
        return {"gpu_utilization_pct_mean": round(sum(self.util) / len(self.util), 1),
                "gpu_utilization_pct_max": max(self.util), "gpu_memory_used_gb_max": round(max(self.mem) / 1e9, 3),
                "gpu_samples": len(self.util)}
