"""Grid files are read like the command line reads flags; sweeps, maps and fleets are bounded before
they are built; coverage misses are reported in one sentence that says how to fill them."""

import json
import re
import time
from pathlib import Path

import numpy as np
import pytest

from sectrace.errors import UserError
from sectrace.gates import parse_gate
from sectrace.protocol import Policy
from sectrace.simulate import CostModel, Network, Replayer, budget, simulate, summarise
from sectrace.simulate.grid import SCHEMA, grid_trace, read_grid
from sectrace.simulate.results import coverage_note
from sectrace.simulate.sweep import breakeven, load_grid, product_axes, run_sweep, run_sweep_parallel
from sectrace.trace import load_trace, sample_trace_path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "grid.toml"
#: What examples/grid.toml loaded to with the code before grids were validated (commit 4ac96e7),
#: written by a script that called the old load_grid: the validation must not change a valid grid.
BEFORE = ROOT / "tests" / "data" / "grid_example_before.json"


def _grid(tmp_path, text: str) -> Path:
    g = tmp_path / "g.toml"
    g.write_text(text + "\n")
    return g


def _refused(tmp_path, text: str) -> str:
    with pytest.raises(UserError) as exc:
        load_grid(_grid(tmp_path, text), 64)
    return str(exc.value)


# --- the cases people ran into -----------------------------------------------------------------
@pytest.mark.parametrize("text,must", [
    # a bare number has no unit: 50 s or 50 ms? (the CLI refuses --rtt 50 too)
    ("[network]\nrtt = [50]", ["[network] rtt", "[50]", "no unit", 'rtt = ["20ms"']),
    ("[network]\nrtt = 0.05", ["[network] rtt", "0.05", "no unit"]),
    ('[network]\nrtt = ["50"]', ["[network] rtt", '"50"', "no unit", "50ms"]),
    ('[network]\nrtt = ["10ms", 50]', ["[network] rtt", "value 50", "no unit"]),
    ('[network]\nrtt = ["5 parsecs"]', ["[network] rtt", "5 parsecs", "cannot read"]),
    ("[network]\nuplink = [20]", ["[network] uplink", "[20]", "no unit", "Mbit/s"]),
    ("[network]\ndownlink = 50", ["[network] downlink", "50", "no unit"]),
    ("[network]\noverhead = [100]", ["[network] overhead", "[100]", "no unit", '"100B"']),
    # misspelt keys and sections: refused, naming the known ones
    ('[policy]\ngates = ["always"]', ["[policy] has no key gates", "did you mean gate?", "k, gate, accept"]),
    ("[polcy]\nk = 3", ["unknown section [polcy]", "did you mean [policy]?", "[network]", "[device]"]),
    ("k = 3", ["k belongs in the [policy] section"]),
    ('[device]\nrtt = ["5ms"]', ["[device] has no key rtt", "belongs in the [network] section"]),
    ("policy = 3", ["policy must be a section", "[policy]"]),
    # types: no traceback, no silent coercion
    ('[policy]\nk = "three"', ['[policy] k = "three"', "string", "whole number", "k = [3, 5, 8]"]),
    ("[policy]\nk = [1.7]", ["[policy] k = [1.7]", "not a whole number"]),
    ("[policy]\nk = [true]", ["[policy] k = [true]", "not a whole number"]),
    ("[policy]\nk = [3, 0]", ["[policy] k value 0", "at least 1"]),
    ("[policy]\nk = []", ["[policy] k = []", "empty list"]),
    ('[policy]\nbonus = ["no"]', ['[policy] bonus = ["no"]', "true or false", "bonus = [true, false]"]),
    ('baselines = "yes"', ['baselines = "yes"', "true or false"]),
    ('[policy]\nprivacy = "secret"', ['[policy] privacy = "secret"', "token-only, features, raw"]),
    ("[policy]\naccept = [20]", ["[policy] accept = [20]", 'accept = ["top1", "rank:20"]']),
    ('[policy]\naccept = ["rank:0"]', ["[policy] accept", "rank:0", "R >= 1"]),
    ('[policy]\nadaptive = [1.5]', ["[policy] adaptive = [1.5]", "probability"]),
    ('[policy]\ngate = ["entropy:nan"]', ["[policy] gate", "entropy:nan", "finite"]),
    ('[policy]\ngate = ["entropi:2"]', ["[policy] gate", "entropi:2", "unknown gate"]),
    ("[device]\nedge_speedup = [0]", ["[device] edge_speedup = [0]", "positive"]),
    ("[device]\ncloud_speedup = [nan]", ["[device] cloud_speedup = [nan]", "finite"]),
    ("[device]\nedge_speedup = [inf]", ["[device] edge_speedup = [inf]", "finite"]),
    ('[device]\nedge_speedup = ["2"]', ["[device] edge_speedup", '"2"', "not a number"]),
    ("[network]\nloss = [1.0]", ["[network] loss = [1.0]", "[0, 1)"]),
    ("[network]\nloss = [-0.1]", ["[network] loss = [-0.1]", "[0, 1)"]),
    ("[network]\njitter = 0.002", ["[network] jitter = 0.002", "scipy.stats"]),
    ('[network]\npreset = ["3g"]', ["[network] preset", '"3g"', "wifi, 4g"]),
    ('[device]\nedge = "phone"', ['[device] edge = "phone"', "study-cpu-2core"]),
    ('[device]\nedge = ["study-cpu-2core", "study-cpu-2core-x4"]', ["[device] edge", "takes one"]),
    ("trace = 3", ["trace = 3", "string"]),
    ("[network]\nrtt = 00:00:50", ["[network] rtt", "00:00:50", "date or time"]),
])
def test_bad_grid_is_one_clear_sentence(tmp_path, text, must):
    msg = _refused(tmp_path, text)
    assert msg.startswith(f"grid {tmp_path / 'g.toml'}: ")
    for part in must:
        assert part in msg, (part, msg)
    assert "\n" not in msg and "Traceback" not in msg


def test_every_error_offers_a_correct_line_that_loads(tmp_path):
    """The example each key's message offers is itself a valid grid line (so copying it works)."""
    for section, keys in SCHEMA.items():
        for name, key in keys.items():
            if name == "trace":
                continue  # a path: valid by form, checked when the trace is loaded
            text = f"{name} = {key.example}" if section is None else f"[{section}]\n{name} = {key.example}"
            read_grid(_grid(tmp_path, text))


def test_docs_list_every_grid_key():
    doc = (ROOT / "docs" / "simulator.md").read_text()
    sweeps = doc[doc.index("## Sweeps"):doc.index("## Break-even maps")]
    for section, keys in SCHEMA.items():
        for name in keys:
            assert re.search(rf"\b{name}\b", sweeps), name
        if section:
            assert f"[{section}]" in sweeps


# --- valid grids ---------------------------------------------------------------------------------
def test_example_grid_loads_as_before():
    want = json.loads(BEFORE.read_text())
    pols, ax, cost, spec = load_grid(EXAMPLE, 64)
    got = [[p.label, p.k, p.gate_spec, str(p.accept), p.bonus, p.privacy, p.cloud_cache, p.adaptive,
            p.max_new_tokens] for p in pols]
    assert got == want["policies"]
    for name, values in want["axes"].items():
        np.testing.assert_array_equal(getattr(ax, name), np.array(values, float), err_msg=name)
    assert ax.labels["network"] == want["network"]
    assert {k: v for k, v in cost.__dict__.items() if k in want["cost"]} == want["cost"]
    # the counts the bound uses are the counts built: 2 baselines + 5 k × 4 gates × 2 accepts × 2 privacy
    assert spec.n_policies == len(pols) == 2 + 5 * 4 * 2 * 2
    assert spec.n_configs == len(ax) == 4 * 5 * 6 * 2


def test_units_and_scalars(tmp_path):
    """Units convert as the CLI's do; a scalar is a one-element list; 0 needs no unit."""
    text = ('[policy]\nk = {k}\ngate = "always"\nbonus = false\nadaptive = "off"\n'
            '[network]\nrtt = {rtt}\nuplink = "8Mbit/s"\ndownlink = ["1MB/s", "800kbit/s"]\noverhead = "1.5kB"\n'
            'jitter = "none"\nloss = 0.01\n'
            '[device]\nedge = {edge}\nedge_speedup = 2\n')
    a = load_grid(_grid(tmp_path, text.format(k="3", rtt='"20ms"', edge='"study-cpu-2core"')), 64)
    b = load_grid(_grid(tmp_path, text.format(k="[3]", rtt='["20ms"]', edge='["study-cpu-2core"]')), 64)
    for pols, ax, cost, _ in (a, b):
        assert [p.label for p in pols] == ["edge-only", "cloud-only", "k=3 gate=always accept=rank:20 no-bonus features"]
        assert pols[2].bonus is False and pols[2].k == 3 and type(pols[2].k) is int
        assert ax.rtt_s.tolist() == [0.02, 0.02]
        assert ax.up_Bps.tolist() == [1e6, 1e6]  # 8 Mbit/s = 1 MB/s
        assert ax.down_Bps.tolist() == [1e6, 1e5]
        assert ax.overhead_bytes.tolist() == [1500, 1500]
        # no jitter, 1 % loss at the default 200 ms timeout: 0.01/0.99 × 0.2 s per message
        assert ax.extra_s == pytest.approx([0.01 / 0.99 * 0.2] * 2)
        assert ax.edge_speedup.tolist() == [2.0, 2.0] and cost.edge_prefill_a == 7.74
    zero = load_grid(_grid(tmp_path, "[network]\nrtt = [0, \"0ms\"]\noverhead = 0"), 64)[1]
    assert zero.rtt_s.tolist() == [0.0, 0.0] and zero.overhead_bytes.tolist() == [0, 0]


def test_grid_trace_is_relative_to_the_grid(tmp_path):
    g = _grid(tmp_path, 'trace = "traces/t1"\n[policy]\nk = 3')
    assert grid_trace(g) == tmp_path / "traces" / "t1"
    assert grid_trace(_grid(tmp_path, "[policy]\nk = 3")) is None


# --- bounds ---------------------------------------------------------------------------------------
def test_huge_grid_refused_before_it_is_built(tmp_path):
    """1,000 RTTs × 100 uplinks × 100 speed-ups: ten million configurations, refused in well under a second
    (building them first took 8 GB); the message gives the count and the way out."""
    rtts = ", ".join(f'"{i}ms"' for i in range(1, 1001))
    ups = ", ".join(f'"{i}Mbit/s"' for i in range(1, 101))
    g = _grid(tmp_path, f'[policy]\nk = 3\ngate = "always"\n[network]\nrtt = [{rtts}]\nuplink = [{ups}]\n'
                        f"[device]\nedge_speedup = [{', '.join(str(i) for i in range(1, 101))}]")
    t0 = time.perf_counter()
    with pytest.raises(UserError) as exc:
        load_grid(g, 64, utterances=12)
    assert time.perf_counter() - t0 < 5.0
    msg = str(exc.value)
    assert "30,000,000 rows" in msg and "3 policies × 10,000,000 configurations" in msg
    assert "2,000,000 rows" in msg and "pass --force" in msg and "GB" in msg


def test_ten_million_policies_refused(tmp_path):
    ks = ", ".join(str(i) for i in range(1, 101))
    gates = ", ".join(f'"entropy:{i / 10:g}"' for i in range(1000))
    accepts = ", ".join(f'"rank:{i}"' for i in range(1, 101))
    g = _grid(tmp_path, f"[policy]\nk = [{ks}]\ngate = [{gates}]\naccept = [{accepts}]")
    with pytest.raises(UserError, match=r"10,000,002 rows \(10,000,002 policies × 1 configuration\)"):
        load_grid(g, 64)


def test_bound_refuses_then_force_allows(tmp_path, monkeypatch):
    g = _grid(tmp_path, '[policy]\nk = [1, 2]\ngate = "always"\n[network]\nrtt = ["1ms", "2ms", "3ms"]')
    monkeypatch.setattr(budget, "MAX_GRID_ROWS", 11)
    with pytest.raises(UserError, match=r"12 rows \(4 policies × 3 configurations\).*limit of 11 rows.*--force"):
        load_grid(g, 64)
    pols, ax, _, _ = load_grid(g, 64, force=True)
    assert len(pols) * len(ax) == 12
    monkeypatch.setattr(budget, "MAX_GRID_ROWS", 12)
    assert len(load_grid(g, 64)[0]) == 4  # at the limit is allowed


def test_memory_bound_counts_utterances_and_workers(tmp_path):
    """Few rows but a big trace: refused for memory, the estimate growing with utterances and jobs."""
    g = _grid(tmp_path, '[policy]\nk = 3\ngate = "always"\n[device]\nedge_speedup = ['
              + ", ".join(str(i) for i in range(1, 1001)) + "]")
    load_grid(g, 64, utterances=1000)  # 1,000 configurations × 1,000 utterances: ~0.1 GB
    est = budget.sweep_bytes(3, 1000, 40_000, jobs=1)
    assert est == 2 * 3 * 1000 * budget.ROW_BYTES + 1000 * (budget.THETA_BYTES + 40_000 * budget.CELL_BYTES)
    assert budget.sweep_bytes(3, 1000, 40_000, jobs=4) > est
    with pytest.raises(UserError, match=r"3,000 rows .*GB of memory, over the limit of 4\.0 GB.*--force"):
        load_grid(g, 64, utterances=40_000)
    assert len(load_grid(g, 64, utterances=40_000, force=True)[1]) == 1000


def test_breakeven_and_fleet_bounds():
    rp = Replayer(load_trace(sample_trace_path()))
    pol = Policy(k=5, gate=parse_gate("always"), gate_spec="always")
    tps, rtts = np.linspace(0.5, 64, 2000), np.linspace(0.001, 0.6, 1000)
    with pytest.raises(UserError, match=r"2,000,000 cells \(2,000 edge speeds × 1,000 RTTs\).*--force"):
        breakeven(rp, pol, CostModel(), Network(), tps, rtts)
    assert breakeven(rp, pol, CostModel(), Network(), tps[:3], rtts[:2]).height == 6
    with pytest.raises(UserError, match=r"2,000,000 utterance runs \(100,000 devices × 20 utterances each\)"):
        budget.check_fleet(100_000, 20)
    budget.check_fleet(100_000, 20, force=True)
    budget.check_fleet(1000, 12)


def test_cap_jobs(monkeypatch):
    n = budget.available_cpus()
    assert 1 <= n <= (__import__("os").cpu_count() or 1)
    assert budget.cap_jobs(10_000) == n
    assert budget.cap_jobs(1) == 1
    assert budget.cap_jobs(10_000, tasks=1) == 1
    for bad in (0, -2, True, 2.5):
        with pytest.raises(UserError, match="--jobs"):
            budget.cap_jobs(bad)
    # a run_sweep_parallel asked for 64 workers on 2 policies uses at most 2 (and still gives the same rows)
    monkeypatch.setattr(budget, "available_cpus", lambda: 64)
    assert budget.cap_jobs(64, tasks=2) == 2


# --- coverage ---------------------------------------------------------------------------------------
def test_coverage_sentence_on_the_real_trace():
    """The bundled real trace explored few policies: examples/grid.toml leaves ~70 % of rows partly uncovered.
    The counts are checked against replays made here, not against the sweep's own columns."""
    tr = load_trace(sample_trace_path())
    assert not tr.synthetic
    max_new = int(tr.manifest["decoding"].get("max_new_tokens", 64))
    pols, ax, cost, _ = load_grid(EXAMPLE, max_new, trace=tr)
    rp = Replayer(tr)
    covered = {p.label: rp.replay(p).covered for p in pols}
    short = [lab for lab, c in covered.items() if c.sum() < len(c)]
    none = [lab for lab, c in covered.items() if c.sum() == 0]
    rows, n = len(short) * len(ax), len(pols) * len(ax)
    assert 0.6 < rows / n < 0.8 and none
    df = run_sweep(rp, pols, cost, ax, breakdown=False, ci=False)
    note = coverage_note(df, tr.path, tr.synthetic)
    assert note is not None and note.count(". ") == 0 and note.endswith(".")
    assert f"{rows:,} of {n:,} rows ({100 * rows / n:.0f} %, {len(short)} of {len(pols)} policies)" in note
    assert f"({len(none) * len(ax):,} cover none)" in note
    assert f"sectrace collect MANIFEST --drafter D --verifier V --extend {tr.path}" in note
    worst = min(short, key=lambda lab: covered[lab].mean())
    assert covered[re.search(r"--policy '([^']+)'", note).group(1)].mean() == covered[worst].mean()
    # the same sentence from simulate's per-utterance rows and from its summary
    sim = simulate(tr, pols[:6], [(cost, Network())], replayer=rp)
    n6 = sum(covered[p.label].sum() < len(covered[p.label]) for p in pols[:6])
    for frame in (sim, summarise(sim)):
        assert f"{n6} of 6 rows" in coverage_note(frame, tr.path)


def test_coverage_none_when_complete_and_synthetic_advice(small_trace):
    rp = Replayer(small_trace)
    ax = product_axes([Network()], [1.0], [1.0])
    explored = [Policy(k=k, gate=parse_gate("always"), gate_spec="always", privacy="features") for k in (1, 3)]
    assert all(rp.replay(p).covered.all() for p in explored)
    assert coverage_note(run_sweep(rp, explored, CostModel(), ax, breakdown=False)) is None
    off = Policy(k=7, gate=parse_gate("margin:0.05"), gate_spec="margin:0.05", privacy="token-only")
    assert not rp.replay(off).covered.all()  # k=7 is outside the default exploration
    note = coverage_note(run_sweep(rp, explored + [off], CostModel(), ax, breakdown=False), "t1", synthetic=True)
    assert note.startswith("1 of 3 rows (33 %, 1 of 3 policies)")
    assert f"sectrace trace synth NEW --policy '{off.label}'" in note and "collect" not in note


def test_parallel_sweep_caps_jobs(small_trace_path):
    tr = load_trace(small_trace_path)
    pols = [Policy(k=k, gate=parse_gate("always"), gate_spec="always") for k in (1, 3)]
    ax = product_axes([Network()], [1.0, 2.0], [1.0])
    serial = run_sweep(Replayer(tr), pols, CostModel(), ax)
    par = run_sweep_parallel(small_trace_path, pols, CostModel(), ax, jobs=10_000)
    assert par.equals(serial)


def test_units_require_unit():
    """The parsers' require_unit (the CLI's and the grid's): a bare number is refused, 0 and units pass."""
    from sectrace.units import parse_duration, parse_rate, parse_size

    for fn, bare, good, want in ((parse_duration, 50, "50ms", 0.05), (parse_rate, 20, "20Mbit/s", 2.5e6),
                                 (parse_size, 100, "100B", 100)):
        with pytest.raises(UserError, match="has no unit"):
            fn(bare, "x", require_unit=True)
        with pytest.raises(UserError, match="has no unit"):
            fn(str(bare), "x", require_unit=True) if fn is not parse_rate else fn(bare, "x", True)
        assert fn(good, "x", require_unit=True) == pytest.approx(want)
        assert fn(bare, "x") == pytest.approx(bare)  # without it, the old meaning (Python callers)
    assert parse_duration(0, "x", require_unit=True) == 0.0 and parse_size("0", "x", require_unit=True) == 0
