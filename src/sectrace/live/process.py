"""`sectrace serve` as a child process, the way `validate` and the load benchmark both run it.

A separate process because the service must sit on its own cores with its own torch threads,
apart from the edge that measures it; port 0 and a ready file because a fixed port could be
taken and polling the port would race the model load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ..errors import UserError


class ServeProcess:
    """``with ServeProcess(verifier, {"name": key}, workdir, [...serve flags]) as s: use s.url``.

    Keys go to a private key file (one ``NAME KEY`` line each); ``args`` are further `sectrace serve`
    flags; the child's output goes to ``workdir/serve.log``. Terminated (then killed) on exit."""

    def __init__(self, verifier: str, keys: dict[str, str], workdir: Path, args: list[str] = (),
                 cpus: list[int] | str | None = None, start_timeout_s: float = 900.0, poll_s: float = 0.1):
        self.verifier, self.keys, self.dir, self.args = verifier, keys, Path(workdir), list(args)
        self.cpus, self.start_timeout_s, self.poll_s = cpus, start_timeout_s, poll_s
        self.log_path = self.dir / "serve.log"
        self.proc = None
        self.port = None
        self.url = None

    def __enter__(self):
        keyfile, ready = self.dir / "keys", self.dir / "ready.json"
        keyfile.write_text("".join(f"{name} {key}\n" for name, key in self.keys.items()))
        os.chmod(keyfile, 0o600)
        cmd = [sys.executable, "-m", "sectrace", "serve", "--verifier", self.verifier, "--host", "127.0.0.1",
               "--port", "0", "--api-key-file", str(keyfile), "--ready-file", str(ready), *self.args]
        if self.cpus:
            cmd += ["--cpus", self.cpus if isinstance(self.cpus, str) else ",".join(map(str, self.cpus))]
        with open(self.log_path, "wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + self.start_timeout_s
        while not ready.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = self.log_path.read_text(errors="replace").strip().splitlines()[-1:] or ["?"]
                self.stop()
                raise UserError(f"the verifier service did not start ({tail[0][:300]})")
            time.sleep(self.poll_s)
        self.port = json.loads(ready.read_text())["port"]
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()

    def __exit__(self, *exc):
        self.stop()


def parse_cpus(text: str | None) -> list[int] | None:
    """Cores from ``0``, ``0,1`` or ``2-3``; None when not given."""
    if not text:
        return None
    out = []
    try:
        for part in text.split(","):
            lo, _, hi = part.strip().partition("-")
            out += list(range(int(lo), int(hi or lo) + 1))
    except ValueError:
        raise UserError(f"cannot read cores {text!r}; write e.g. 0 or 0,1 or 2-3") from None
    bad = [c for c in out if not 0 <= c < (os.cpu_count() or 1)]
    if bad:
        raise UserError(f"core {bad[0]} does not exist here (cores 0-{(os.cpu_count() or 1) - 1})")
    return out


def pin(cores: list[int]) -> None:
    """Pin every thread of this process (torch's pools included) to ``cores``."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:
        tids = [0]
    try:
        for tid in tids:
            os.sched_setaffinity(tid, cores)
    except OSError as exc:
        raise UserError(f"cannot pin to cores {cores} ({exc.strerror}); choose cores this machine lets you "
                        "use") from None
