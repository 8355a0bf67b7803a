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

from ..models.lm import CachedLM, open_lm
from ..simulate.costs import VERIFY_TABLE_MAX

VERIFY_NS = tuple(range(1, VERIFY_TABLE_MAX + 1))
CAPTION_CTX = (0, 32, 64)
#: Prefill lengths beyond the prompt. A verify call that opens a session (or any stateless call) runs prompt,
#: caption so far and block in one pass from an empty cache, priced at the prefill's per-token slope; timing
#: the prompt alone leaves that slope unidentified (a one-point line), so those tokens would be priced at 0 s.
PREFILL_EXTRA = (0, 16, 48)


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
          progress=None, prefill_extra=PREFILL_EXTRA) -> list[tuple]:
    """Rows (side, phase, new_tokens, context_tokens, seconds, device, threads)."""
    rows = []
    lm = open_lm(model, vocab, first_kwargs, slots=1)  # one cache cropped in place, as a decoder runs: no copies
    for m in prefill_extra:  # the prompt, then the prompt with caption-like tokens after it (see PREFILL_EXTRA)
        seq = prompt + _filler(prompt, m)
        for r in range(1 + max(1, repeats // 2)):  # prefill is the costly one: fewer repeats
            lm.reset()
            t = _timed(lm, seq, 1)
            if r:
                rows.append((side, "prefill", len(seq), 0, t, device, threads))
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


#: Other processes using more than this share of the machine's CPUs while probes run make the machine "busy".
BUSY_SHARE = 0.10


class LoadMonitor:
    """How busy the machine was while timing probes ran: the load average at both ends, and the CPU that
    *other* processes used over the window (all CPU time the system spent, less this process's), with the
    busiest of them by name.

    Why: a probe times a forward pass; another process on the same cores stretches it, and the trace would
    then price every replay with a machine that was busy only while it was measured. The reading goes into
    the manifest (``hardware.probe_load``) so a reader can tell, and ``busy`` triggers a warning and the
    advice to re-measure (``sectrace collect --reprobe``).
    """

    def __init__(self, busy_share: float = BUSY_SHARE):
        self.busy_share = busy_share
        self.result: dict | None = None

    def __enter__(self):
        import psutil

        self._me = psutil.Process()
        self._procs = {}
        for proc in psutil.process_iter():
            try:
                if proc.pid != self._me.pid:
                    proc.cpu_percent(None)  # primes the per-process counter
                    self._procs[proc.pid] = proc
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        self._load0 = _loadavg()
        self._sys0, self._me0 = psutil.cpu_times(), self._me.cpu_times()
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        import psutil

        wall = max(time.perf_counter() - self._t0, 1e-9)
        sys1, me1 = psutil.cpu_times(), self._me.cpu_times()
        ncpu = psutil.cpu_count() or 1
        busy_sys = _busy(sys1) - _busy(self._sys0)
        mine = (me1.user + me1.system) - (self._me0.user + self._me0.system)
        other_cores = max(busy_sys - mine, 0.0) / wall
        top = []
        for pid, proc in self._procs.items():
            try:
                pct = proc.cpu_percent(None)
                if pct >= 5.0:
                    top.append((pct, proc.name(), pid))
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        top.sort(reverse=True)
        share = other_cores / ncpu
        self.result = {
            "seconds": round(wall, 2), "cpus": ncpu, "loadavg_before": self._load0, "loadavg_after": _loadavg(),
            "other_processes_cores": round(other_cores, 3), "other_processes_share": round(share, 3),
            "busiest_others": [{"name": n, "pid": pid, "cpu_pct": round(p, 1)} for p, n, pid in top[:3]],
            "busy": share >= self.busy_share, "busy_threshold_share": self.busy_share,
        }
        return False


def _busy(t) -> float:
    return sum(getattr(t, f, 0.0) for f in t._fields if f not in ("idle", "iowait", "guest", "guest_nice"))


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):  # not on every platform
        return None


def load_warning(load: dict | None, what: str = "the timing probes") -> str | None:
    """One sentence when the machine was busy during ``what``; None when it was quiet or not measured."""
    if not load or not load.get("busy"):
        return None
    names = ", ".join(f"{b['name']} ({b['cpu_pct']:.0f}%)" for b in load.get("busiest_others", [])) or "unnamed"
    avg = load.get("loadavg_after")
    return (f"other processes used {load['other_processes_cores']:.2f} of {load['cpus']} CPUs while {what} ran "
            f"({100 * load['other_processes_share']:.0f}% of the machine; busiest: {names}"
            + (f"; load average {avg[0]:.2f}" if avg else "") + "), so the timings overstate the costs; "
            "re-measure on a quiet machine with `sectrace collect --reprobe TRACE`")


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
