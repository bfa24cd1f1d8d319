"""The job report: what workers record (timeline, streams, windows) and the page drawn from it, in a real browser."""
from __future__ import annotations

import json
from collections import Counter
from decimal import Decimal
from html.parser import HTMLParser

import numpy as np
import pytest

from tests.conftest import cli, nasty_datasets, ref_mode, run_op
from shardstats.cluster import report
from shardstats.worker.comm.inmemory import InMemoryNetwork
from shardstats.worker.ops.median import median
from shardstats.worker.ops.mode import mode

NASTY = nasty_datasets()


# -- what the workers record ------------------------------------------------------------------
def _timelines(net, workers):
    return [net.comms[r].progress.timeline.as_stats() for r in range(workers)]


@pytest.mark.parametrize("workers", [1, 3, 5, 12])
@pytest.mark.parametrize("name", sorted(NASTY))
def test_mode_timeline_is_ordered_and_streams_stay_within_admission(name, workers):
    net = InMemoryNetwork(workers, timeout=20)
    res, stats, _ = run_op(mode, NASTY[name], workers, {"chunk_bytes": 256, "fan_in": 1}, net=net)
    assert (res["value"], res["count"]) == ref_mode(np.concatenate(NASTY[name]))[:2]
    for r, tl in enumerate(_timelines(net, workers)):
        phases = [s for s in tl["timeline"] if s[0] == "phase"]
        assert [s[1] for s in phases] == ["count", "shuffle", "aggregate", "reduce"]
        for a, b in zip(phases, phases[1:]):
            assert a[2] <= a[3] <= b[2] + 1e-4          # one after the other, no overlap
        shuffle = phases[1]
        for lane in ("send", "receive"):
            (span,) = [s for s in tl["timeline"] if s[0] == lane]
            assert shuffle[2] - 1e-4 <= span[2] <= span[3] <= shuffle[3] + 1e-4
        waits = [s for s in tl["timeline"] if s[0] == "wait"]
        assert all(shuffle[2] - 1e-4 <= s[2] <= s[3] <= shuffle[3] + 1e-4 for s in waits)
        counts = [n for _, n in tl["streams"]]
        assert all(0 <= n <= 1 for n in counts)                 # fan-in 1: never two streams at once
        assert counts == [1, 0] * (len(counts) // 2)            # every stream opened is closed
        assert counts.count(1) <= workers - 1                   # at most one stream from each peer
        assert (counts.count(1) > 0) == (stats[r]["chunks_received"] > 0)


def test_streams_record_fan_in_above_one():
    shards = [np.arange(i * 5000, i * 5000 + 20000, dtype=np.int64) for i in range(6)]
    net = InMemoryNetwork(6, timeout=20)
    run_op(mode, shards, 6, {"chunk_bytes": 256, "fan_in": 3, "credits": 1}, net=net)
    peaks = [max((n for _, n in tl["streams"]), default=0) for tl in _timelines(net, 6)]
    assert max(peaks) <= 3 and max(peaks) >= 1
    assert [net.comms[r].stats.max_inbound_streams >= peaks[r] for r in range(6)] == [True] * 6


@pytest.mark.parametrize("workers", [1, 2, 5, 12])
@pytest.mark.parametrize("name", sorted(NASTY))
def test_median_windows_shrink_round_by_round(name, workers):
    net = InMemoryNetwork(workers, timeout=20)
    allv = np.concatenate(NASTY[name])
    res, stats, _ = run_op(median, NASTY[name], workers, {"gather_limit": 64, "samples": 8},
                           net=net)
    s = np.sort(allv)
    assert (res["lower"], res["upper"]) == (int(s[(len(s) - 1) // 2]), int(s[len(s) // 2]))
    windows = stats[0]["windows"]
    assert len(windows) == stats[0]["rounds"]
    assert windows[0] == len(allv)                          # round 1: every value is in play
    assert all(b < a for a, b in zip(windows, windows[1:]))  # then strictly fewer each round
    assert all("windows" not in st for st in stats[1:])      # rank 0 decides; it alone reports
    rounds = [s for s in _timelines(net, workers)[0]["timeline"] if s[0] == "round"]
    assert [s[1] for s in rounds] == [f"round {i + 1}" for i in range(len(windows))]


def test_median_windows_on_a_wide_random_dataset():
    rng = np.random.default_rng(3)
    shards = [rng.integers(-2 ** 62, 2 ** 62, 30_000) for _ in range(4)]
    res, stats, _ = run_op(median, shards, 4)
    windows = stats[0]["windows"]
    assert windows[0] == 120_000 and windows[-1] <= 8192 and len(windows) == stats[0]["rounds"] <= 4


# -- the page ----------------------------------------------------------------------------------
class _Elements(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags: Counter = Counter()
        self.by_chart: Counter = Counter()
        self.external: list[str] = []
        self.busiest: list[dict] = []
        self.traffic_cells: list[dict] = []
        self._chart: str | None = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags[tag] += 1
        for k in ("src", "href", "xlink:href"):
            if a.get(k):
                self.external.append(a[k])
        if tag == "svg":
            self._chart = (a.get("class") or "").split()[-1]
        elif self._chart is not None:
            self.by_chart[(self._chart, tag)] += 1
            if self._chart == "traffic" and tag == "rect" and a.get("class") in ("busiest", "link"):
                (self.busiest if a["class"] == "busiest" else self.traffic_cells).append(a)

    def handle_endtag(self, tag):
        if tag == "svg":
            self._chart = None


def _parse(page: str) -> _Elements:
    p = _Elements()
    p.feed(page)
    return p


def _doc(op: str, workers: list[dict], result: dict, matrix: list[list[int]]) -> dict:
    return {"op": op, "result": result,
            "stats": {"workers": len(workers), "values": sum(w.get("values", 0) for w in workers), "seconds": 0.1,
                      "traffic_matrix": matrix, "per_worker": workers, "job": "j1"}}


def test_page_without_shuffle_timeline_or_traffic_still_renders():
    """A single worker (no traffic, no streams) and an old worker without a timeline: the page says so."""
    page = report.render(_doc("mode", [{"id": 0, "values": 3, "peak_rss_bytes": 1 << 20}],
                              {"value": 7, "count": 2, "ties": [7], "tie_count": 1}, [[0]]))
    el = _parse(page)
    assert el.tags["script"] == 0 and el.external == []
    assert not el.busiest                       # no bytes moved: no link to mark
    assert "reported no timeline" in page and "no shuffle in this job" in page


def test_answer_is_exact_beyond_float():
    big = Decimal("9223372036854775806.5")
    page = report.render(_doc("median", [{"id": 0, "values": 2}], {"value": big, "lower": 2 ** 63 - 2,
                                                                     "upper": 2 ** 63 - 1}, [[0]]))
    assert "9223372036854775806.5" in page


@pytest.fixture(scope="module")
def jobs(tmp_path_factory):
    """One real mode and one real median job (3 worker processes over TCP), each with --json and --report."""
    d = tmp_path_factory.mktemp("report")
    data = d / "shards"
    assert cli("gen", "--out", str(data), "--shards", "5", "--rows", "200000", "--seed", "4").returncode == 0
    out = {}
    tiny = d / "tiny"                       # one chunk in all: the mode goes up the tree (no shuffle, no streams)
    assert cli("gen", "--out", str(tiny), "--shards", "3", "--rows", "5000", "--seed", "4").returncode == 0
    for op, inp in (("mode", data), ("median", data), ("stats", data), ("mode-tree", tiny)):
        page = d / f"{op}.html"
        r = cli("submit", op.split("-")[0], "--input", str(inp), "--local", "3", "--json", "--report", str(page),
                env={"CLUSTER_PROGRESS": "never"})
        assert r.returncode == 0, r.stderr
        out[op] = (json.loads(r.stdout), page)
    assert out["mode-tree"][0]["stats"]["shuffle"] == "tree" and out["mode"][0]["stats"]["shuffle"] == "credit"
    # a keyed job with a hot key left unsalted: the per-reducer bars show it
    import pyarrow as pa
    import pyarrow.parquet as pq
    keyed = d / "keyed.parquet"
    pq.write_table(pa.table({"k": ["hot"] * 3000 + [f"k{i}" for i in range(1000)],
                             "v": list(range(4000))}), keyed)
    page = d / "groupby.html"
    r = cli("submit", "groupby", "--input", str(keyed), "--by", "k", "--agg", "median(v)", "--salt", "off",
            "--local", "3", "--json", "--report", str(page), env={"CLUSTER_PROGRESS": "never"})
    assert r.returncode == 0, r.stderr
    out["groupby"] = (json.loads(r.stdout), page)
    return out


@pytest.mark.parametrize("op", ["mode", "median", "stats", "mode-tree", "groupby"])
def test_report_draws_what_the_json_says(jobs, op):
    doc, page = jobs[op]
    el = _parse(page.read_text())
    assert el.tags["script"] == 0 and el.tags["link"] == 0 and el.external == []
    assert "@import" not in page.read_text() and "url(" not in page.read_text()
    matrix = doc["stats"]["traffic_matrix"]
    w = len(matrix)
    assert len(el.traffic_cells) == w * w                # one cell per directed link
    (mark,) = el.busiest                                  # the busiest link is marked, at the right cell
    i, j = np.unravel_index(np.argmax(np.array(matrix)), (w, w))
    cell = el.traffic_cells[i * w + j]
    assert float(mark["x"]) + 1 == float(cell["x"]) and float(mark["y"]) + 1 == float(cell["y"])
    spans = sum(len(x["timeline"]) for x in doc["stats"]["per_worker"])
    assert el.by_chart[("timeline", "rect")] == spans     # every span a worker reported is drawn
    assert el.by_chart[("memory", "rect")] == w
    assert el.by_chart[("streams", "path")] == sum(1 for x in doc["stats"]["per_worker"] if x["streams"])
    if op == "mode-tree":
        assert "went up the tree to one owner" in page.read_text()
    if op == "groupby":                                   # one bar per reducer, the hot one past the mean
        loads = doc["stats"]["reducer_pairs"]
        assert el.by_chart[("reducers", "rect")] == w == len(loads)
        assert doc["stats"]["busiest_reducer_share"] > 2 and "pairs per reducer" in page.read_text()
    if op == "median":
        windows = doc["stats"]["per_worker"][0]["windows"]
        assert windows[0] == doc["stats"]["values"]
        assert el.by_chart[("windows", "rect")] == len(windows)


PROBE = """JSON.stringify(Array.from(document.querySelectorAll('svg.chart')).map(s => {
  const b = s.getBoundingClientRect();
  const drawn = Array.from(s.querySelectorAll('rect,path')).filter(e => {
     const r = e.getBBox(); return r.width > 0 && r.height > 0; }).length;
  return {chart: s.classList[1], width: b.width, height: b.height, drawn: drawn};
}))"""


@pytest.fixture(scope="module")
def browser():
    from tests.browser import Browser, find_or_install
    exe, why = find_or_install()
    if exe is None:
        pytest.skip(why)
    b = Browser(exe)
    yield b
    b.close()


@pytest.mark.parametrize("op", ["mode", "median", "stats", "mode-tree", "groupby"])
def test_report_in_a_real_browser(jobs, browser, op, tmp_path):
    doc, page = jobs[op]
    got = browser.load(page.as_uri(), PROBE)
    assert got.errors == []
    assert got.requests == [page.as_uri()]                 # nothing fetched but the page itself
    charts = {c["chart"]: c for c in json.loads(got.value)}
    want = {"traffic", "timeline", "memory"} | {"mode": {"streams"}, "median": {"windows"},
                                                "groupby": {"reducers", "streams"}}.get(op, set())
    assert want <= set(charts)
    for name in want:
        assert charts[name]["width"] > 100 and charts[name]["height"] > 40 and charts[name]["drawn"] > 0, name
    w = doc["stats"]["workers"]
    assert charts["traffic"]["drawn"] >= w * w
    shot = tmp_path / f"report-{op}.png"
    shot.write_bytes(got.screenshot)
    assert got.screenshot[:8] == b"\x89PNG\r\n\x1a\n" and len(got.screenshot) > 10_000
    print(f"screenshot: {shot}")


def test_the_browser_check_catches_a_broken_page(browser, tmp_path):
    """The harness itself: a console error, an exception and a fetch from the network are all seen."""
    page = tmp_path / "broken.html"
    page.write_text('<!DOCTYPE html><html><body><img src="http://127.0.0.1:9/x.png">'
                    '<script>console.error("drawn badly"); undefinedFunction();</script></body></html>')
    got = browser.load(page.as_uri(), "document.querySelectorAll('svg').length")
    assert any("drawn badly" in e for e in got.errors)
    assert any(e.startswith("exception") for e in got.errors)
    assert "http://127.0.0.1:9/x.png" in got.requests and got.value == 0
