"""The HTML report renders in a real headless browser (Debian's chromium), from disk, with no network.

Twenty policies on the bundled (real) trace: the page has no horizontal overflow at two window widths,
every Pareto point carries its policy's number in the static SVG and in the interactive view, the
latency curves have one (colour, dash) pair each, and interactive.html draws and answers a hover with
the network cut off (a dead proxy), its script and data inline.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET

import polars as pl
import pytest
from click.testing import CliRunner

from sectrace.cli import main

pytest.importorskip("matplotlib")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed (Debian: apt-get update && apt-get install -y chromium)")
GATES = ("entropy:1.5", "entropy:2.5", "always", "margin:0.2", "margin:0.1", "random:0.5")
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def rep20(tmp_path_factory):
    """20 policies (6 gates × k 1, 3, 5 plus both baselines) × 2 RTTs on the bundled trace, reported."""
    d = tmp_path_factory.mktemp("rep20")
    res = d / "r.parquet"
    args = ["simulate", *[x for g in GATES for x in ("--gate", g)], "--k", "1,3,5", "--rtt", "20ms,100ms",
            "--out", str(res)]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    assert pl.read_parquet(res)["policy"].n_unique() == 20
    r = CliRunner().invoke(main, ["report", str(res), "--no-quality", "--out", str(d / "rep")])
    assert r.exit_code == 0, r.output
    return d / "rep", res


def _chromium(tmp_path, *args, timeout=120):
    # --proxy-server to a closed port: any http(s) fetch fails, so what renders came from the file alone.
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
           "--disable-component-update", "--no-first-run", f"--user-data-dir={tmp_path / 'profile'}",
           "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=<-loopback>", *args]
    proc = subprocess.run(cmd, capture_output=True, timeout=timeout)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-2000:]
    return proc.stdout.decode("utf-8", errors="replace")


def _probe(tmp_path, html: str, script: str, width: int, height: int = 1400) -> dict:
    """Run ``script`` (it sets ``out``) after the page's own code, in a copy of the page; return ``out``."""
    page = tmp_path / f"probe-{width}.html"
    html = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)  # the report forbids scripts
    page.write_text(html.replace("</body>", f"<script>let out = {{}};\n{script}\n"
                                 "const pre = document.createElement('pre'); pre.id = 'probe-out';"
                                 "pre.textContent = JSON.stringify(out); document.body.appendChild(pre);</script>"
                                 "</body>"), encoding="utf-8")
    dom = _chromium(tmp_path, f"--window-size={width},{height}", "--dump-dom", page.as_uri())
    m = re.search(r'<pre id="probe-out">(.*?)</pre>', dom, re.S)
    assert m, dom[-2000:]
    import html as h

    return json.loads(h.unescape(m.group(1)))


OVERFLOW = """
const vw = document.documentElement.clientWidth, bad = [];
for (const el of document.body.querySelectorAll('*')) {
  if (el.closest('.table-wrap') && !el.classList.contains('table-wrap')) continue;  // scrolls in its own box
  const r = el.getBoundingClientRect();
  if (r.width && r.right > vw + 1) bad.push(`${el.tagName}.${el.className} right=${Math.round(r.right)}`);
}
out = {sw: document.documentElement.scrollWidth, vw, bad: bad.slice(0, 8),
       images: [...document.images].map(i => i.complete && i.naturalWidth > 0)};
"""


@pytest.mark.parametrize("width", [1280, 900])
def test_report_fits_the_window(rep20, tmp_path, width):
    rep, _ = rep20
    html = (rep / "report.html").read_text(encoding="utf-8")
    assert 'id="acceptance"' in html  # k 1, 3, 5: the acceptance figures and table are on the page measured
    out = _probe(tmp_path, html, OVERFLOW, width)
    assert out["bad"] == [] and out["sw"] <= out["vw"], out
    assert len(out["images"]) >= 5 and all(out["images"])  # every embedded figure decoded


def test_report_screenshot_is_not_blank(rep20, tmp_path):
    rep, _ = rep20
    shot = tmp_path / "shot.png"
    _chromium(tmp_path, "--hide-scrollbars", "--window-size=1280,2400", f"--screenshot={shot}",
              (rep / "report.html").as_uri())
    from PIL import Image  # matplotlib depends on pillow

    im = Image.open(shot).convert("L")
    assert im.size == (1280, 2400)
    assert len(im.getcolors(maxcolors=256) or []) > 50  # figures and tables, not an empty page
    if (keep := __import__("os").environ.get("SECTRACE_SCREENSHOT")):
        shutil.copy(shot, keep)


def _key_numbers(rep) -> dict[str, int]:
    """Policy → number, as the report's policy key lists them (read from report.html, not from the code)."""
    html = (rep / "report.html").read_text(encoding="utf-8")
    key = html[html.index('id="key"'):html.index('id="pareto"')]
    number = {}
    for row in re.findall(r"<tr>(.*?)</tr>", key, re.S):
        cells = [re.sub(r"<svg.*?</svg>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        if len(cells) >= 2:
            number[cells[1]] = int(cells[0])
    return number


def _expected_numbers(rep, res_path) -> dict[int, set[int]]:
    """Per configuration: the numbers of the policies that have a point (finite quality and latency)."""
    number = _key_numbers(rep)
    front = pl.read_csv(rep / "tables" / "pareto.csv")
    assert set(number) == set(front["policy"]) and sorted(number.values()) == list(range(1, 21))
    ok = front.filter(pl.col("quality").is_finite() & pl.col("latency_s").is_finite())
    return {c: {number[p] for p in g["policy"]} for (c,), g in ok.group_by(["config"])}


def _svg_label_numbers(path, prefix: str) -> list[int]:
    ids = [g.get("id") for g in ET.parse(path).getroot().iter(f"{SVG}g") if (g.get("id") or "").startswith(prefix)]
    return [int(n) for i in ids for n in i[len(prefix):].split("-") if n]


def test_every_pareto_point_is_labelled(rep20):
    rep, res = rep20
    want = _expected_numbers(rep, res)
    assert len(want) == 2 and all(len(v) >= 10 for v in want.values())
    svg = rep / "figures" / "pareto_latency.svg"
    for c, nums in want.items():
        got = _svg_label_numbers(svg, f"label-c{c}-")
        assert sorted(got) == sorted(nums), c  # each point exactly once, none invented
    # the labels are text in the SVG (searchable, editable), not outlines
    text = svg.read_text(encoding="utf-8")
    assert re.search(r"<text[^>]*>\s*\d+(,\d+)*,?\s*</text>", text)
    costs = _svg_label_numbers(rep / "figures" / "pareto_costs.svg", "label-cloud_tokens-")
    assert sorted(costs) == sorted(want[0])  # cloud tokens and quality do not depend on the configuration


def test_latency_curves_are_distinct(rep20):
    rep, res = rep20
    root = ET.parse(rep / "figures" / "latency_cdf.svg").getroot()
    covered = pl.read_parquet(res).filter(pl.col("covered") & (pl.col("config") == 0))["policy"].n_unique()
    styles = {}
    for g in root.iter(f"{SVG}g"):
        gid = g.get("id") or ""
        if gid.startswith("cdf-c0-p"):
            style = dict(kv.split(":", 1) for kv in next(g.iter(f"{SVG}path")).get("style").replace(" ", "")
                         .split(";") if ":" in kv)
            styles[gid] = (style["stroke"], style.get("stroke-dasharray", "solid"))
    assert len(styles) == covered >= 15
    assert len(set(styles.values())) == len(styles), styles  # no two policies share colour and dash


def test_style_pairs_stay_unique_past_twenty():
    from sectrace.reports.style import DASHES, PALETTE, assign

    names = ["edge-only", "cloud-only", *[f"p{i}" for i in range(60)]]
    st = assign(names)
    first = sorted(st.values(), key=lambda s: s.number)[: len(PALETTE) * len(DASHES)]
    assert len({(s.colour, s.svg_dash) for s in first}) == len(first) == 36
    assert len({(s.colour, s.svg_dash, s.marker) for s in st.values()}) == len(names)
    assert st["edge-only"].number == 1 and st["cloud-only"].number == 2


def test_interactive_view_works_offline(rep20, tmp_path):
    rep, res = rep20
    page = rep / "interactive.html"
    html = page.read_text(encoding="utf-8")
    # everything inline: no src/href to fetch, no URL at all, and a CSP that would block any fetch
    assert not re.search(r"""\ssrc\s*=""", html)
    assert "http://" not in html and "https://" not in html and "//" not in re.sub(r"(?s)<script.*?</script>", "", html)
    assert "default-src 'none'" in html and "connect-src" not in html
    assert page.stat().st_size < 400_000
    dom = _chromium(tmp_path, "--window-size=1280,1400", "--dump-dom", page.as_uri())
    pareto = dom[dom.index('id="pareto"'):dom.index('id="pareto-cap"')]
    want = _expected_numbers(rep, res)
    assert pareto.count('class="pt"') == len(want[0])
    labels = [int(n) for t in re.findall(r'class="plabel" data-p="([\d ]+)"', pareto) for n in t.split()]
    assert sorted(labels) == sorted(want[0])
    cdf = dom[dom.index('id="cdf"'):dom.index('id="cdf-cap"')]
    tags = re.findall(r'<path class="curve"[^>]*>', cdf)
    pairs = [(re.search(r' stroke="([^"]+)"', t).group(1), (re.search(r'stroke-dasharray="([^"]+)"', t) or
                                                           re.match("", "")).group(0)) for t in tags]
    assert len(pairs) >= 15 and len(set(pairs)) == len(pairs)
    # a hover shows the policy and its numbers
    hover = _probe(tmp_path, html, """
      const el = document.querySelector('#pareto path.pt[data-p="3"]');
      const r = el.getBoundingClientRect();
      el.dispatchEvent(new MouseEvent('mousemove', {clientX: r.x + 2, clientY: r.y + 2, bubbles: true}));
      const tip = document.getElementById('tip');
      out = {shown: tip.style.display, text: tip.innerText,
             dimmed: document.querySelectorAll('#pareto .dim').length};
    """, 1280)
    name3 = next(p for p, n in _key_numbers(rep).items() if n == 3)
    row = pl.read_csv(rep / "tables" / "pareto.csv").filter((pl.col("config") == 0) & (pl.col("policy") == name3)) \
        .row(0, named=True)
    assert hover["shown"] == "block" and hover["text"].startswith(f"3 · {name3}")
    assert f"{row['latency_s']:.3g}" in hover["text"] and hover["dimmed"] > 0
