// sectrace interactive report view: hand-written SVG and vanilla JS, no library, no network.
// Data: the JSON in #data (written by sectrace.reports.interactive). SVG is built as markup strings and
// parsed by the HTML parser, so it needs no namespace URL.
(function () {
  "use strict";
  const D = JSON.parse(document.getElementById("data").textContent);
  const byNum = new Map(D.policies.map(p => [p.n, p]));
  const W = 760, H = 430, M = {l: 66, r: 18, t: 14, b: 46};
  const state = {cfg: D.configs[0].id, x: D.x_axes[0].key, logx: false, cdfCfg: D.configs[0].id, hl: null};

  function esc(s) {
    return String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  }
  function fmt(v, kind) {
    if (v === null || v === undefined || (typeof v === "number" && isNaN(v))) return "–";
    if (kind === "bool") return v ? "yes" : "no";
    if (kind === "text") return String(v);
    if (kind === "int") return String(Math.round(v));
    if (kind === "bytes") {
      if (Math.abs(v) >= 1e6) return (v / 1e6).toFixed(1) + " MB";
      if (Math.abs(v) >= 1e3) return (v / 1e3).toFixed(1) + " kB";
      return v.toFixed(0) + " B";
    }
    if (kind === "pct") return (100 * v).toFixed(0) + "%";
    if (kind === "score") return v.toFixed(2);
    if (kind === "ms") return +(1000 * v).toPrecision(6) + " ms";
    return Math.abs(v) < 100 ? String(+v.toPrecision(3)) : v.toFixed(1);
  }
  // A hover value is a number or [value, low, high] (its 95 % interval).
  function val(v) { return Array.isArray(v) ? v[0] : v; }
  function fmtCi(v, kind) {
    if (!Array.isArray(v)) return fmt(v, kind);
    return v[1] === null || v[2] === null ? fmt(v[0], kind) : `${fmt(v[0], kind)} [${fmt(v[1], kind)}–${fmt(v[2], kind)}]`;
  }
  function niceTicks(lo, hi, n) {
    if (!(hi > lo)) { hi = lo + 1; }
    const step0 = (hi - lo) / n, mag = Math.pow(10, Math.floor(Math.log10(step0)));
    const err = step0 / mag, step = mag * (err >= 7.5 ? 10 : err >= 3.5 ? 5 : err >= 1.5 ? 2 : 1);
    const out = [];
    for (let v = Math.ceil(lo / step) * step; v <= hi + step * 1e-9; v += step) out.push(+v.toPrecision(12));
    return out;
  }
  // log scale on x shifts by 1 so that 0 bytes / 0 tokens stay drawable (log10(1 + x)).
  function tx(v, log) { return log ? Math.log10(1 + Math.max(0, v)) : v; }
  function extent(vals, pad) {
    const ok = vals.filter(v => v !== null && isFinite(v));
    if (!ok.length) return [0, 1];
    let lo = Math.min(...ok), hi = Math.max(...ok);
    if (hi === lo) { const d = Math.abs(lo) * 0.1 || 0.5; lo -= d; hi += d; }
    const p = (hi - lo) * pad;
    return [lo - p, hi + p];
  }
  function axes(xd, yd, xlabel, ylabel, logx) {
    const sx = v => M.l + (tx(v, logx) - xd[0]) / (xd[1] - xd[0]) * (W - M.l - M.r);
    const sy = v => H - M.b - (v - yd[0]) / (yd[1] - yd[0]) * (H - M.t - M.b);
    let s = `<rect x="${M.l}" y="${M.t}" width="${W - M.l - M.r}" height="${H - M.t - M.b}" fill="white" stroke="#999"/>`;
    let xt;
    if (logx) {
      xt = [];
      for (let e = 0; Math.pow(10, e) - 1 <= Math.pow(10, xd[1]) - 1; e++) xt.push(e === 0 ? 0 : Math.pow(10, e));
    } else xt = niceTicks(xd[0], xd[1], 7);
    for (const v of xt) {
      const X = logx ? M.l + (tx(v, true) - xd[0]) / (xd[1] - xd[0]) * (W - M.l - M.r) : sx(v);
      if (X < M.l - 0.5 || X > W - M.r + 0.5) continue;
      s += `<line x1="${X}" x2="${X}" y1="${M.t}" y2="${H - M.b}" stroke="#eee"/>` +
        `<text x="${X}" y="${H - M.b + 14}" text-anchor="middle" class="tick">${esc(fmt(v, "num"))}</text>`;
    }
    for (const v of niceTicks(yd[0], yd[1], 6)) {
      const Y = sy(v);
      if (Y < M.t - 0.5 || Y > H - M.b + 0.5) continue;
      s += `<line x1="${M.l}" x2="${W - M.r}" y1="${Y}" y2="${Y}" stroke="#eee"/>` +
        `<text x="${M.l - 5}" y="${Y + 3}" text-anchor="end" class="tick">${esc(fmt(v, "num"))}</text>`;
    }
    s += `<text x="${(M.l + W - M.r) / 2}" y="${H - 8}" text-anchor="middle" class="axlabel">${esc(xlabel)}</text>` +
      `<text transform="translate(14 ${(M.t + H - M.b) / 2}) rotate(-90)" text-anchor="middle" class="axlabel">${esc(ylabel)}</text>`;
    return {svg: s, sx, sy};
  }
  function shape(mode, base, x, y, r) {
    if (base) {  // five-pointed star
      let d = "";
      for (let i = 0; i < 10; i++) {
        const a = Math.PI / 2 + i * Math.PI / 5, rr = i % 2 ? r * 0.95 : r * 2.1;
        d += (i ? "L" : "M") + (x + rr * Math.cos(a)).toFixed(1) + " " + (y - rr * Math.sin(a)).toFixed(1);
      }
      return d + "Z";
    }
    if (mode === "features") return `M${x - r} ${y - r}h${2 * r}v${2 * r}h${-2 * r}Z`;
    if (mode === "raw") return `M${x} ${y - r * 1.3}L${x + r * 1.2} ${y + r}L${x - r * 1.2} ${y + r}Z`;
    return `M${x - r} ${y}a${r} ${r} 0 1 0 ${2 * r} 0a${r} ${r} 0 1 0 ${-2 * r} 0`;
  }
  function placeLabels(items) {  // items: {x, y, text}; greedy, no overlap with labels or points
    const groups = [];
    for (const it of items) {
      const g = groups.find(g => Math.abs(g[0].x - it.x) < 3 && Math.abs(g[0].y - it.y) < 3);
      if (g) g.push(it); else groups.push([it]);
    }
    const placed = [], pts = items.map(i => [i.x - 4, i.y - 4, i.x + 4, i.y + 4]);
    const hit = (a, b) => a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3];
    const offs = [[6, -4], [6, 10], [-6, -4], [-6, 10], [0, -9], [0, 17], [10, 3], [-10, 3]];
    let s = "";
    for (const g of groups) {
      const nums = g.map(i => i.text).sort((a, b) => a - b), lines = [];
      for (let j = 0; j < nums.length; j += 4) lines.push(nums.slice(j, j + 4).join(","));  // every number, four a line
      const w = 6.2 * Math.max(...lines.map(l => l.length)), h = 11 * lines.length, {x, y} = g[0];
      let best = null;
      for (const r of [1, 1.8, 2.6]) {
        for (const [dx, dy] of offs) {
          const X = x + dx * r, Y = y + dy * r, anchor = dx < 0 ? "end" : dx === 0 ? "middle" : "start";
          const x0 = anchor === "end" ? X - w : anchor === "middle" ? X - w / 2 : X;
          const box = [x0, Y - h + 2, x0 + w, Y + 2];
          if (x0 < M.l || x0 + w > W - M.r || Y - h < M.t || Y > H - M.b) continue;
          if (placed.some(b => hit(box, b)) || pts.some(b => hit(box, b) && !(b[0] < x && x < b[2] && b[1] < y && y < b[3]))) continue;
          best = {X, Y, anchor, box}; break;
        }
        if (best) break;
      }
      if (!best) best = {X: x + 6, Y: y - 4, anchor: "start", box: [x + 6, y - 14, x + 6 + w, y - 2]};
      placed.push(best.box);
      const far = Math.hypot(best.X - x, best.Y - y) > 16;
      const ps = g.map(i => i.text).join(" ");
      if (far) s += `<line x1="${x}" y1="${y}" x2="${best.X}" y2="${best.Y - 4}" stroke="#888" stroke-width="0.6" data-p="${ps}" class="leader"/>`;
      const spans = lines.map((l, j) => `<tspan x="${best.X.toFixed(1)}" dy="${j ? 11 : 0}">${esc(l)}${j < lines.length - 1 ? "," : ""}</tspan>`).join("");
      s += `<text x="${best.X.toFixed(1)}" y="${(best.Y - 11 * (lines.length - 1)).toFixed(1)}" text-anchor="${best.anchor}" class="plabel" data-p="${ps}">${spans}</text>`;
    }
    return s;
  }
  function stepFront(xs, ys, xb, yb) {
    const idx = xs.map((_, i) => i).filter(i => xs[i] !== null && ys[i] !== null && isFinite(xs[i]) && isFinite(ys[i]));
    idx.sort((a, b) => (xs[a] * -xb - xs[b] * -xb) || (ys[b] * yb - ys[a] * yb));
    const out = [];
    let best = -Infinity;
    for (const i of idx) if (ys[i] * yb > best) { out.push([xs[i], ys[i]]); best = ys[i] * yb; }
    return out;
  }
  function tipHtml(p, rows) {
    const pol = byNum.get(p);
    return `<b>${esc(p)} · ${esc(pol.name)}</b><table>` + rows.map(([k, v]) => `<tr><td>${esc(k)}</td><td>${esc(v)}</td></tr>`).join("") + "</table>";
  }
  const tip = document.getElementById("tip");
  function bindHover(root) {
    root.querySelectorAll("[data-tip]").forEach(el => {
      el.addEventListener("mousemove", ev => {
        tip.innerHTML = el.getAttribute("data-tip");
        tip.style.display = "block";
        const x = Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 8);
        tip.style.left = x + window.scrollX + "px";
        tip.style.top = ev.clientY + 14 + window.scrollY + "px";
        highlight(+el.getAttribute("data-p"));
      });
      el.addEventListener("mouseleave", () => { tip.style.display = "none"; highlight(null); });
    });
  }
  function highlight(p) {
    state.hl = p;
    document.querySelectorAll("[data-p]").forEach(el => {
      const ps = String(el.getAttribute("data-p")).split(" ").map(Number);
      el.classList.toggle("dim", p !== null && !ps.includes(p));
      el.classList.toggle("hl", p !== null && ps.includes(p));
    });
  }

  // --- Pareto ------------------------------------------------------------------------------------
  // Fields: [column, header, kind, "point" | "policy"]; a point row holds its "point" fields in order, a
  // policy's vals hold its "policy" fields at the field's own index.
  const F = D.fields;
  const slot = [];
  let nPoint = 0;
  F.forEach(f => slot.push(f[3] === "point" ? nPoint++ : -1));
  const col = Object.fromEntries(F.map((f, i) => [f[0], i]));
  function field(r, j) { return slot[j] >= 0 ? r[3 + slot[j]] : byNum.get(r[0]).vals[j]; }
  function renderPareto() {
    const rows = D.points.filter(r => r[1] === state.cfg);
    const xa = D.x_axes.find(a => a.key === state.x), ya = D.y_axis;
    const logx = state.logx;
    const xs = rows.map(r => val(field(r, col[xa.key]))), ys = rows.map(r => val(field(r, col[ya.key])));
    const xd = extent(xs.map(v => v === null ? null : tx(v, logx)), 0.06), yd = extent(ys, 0.08);
    const A = axes(xd, yd, xa.label + (logx ? " (log scale)" : ""), ya.label, logx);
    let s = A.svg;
    const fr = stepFront(xs, ys, xa.better, ya.better);
    if (fr.length) {
      let d = "";
      fr.forEach(([x, y], i) => {
        const X = A.sx(x), Y = A.sy(y);
        d += i ? `H${X.toFixed(1)}V${Y.toFixed(1)}` : `M${X.toFixed(1)} ${Y.toFixed(1)}`;
      });
      s += `<path d="${d}" fill="none" stroke="#000" stroke-opacity="0.45" stroke-width="1"/>`;
    }
    const labels = [];
    rows.forEach((r, i) => {
      if (xs[i] === null || ys[i] === null) return;
      const p = r[0], pol = byNum.get(p), X = A.sx(xs[i]), Y = A.sy(ys[i]);
      const base = pol.baseline, on = r[2];
      const fill = base ? pol.base_colour : on ? D.mode_colours[pol.privacy] || "#333" : "white";
      const stroke = base || on ? "#000" : "#a8a8a8";
      const info = F.map(([c, h, k], j) => [h, fmtCi(field(r, j), k)]);
      info.unshift(["on the 4-D front", on ? "yes" : "no"], ["privacy", pol.privacy]);
      const t = tipHtml(p, info);
      const title = `${p} ${pol.name}: ` + info.map(([k, v]) => `${k} ${v}`).join("; ");
      s += `<path class="pt" d="${shape(pol.privacy, base, X, Y, base ? 4 : 4.5)}" fill="${fill}" stroke="${stroke}" stroke-width="${base || on ? 0.8 : 1.2}" data-p="${p}" data-tip="${esc(t)}"><title>${esc(title)}</title></path>`;
      labels.push({x: X, y: Y, text: p});
    });
    s += placeLabels(labels);
    const el = document.getElementById("pareto");
    el.innerHTML = `<svg viewBox="0 0 ${W} ${H}" width="100%" role="img" aria-label="Pareto front">${s}</svg>`;
    bindHover(el);
    const c = D.configs.find(c => c.id === state.cfg);
    document.getElementById("pareto-cap").textContent = c.text;
  }

  // --- latency CDFs --------------------------------------------------------------------------------
  function renderCdf() {
    const el = document.getElementById("cdf");
    if (!el) return;
    const curves = D.cdf[String(state.cdfCfg)] || [];
    const all = [];
    curves.forEach(cv => all.push(...cv.x));
    const xd = extent(all, 0.03), yd = [0, 1.02];
    const A = axes(xd, yd, "latency per caption (s)", "share of captions", false);
    let s = A.svg;
    for (const cv of curves) {
      const pol = byNum.get(cv.p);
      let d = `M${A.sx(cv.x[0]).toFixed(1)} ${A.sy(0).toFixed(1)}`;
      cv.x.forEach((x, i) => { d += `V${A.sy(i ? cv.y[i - 1] : 0).toFixed(1)}H${A.sx(x).toFixed(1)}V${A.sy(cv.y[i]).toFixed(1)}`; });
      const info = [["mean", fmt(cv.mean, "s") + " s"], ["p50", fmt(cv.p50, "s") + " s"], ["p90", fmt(cv.p90, "s") + " s"],
        ["captions", String(cv.n)], ["on the front here", cv.front ? "yes" : "no"]];
      const t = tipHtml(cv.p, info);
      const title = `${cv.p} ${pol.name}: ` + info.map(([k, v]) => `${k} ${v}`).join("; ");
      const w = cv.front || pol.baseline ? 2.2 : 1.3;
      s += `<path class="curve" d="${d}" fill="none" stroke="${pol.colour}" stroke-width="${w}"${pol.dash ? ` stroke-dasharray="${pol.dash}"` : ""} data-p="${cv.p}" data-tip="${esc(t)}"><title>${esc(title)}</title></path>`;
      s += `<path d="${d}" fill="none" stroke="transparent" stroke-width="8" data-p="${cv.p}" data-tip="${esc(t)}"/>`;
    }
    el.innerHTML = `<svg viewBox="0 0 ${W} ${H}" width="100%" role="img" aria-label="latency CDF">${s}</svg>`;
    bindHover(el);
    const c = D.configs.find(c => c.id === state.cdfCfg);
    document.getElementById("cdf-cap").textContent = c.text;
  }

  // --- controls and the key ------------------------------------------------------------------------
  function options(sel, items, value) {
    sel.innerHTML = items.map(([v, t]) => `<option value="${esc(v)}"${v === value ? " selected" : ""}>${esc(t)}</option>`).join("");
  }
  const cfgItems = D.configs.map(c => [String(c.id), c.label]);
  const pc = document.getElementById("pareto-config");
  options(pc, cfgItems, String(state.cfg));
  pc.addEventListener("change", () => { state.cfg = +pc.value; renderPareto(); });
  const px = document.getElementById("pareto-x");
  options(px, D.x_axes.map(a => [a.key, a.label]), state.x);
  px.addEventListener("change", () => { state.x = px.value; renderPareto(); });
  const lg = document.getElementById("pareto-log");
  lg.addEventListener("change", () => { state.logx = lg.checked; renderPareto(); });
  const cc = document.getElementById("cdf-config");
  if (cc) {
    options(cc, cfgItems, String(state.cdfCfg));
    cc.addEventListener("change", () => { state.cdfCfg = +cc.value; renderCdf(); });
  }
  document.querySelectorAll(".key li").forEach(li => {
    li.addEventListener("mouseenter", () => highlight(+li.getAttribute("data-p")));
    li.addEventListener("mouseleave", () => highlight(null));
  });
  renderPareto();
  renderCdf();
})();
