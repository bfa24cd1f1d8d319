"""A picture of one job: a self-contained HTML page drawn as inline SVG by Python.

Input: the document ``cluster submit ... --json`` prints (``{"op", "result",
"stats"}``), as a dict -- so the CLI (``--report FILE.html``) and the API
(``Result.report_html()``, ``_repr_html_`` in a notebook) draw the same page.

Why inline SVG written here rather than a plotting library or a JS chart: the
page must open anywhere, offline, years later -- no script, font or stylesheet is
fetched, there is no script at all, and each chart is a few hundred elements we
can count in a test.  Hover titles (``<title>``) give the exact numbers.

Everything shown comes from what the workers reported in their stats:
``traffic_matrix`` (bytes per directed link), ``timeline`` (phase spans, the
shuffle's send/receive spans and credit waits, the median's rounds; seconds since
the job reached that worker), ``streams`` (inbound streams open over time),
``peak_rss_bytes`` and, for the median, ``windows`` (values still in play at the
start of each selection round).  Clocks of different workers are not synchronised:
each worker's zero is when its load request arrived, which the coordinator sends
to all workers at once, so the rows line up to within a network round trip.
"""
from __future__ import annotations

import html
import math
from decimal import Decimal
from fractions import Fraction
from typing import Any

from shardstats.exact import exact_text

# Phase colours (Okabe-Ito, safe for colour-blind readers).
PHASE_COLOURS = {"load": "#999999", "count": "#E69F00", "shuffle": "#56B4E9", "aggregate": "#009E73",
                 "reduce": "#CC79A7", "select": "#6A3D9A"}
LANE_COLOURS = {"send": "#56B4E9", "receive": "#0072B2", "wait": "#D55E00", "round": "#F0E442"}
OTHER = "#bbbbbb"
DARK = {"#6A3D9A", "#0072B2"}   # fills that need white labels
LABEL_W = 46          # left margin for worker labels
CHART_W = 760

CSS = """
body{font:14px/1.4 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;color:#222;margin:24px;max-width:980px}
.ss-report h1{font-size:20px;margin:0 0 4px} .ss-report h2{font-size:16px;margin:24px 0 4px}
.ss-report p.note{color:#555;margin:2px 0 8px;font-size:13px}
.ss-report table.kv{border-collapse:collapse;margin:8px 0} .ss-report table.kv td{padding:2px 12px 2px 0}
.ss-report table.kv td:first-child{color:#555}
.ss-report svg{display:block;margin:4px 0} .ss-report svg text{font:11px system-ui,sans-serif;fill:#333}
.ss-report .legend span{display:inline-block;margin-right:14px;font-size:12px}
.ss-report .legend i{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:-1px}
"""


def _e(x: object) -> str:
    return html.escape(str(x), quote=True)


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _num(x: Any) -> str:
    """An answer as people read it: exact digits for ints, Decimals and Fractions (…5.5), never 800003/2."""
    if isinstance(x, Fraction):
        return exact_text(x)
    if isinstance(x, bool) or x is None:
        return str(x)
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, Decimal):
        return str(x)
    if isinstance(x, float):
        return repr(x)
    return str(x)


def _legend(items: list[tuple[str, str]]) -> str:
    return '<div class="legend">' + "".join(f'<span><i style="background:{c}"></i>{_e(n)}</span>'
                                            for n, c in items) + "</div>"


# -- the answer -----------------------------------------------------------------------------
def _answer(doc: dict) -> str:
    op, r, s = doc.get("op", "?"), doc.get("result") or {}, doc.get("stats") or {}
    said: list[str] = []
    from shardstats.errors import ShardstatsError
    from shardstats.worker.ops import registry
    head = op
    try:                       # every op, mode and median too, says its result in its own words (Op.render)
        said = [line.strip() for line in registry.get(op).render(r)]
    except (ShardstatsError, KeyError, TypeError, ValueError):
        said = [str(r)]
    if len(said) > 12:            # a keyed job's rows: the head, not a page of them
        said = said[:11] + [f"... ({len(said) - 11} more lines in the job's output)"]
    rows = [("answer", line) for line in said]
    rows += [("values", _num(s.get("values", 0))), ("workers", _num(s.get("workers", 0))),
            ("time", f"{s.get('seconds', 0):.3f} s (reading files {s.get('load_seconds', 0):.3f} s, "
                     f"computing {s.get('run_seconds', 0):.3f} s)"),
            ("data moved between workers", f"{human_bytes(s.get('bytes_sent', 0))} "
                                           f"in {_num(s.get('messages_sent', 0))} messages"),
            ("busiest link (one sender to one receiver)", human_bytes(s.get("busiest_link_bytes", 0))),
            ("most workers sending to one worker at once", _num(s.get("max_inbound_streams", 0))),
            ("largest memory use of a worker", human_bytes(s.get("peak_worker_rss_bytes", 0))),
            ("rounds of messages", _num(s.get("rounds", 0)))]
    if s.get("spill_bytes_written"):
        from shardstats.cluster.output import spill_line
        rows.append(("beyond memory", spill_line(s)))
    if s.get("attempts", 1) > 1:
        lost = ", ".join(f"worker {w.get('id')} ({w.get('reason')})" for w in s.get("lost_workers", []))
        rows.append(("attempts", f"{s['attempts']} (lost: {lost})"))
    for q, v in (r.get("quantiles") or {}).items():
        rows.append((f"quantile {q}", _num(v.get("value") if isinstance(v, dict) else v)))
    table = "".join(f"<tr><td>{_e(k)}</td><td>{_e(v)}</td></tr>" for k, v in rows)
    return f'<h1>{_e(head)}</h1><p class="note">job {_e(s.get("job", ""))}</p><table class="kv">{table}</table>'


# -- traffic matrix --------------------------------------------------------------------------
def _heat(frac: float) -> str:
    """White to dark blue."""
    f = max(0.0, min(1.0, frac))
    r, g, b = (int(255 + (c - 255) * f) for c in (8, 48, 107))
    return f"#{r:02x}{g:02x}{b:02x}"


def traffic_svg(matrix: list[list[int]], ids: list[int]) -> str:
    w = len(matrix)
    if w == 0:
        return "<p>no traffic</p>"
    cell = max(18, min(48, 480 // w))
    top, left = 34, 60
    size = left + cell * w + 170
    height = top + cell * w + 20
    peak = max((max(row) for row in matrix), default=0)
    busiest = next(((i, j) for i, row in enumerate(matrix) for j, v in enumerate(row) if v == peak and peak > 0),
                   None)
    out = [f'<svg class="chart traffic" width="{size}" height="{height}" role="img" '
           f'aria-label="bytes per directed link">']
    out.append(f'<text x="{left + cell * w / 2}" y="12" text-anchor="middle">receiver</text>')
    out.append(f'<text x="12" y="{top + cell * w / 2}" text-anchor="middle" '
               f'transform="rotate(-90 12 {top + cell * w / 2})">sender</text>')
    for j in range(w):
        out.append(f'<text x="{left + cell * j + cell / 2}" y="{top - 6}" text-anchor="middle">w{ids[j]}</text>')
    for i, row in enumerate(matrix):
        out.append(f'<text x="{left - 6}" y="{top + cell * i + cell / 2 + 4}" text-anchor="end">w{ids[i]}</text>')
        for j, v in enumerate(row):
            x, y = left + cell * j, top + cell * i
            frac = math.sqrt(v / peak) if peak else 0.0       # sqrt: small links stay visible next to big ones
            fill = "#f3f3f3" if i == j else _heat(frac)
            out.append(f'<rect class="link" x="{x}" y="{y}" width="{cell - 1}" height="{cell - 1}" fill="{fill}">'
                       f'<title>w{ids[i]} → w{ids[j]}: {v:,} bytes ({human_bytes(v)})</title></rect>')
    if busiest is not None:
        i, j = busiest
        out.append(f'<rect class="busiest" x="{left + cell * j - 1}" y="{top + cell * i - 1}" width="{cell + 1}" '
                   f'height="{cell + 1}" fill="none" stroke="#D55E00" stroke-width="3"/>')
    lx = left + cell * w + 20
    for k in range(6):
        out.append(f'<rect x="{lx}" y="{top + k * 16}" width="14" height="14" fill="{_heat(k / 5)}" '
                   f'stroke="#ccc"/><text x="{lx + 20}" y="{top + k * 16 + 11}">'
                   f'{human_bytes(peak * (k / 5) ** 2)}</text>')
    if busiest is not None:
        out.append(f'<rect x="{lx}" y="{top + 104}" width="14" height="14" fill="none" stroke="#D55E00" '
                   f'stroke-width="3"/><text x="{lx + 20}" y="{top + 115}">busiest link</text>'
                   f'<text x="{lx}" y="{top + 134}">w{ids[busiest[0]]} → w{ids[busiest[1]]}: '
                   f'{human_bytes(peak)}</text>')
    out.append("</svg>")
    return "".join(out)


# -- timeline --------------------------------------------------------------------------------
def _ticks(end: float, width: float) -> list[float]:
    if end <= 0:
        return [0.0]
    raw = end / max(2, width // 90)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    return [k * step for k in range(int(end / step) + 1)]


def _axis(y: float, end: float, scale: float) -> str:
    out = [f'<line x1="{LABEL_W}" y1="{y}" x2="{LABEL_W + CHART_W}" y2="{y}" stroke="#999"/>']
    for t in _ticks(end, CHART_W):
        x = LABEL_W + t * scale
        out.append(f'<line x1="{x:.1f}" y1="{y}" x2="{x:.1f}" y2="{y + 4}" stroke="#999"/>'
                   f'<text x="{x:.1f}" y="{y + 15}" text-anchor="middle">{t:g} s</text>')
    return "".join(out)


def timeline_svg(workers: list[dict], op: str) -> str:
    spans = [(w, s) for w in workers for s in (w.get("timeline") or [])]
    if not spans:
        return '<p class="note">the workers reported no timeline (an older worker version?)</p>'
    end = max(s[3] for _, s in spans) or 1e-3
    scale = CHART_W / end
    used = {s[0] for _, s in spans}
    lanes = [(lane, h) for lane, h in (("phase", 14), ("send", 6), ("receive", 6), ("wait", 6), ("round", 10))
             if lane in used]
    has_rounds = "round" in used
    row_h = sum(h for _, h in lanes) + 2 * len(lanes) + 6
    height = 10 + row_h * len(workers) + 24
    out = [f'<svg class="chart timeline" width="{LABEL_W + CHART_W + 30}" height="{height}" role="img" '
           f'aria-label="per-worker timeline">']
    for r, w in enumerate(workers):
        y0 = 10 + r * row_h
        out.append(f'<text x="{LABEL_W - 6}" y="{y0 + 11}" text-anchor="end">w{w.get("id", r)}</text>')
        offs, y = {}, y0
        for lane, h in lanes:
            offs[lane] = (y, h)
            y += h + 2
        for lane, name, a, b in w.get("timeline") or []:
            if lane not in offs:
                continue
            ly, h = offs[lane]
            label = "starting" if (lane == "phase" and name == op) else name
            fill = PHASE_COLOURS.get(name, OTHER) if lane == "phase" else LANE_COLOURS.get(lane, OTHER)
            x, wd = LABEL_W + a * scale, max(1.0, (b - a) * scale)
            stroke = ' stroke="#8a7d00" stroke-width="0.5"' if lane == "round" else ""
            out.append(f'<rect x="{x:.1f}" y="{ly}" width="{wd:.1f}" height="{h}" fill="{fill}"{stroke}>'
                       f'<title>w{w.get("id", r)} {_e(label)}: {a:.4f}–{b:.4f} s ({(b - a) * 1e3:.1f} ms)</title>'
                       f'</rect>')
            if lane in ("phase", "round") and wd > 8 * len(label) + 4:
                ink = "#fff" if fill in DARK else "#222"
                out.append(f'<text x="{x + 3:.1f}" y="{ly + h - 3}" font-size="10" style="fill:{ink}">'
                           f'{_e(label)}</text>')
    out.append(_axis(height - 22, end, scale))
    out.append("</svg>")
    seen = list(dict.fromkeys(s[1] for _, s in spans if s[0] == "phase" and s[1] != op))
    items = [(p, PHASE_COLOURS.get(p, OTHER)) for p in seen]
    items += [(text, LANE_COLOURS[lane]) for lane, text in (("send", "shuffle: sending"),
              ("receive", "shuffle: receiving"), ("wait", "sender waiting for a credit")) if lane in used]
    if has_rounds:
        items.append(("selection round", LANE_COLOURS["round"]))
    return _legend(items) + "".join(out)


def streams_svg(workers: list[dict]) -> str:
    samples = [(w, w.get("streams") or []) for w in workers]
    if not any(s for _, s in samples):
        if workers and all(w.get("shuffle") == "tree" for w in workers):
            return ('<p class="note">a job of one chunk: its values went up the tree to one owner '
                    '(no streams, no flow control needed).</p>')
        return '<p class="note">no shuffle in this job: no worker received streams.</p>'
    end = max((s[3] for w in workers for s in (w.get("timeline") or [])), default=0.0)
    end = max(end, max(t for _, ss in samples for t, _ in ss)) or 1e-3
    scale = CHART_W / end
    top_n = max(1, max(n for _, ss in samples for _, n in ss))
    strip = 22
    height = 10 + strip * len(workers) + 24
    out = [f'<svg class="chart streams" width="{LABEL_W + CHART_W + 30}" height="{height}" role="img" '
           f'aria-label="inbound streams over time">']
    for r, (w, ss) in enumerate(samples):
        base = 10 + r * strip + strip - 4
        out.append(f'<text x="{LABEL_W - 6}" y="{base - 2}" text-anchor="end">w{w.get("id", r)}</text>'
                   f'<line x1="{LABEL_W}" y1="{base}" x2="{LABEL_W + CHART_W}" y2="{base}" stroke="#ddd"/>')
        if not ss:
            continue
        pts, cur = [f"{LABEL_W},{base}"], 0
        for t, n in ss:
            x = LABEL_W + t * scale
            pts.append(f"{x:.1f},{base - cur * (strip - 6) / top_n:.1f}")
            pts.append(f"{x:.1f},{base - n * (strip - 6) / top_n:.1f}")
            cur = n
        pts.append(f"{LABEL_W + CHART_W},{base - cur * (strip - 6) / top_n:.1f}")
        pts.append(f"{LABEL_W + CHART_W},{base}")
        peak = max(n for _, n in ss)
        out.append(f'<path d="M{" L".join(pts)} Z" fill="#56B4E9" stroke="#0072B2" stroke-width="1">'
                   f'<title>w{w.get("id", r)}: at most {peak} inbound stream(s) at once</title></path>')
    out.append(_axis(height - 22, end, scale))
    out.append("</svg>")
    return "".join(out)


def memory_svg(workers: list[dict]) -> str:
    peaks = [int(w.get("peak_rss_bytes") or 0) for w in workers]
    top = max(peaks, default=0) or 1
    bar = 16
    height = 10 + (bar + 4) * len(workers) + 10
    out = [f'<svg class="chart memory" width="{LABEL_W + CHART_W + 30}" height="{height}" role="img" '
           f'aria-label="peak memory per worker">']
    for r, (w, p) in enumerate(zip(workers, peaks)):
        y = 10 + r * (bar + 4)
        wd = max(1.0, p / top * (CHART_W - 330))
        data = int(w.get("values") or 0) * 8
        spilled = (f'; spilled {human_bytes(w["spill_bytes_written"])}, read back {human_bytes(w.get("spill_bytes_read", 0))}'
                   if w.get("spill_bytes_written") else "")
        out.append(f'<text x="{LABEL_W - 6}" y="{y + 12}" text-anchor="end">w{w.get("id", r)}</text>'
                   f'<rect x="{LABEL_W}" y="{y}" width="{wd:.1f}" height="{bar}" fill="#009E73">'
                   f'<title>w{w.get("id", r)}: peak resident memory {human_bytes(p)}; its values take '
                   f'{human_bytes(data)}</title></rect>'
                   f'<text x="{LABEL_W + wd + 6:.1f}" y="{y + 12}">{human_bytes(p)} '
                   f'(its {int(w.get("values") or 0):,} values: {human_bytes(data)}{spilled})</text>')
    out.append("</svg>")
    return "".join(out)


def reducers_svg(stats: dict) -> str:
    """The shuffle counter's per-reducer load: pairs each reducer received, against the mean (a keyed job)."""
    loads = [int(x) for x in stats.get("reducer_pairs") or []]
    if not loads:
        return ""
    top, mean = max(loads) or 1, sum(loads) / len(loads)
    bar = 16
    height = 10 + (bar + 4) * len(loads) + 24
    width = CHART_W - 330
    mx = LABEL_W + mean / top * width
    out = [f'<svg class="chart reducers" width="{LABEL_W + CHART_W + 30}" height="{height}" role="img" '
           f'aria-label="pairs received by each reducer">']
    for r, n in enumerate(loads):
        y = 10 + r * (bar + 4)
        wd = max(1.0, n / top * width)
        colour = "#D55E00" if mean and n > 1.5 * mean else "#0072B2"
        out.append(f'<text x="{LABEL_W - 6}" y="{y + 12}" text-anchor="end">r{r}</text>'
                   f'<rect x="{LABEL_W}" y="{y}" width="{wd:.1f}" height="{bar}" fill="{colour}">'
                   f'<title>reducer {r}: {n:,} pairs ({n / mean if mean else 0:.2f}x the mean)</title></rect>'
                   f'<text x="{LABEL_W + wd + 6:.1f}" y="{y + 12}">{n:,}</text>')
    y = 10 + len(loads) * (bar + 4)
    out.append(f'<line x1="{mx:.1f}" y1="6" x2="{mx:.1f}" y2="{y}" stroke="#333" stroke-dasharray="4 3"/>'
               f'<text x="{mx:.1f}" y="{y + 14}" text-anchor="middle">mean {mean:,.0f}</text></svg>')
    return "".join(out)


def windows_svg(windows: list[int]) -> str:
    """Values still in play at the start of each selection round, on a log scale."""
    if not windows:
        return ""
    top = max(windows) or 1
    h, bw, gap = 180, 70, 30
    logmax = math.log10(max(10, top))
    out = [f'<svg class="chart windows" width="{LABEL_W + len(windows) * (bw + gap) + 40}" height="{h + 50}" '
           f'role="img" aria-label="selection window per round">']
    for k in range(int(logmax) + 1):
        y = 20 + h - k / logmax * h
        out.append(f'<line x1="{LABEL_W}" y1="{y:.1f}" x2="{LABEL_W + len(windows) * (bw + gap)}" y2="{y:.1f}" '
                   f'stroke="#eee"/><text x="{LABEL_W - 6}" y="{y + 4:.1f}" text-anchor="end">1e{k}</text>')
    for i, m in enumerate(windows):
        bh = max(1.0, math.log10(max(1, m)) / logmax * h)
        x = LABEL_W + 10 + i * (bw + gap)
        out.append(f'<rect x="{x}" y="{20 + h - bh:.1f}" width="{bw}" height="{bh:.1f}" fill="#6A3D9A">'
                   f'<title>round {i + 1}: {m:,} values still in the window</title></rect>'
                   f'<text x="{x + bw / 2}" y="{20 + h - bh - 4:.1f}" text-anchor="middle">{m:,}</text>'
                   f'<text x="{x + bw / 2}" y="{h + 36}" text-anchor="middle">round {i + 1}</text>')
    out.append("</svg>")
    return "".join(out)


# -- the page --------------------------------------------------------------------------------
def _plain(x: Any) -> Any:
    """Stats with exact numbers (Decimal, Fraction) as floats: they are only drawn."""
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return float(x) if isinstance(x, (Decimal, Fraction)) else x


def fragment(doc: dict) -> str:
    """The report as one ``<div>`` (with its own ``<style>``): what a notebook shows for a result.

    ``doc`` may hold exact numbers (``json.loads(..., parse_float=Decimal)``, or the
    API's Fractions): the answer is printed with all its digits, the stats are drawn.
    """
    doc = {**doc, "stats": _plain(doc.get("stats") or {})}
    s = doc["stats"]
    op = doc.get("op", "")
    workers = list(s.get("per_worker") or [])
    ids = [w.get("id", i) for i, w in enumerate(workers)]
    rounds = any(span[0] == "round" for w in workers for span in (w.get("timeline") or []))
    matrix = s.get("traffic_matrix") or []
    parts = [f'<div class="ss-report"><style>{CSS}</style>', _answer(doc),
             "<h2>Who sent how much to whom</h2>",
             '<p class="note">Bytes each worker (row) sent to each other worker (column). Darker is more; the '
             'outlined cell is the busiest link. An even grid means the work was spread evenly.</p>',
             traffic_svg(matrix, ids)]
    if s.get("reducer_pairs"):
        parts += ["<h2>The shuffle counter: pairs per reducer</h2>",
                  f'<p class="note">Map output {_num(s.get("map_pairs", 0))} pairs, '
                  f'{_num(s.get("combined_pairs", 0))} after the combiner, {_num(s.get("shuffled_pairs", 0))} '
                  f'crossed the network ({human_bytes(s.get("shuffled_bytes", 0))}). Each bar is what one reducer '
                  f'received (its own share included); the busiest took {s.get("busiest_reducer_share", 1):.2f}x '
                  f'the mean (dashed). A bar far past the line is a hot key: --salt spreads it.</p>',
                  reducers_svg(s)]
    parts += ["<h2>What each worker did, and when</h2>",
             '<p class="note">One row per worker: the phases on top, then the shuffle\'s sending and receiving, '
             'and the moments a sender waited for the receiver\'s permission (a credit) to send more'
             + (", and the selection rounds" if rounds else "") + '. Each worker\'s clock starts when '
             'its read request arrived; a gap after "load" is the wait for the slowest worker\'s files. '
             'Hover for exact times.</p>',
             timeline_svg(workers, op),
             "<h2>Streams arriving at each worker</h2>",
             '<p class="note">How many senders were streaming data into each worker at the same time. Flow '
             'control keeps this at the admission limit (1 by default) so no worker is flooded.</p>',
             streams_svg(workers),
             "<h2>Peak memory per worker</h2>",
             '<p class="note">The most resident memory each worker process used during the job, next to the '
             'size of the values it read.</p>',
             memory_svg(workers)]
    windows = next((w.get("windows") for w in workers if w.get("windows")), None)
    if windows:
        parts += ["<h2>The median's window, round by round</h2>",
                  '<p class="note">How many values could still be the answer at the start of each round '
                  '(log scale). Each round counts values below a set of pivots and keeps only the interval that '
                  'holds the answer; the last round gathers the few values left.</p>',
                  windows_svg(windows)]
    parts.append("</div>")
    return "".join(parts)


def render(doc: dict) -> str:
    """The report as a complete HTML page (self-contained: no scripts, fonts or stylesheets fetched)."""
    title = f"shardstats {doc.get('op', '')} job {(doc.get('stats') or {}).get('job', '')}"
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f'<meta name="viewport" content="width=device-width,initial-scale=1"></head><body>'
            f'{fragment(doc)}</body></html>\n')


def write(doc: dict, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(render(doc))
