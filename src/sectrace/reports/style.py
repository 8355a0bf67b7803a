"""One number, colour, line style and marker per policy, shared by every figure and table of a report.

A reader finds a policy by its number in any figure (Pareto labels, CDF legends, the interactive
view) and in the policy key table. Colours come from a qualitative palette; each colour is paired
with a line style, so (colour, line style) stays unique for ``len(PALETTE) * len(DASHES)`` policies
(36) and markers separate the rest. Plain data (no matplotlib), so the HTML views use the same styles.
"""

from __future__ import annotations

from dataclasses import dataclass

#: matplotlib's tab10 without its grey (grey means "dominated" in the Pareto figures); distinct in print.
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf")
#: (matplotlib dash pattern, SVG stroke-dasharray) pairs, in line-width units.
DASHES = (((), ""), ((5, 2), "5 2"), ((1, 1.6), "1.2 2"), ((6, 2, 1.2, 2), "6 2 1.2 2"))
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "<", ">", "h")
#: Privacy modes: marker shape and fill colour of Pareto points on the front (dominated points are grey).
MODE_MARKERS = {"token-only": "o", "features": "s", "raw": "^"}
MODE_COLOURS = {"token-only": "#1f77b4", "features": "#ff7f0e", "raw": "#d62728"}
BASELINES = ("edge-only", "cloud-only")
GREY = "#a8a8a8"


@dataclass(frozen=True)
class PolicyStyle:
    number: int
    policy: str
    colour: str
    dash: tuple  # matplotlib (offset-free) dash pattern; () = solid
    svg_dash: str  # the same pattern for SVG stroke-dasharray; "" = solid
    marker: str

    @property
    def linestyle(self):
        return "-" if not self.dash else (0, self.dash)


def assign(policies) -> dict[str, PolicyStyle]:
    """Styles for ``policies`` in order, baselines first; the i-th policy gets number i + 1.

    Colour cycles fastest, then the dash pattern, then the marker, so neighbours in the list differ
    in colour and the first 36 policies differ in (colour, dash)."""
    seen = list(dict.fromkeys(policies))
    order = [p for p in BASELINES if p in seen] + [p for p in seen if p not in BASELINES]
    out = {}
    for i, pol in enumerate(order):
        c = i % len(PALETTE)
        d = (i // len(PALETTE)) % len(DASHES)
        m = (i // (len(PALETTE) * len(DASHES))) % len(MARKERS)
        out[pol] = PolicyStyle(i + 1, pol, PALETTE[c], DASHES[d][0], DASHES[d][1], MARKERS[m])
    return out
