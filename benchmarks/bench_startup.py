"""Start-up cost of the CLI, as CPU seconds of whole processes (plain script; prints figures).

    PYTHONPATH=src python benchmarks/bench_startup.py [--runs 10]

1. ``sectrace --help`` against ``python -c "import click"``, run in turn (A B A B ...), so that a machine
   whose speed drifts moves both: the target is a difference of at most 0.15 CPU-s, i.e. the CLI adds little
   beyond click itself (the commands load their packages when they run, not when they are listed).
2. ``sectrace simulate --rtt 50ms`` on the bundled trace, and the same interpreter importing exactly the
   modules that run ended with and nothing else: the start-up share of the command. ``-X importtime``
   then says which packages that start-up goes to (its absolute times are inflated by the measuring; the
   shares are what to read).

CPU seconds are user + system of each finished child (``resource.getrusage(RUSAGE_CHILDREN)``), the
median over the runs; the spread (min–max) is printed too, and a wide one means a busy machine.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile

CLI = "import sys\nfrom sectrace.cli import main\nsys.exit(main(prog_name='sectrace'))"  # as the console script
SIMULATE = ["simulate", "--rtt", "50ms"]


def cpu_s(cmd: list[str]) -> float:
    """User + system CPU seconds of one run of ``cmd`` (output discarded; a failure stops the benchmark)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def paired(a: list[str], b: list[str], runs: int) -> tuple[list[float], list[float]]:
    cpu_s(a), cpu_s(b)  # warm the file cache
    xs, ys = [], []
    for _ in range(runs):
        xs.append(cpu_s(a))
        ys.append(cpu_s(b))
    return xs, ys


def show(name: str, xs: list[float]) -> str:
    return f"  {name:<44} {statistics.median(xs):6.3f} CPU-s  (min {min(xs):.3f}, max {max(xs):.3f})"


def modules_after(args: list[str]) -> list[str]:
    """Every module a run of ``sectrace ARGS`` has loaded when it ends, in the order they were first imported."""
    with tempfile.NamedTemporaryFile("r", suffix=".txt", delete=False) as f:
        path = f.name
    code = ("import sys\nfrom sectrace.cli import main\n"
            f"try:\n    main({args!r}, prog_name='sectrace', standalone_mode=False)\nexcept SystemExit:\n    pass\n"
            f"open({path!r}, 'w').write('\\n'.join(sys.modules))")
    subprocess.run([sys.executable, "-c", code], stdout=subprocess.DEVNULL, check=True)
    with open(path) as fh:
        names = fh.read().split()
    os.unlink(path)
    return [n for n in names if n != "__main__" and not n.endswith(".__main__")]


def import_only(modules: list[str]) -> list[str]:
    code = ("import importlib\n"
            f"for m in {modules!r}:\n    try:\n        importlib.import_module(m)\n    except Exception:\n        pass")
    return [sys.executable, "-c", code]


def import_shares(args: list[str], top: int = 6) -> list[tuple[str, float]]:
    """Share of ``-X importtime``'s self time per top-level package for a run of ``sectrace ARGS``."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", CLI, *args], capture_output=True, text=True,
                       check=True)
    per: dict[str, int] = {}
    for line in r.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, _, name = line[len("import time:"):].split("|")
        pkg = name.strip().split(".")[0]
        per[pkg] = per.get(pkg, 0) + int(self_us)
    total = sum(per.values()) or 1
    return [(k, v / total) for k, v in sorted(per.items(), key=lambda kv: -kv[1])[:top]]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=10, help="pairs for --help (simulate runs a third as many)")
    args = ap.parse_args()

    print("1. listing the commands")
    a, b = paired([sys.executable, "-c", CLI, "--help"], [sys.executable, "-c", "import click"], args.runs)
    diffs = [x - y for x, y in zip(a, b)]
    ratios = [x / y for x, y in zip(a, b) if y > 0]
    print(show("sectrace --help", a))
    print(show('python -c "import click"', b))
    print(f"  {'difference (pair by pair, median)':<44} {statistics.median(diffs):6.3f} CPU-s  "
          f"(target <= 0.15)   ratio {statistics.median(ratios):.2f}x")

    print("2. sectrace " + " ".join(SIMULATE))
    mods = modules_after(SIMULATE)
    n = max(3, args.runs // 3)
    full, imp = paired([sys.executable, "-c", CLI, *SIMULATE], import_only(mods), n)
    print(show("the command", full))
    print(show(f"importing its {len(mods)} modules, nothing else", imp))
    share = statistics.median([i / f for f, i in zip(full, imp)])
    print(f"  {'start-up share (pair by pair, median)':<44} {share:6.0%}")
    print("  import time by package (-X importtime self time, shares): "
          + ", ".join(f"{k} {v:.0%}" for k, v in import_shares(SIMULATE)))


if __name__ == "__main__":
    main()
