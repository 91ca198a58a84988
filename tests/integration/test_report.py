"""`llmpulse report`: the dashboards' own queries as a static HTML page, checked in headless Chromium.

chDB allows one data path per process (and test_dashboards opens another in this
process), so seeding and the report command run as subprocesses, the way a user runs
them: seed with the real migrations and test_dashboards' realistic rows, then the
`report` command with the embedded default (no worker running: it opens the directory).
Then Debian's `chromium` renders the page offline: a screenshot, and the DOM after the
scripts ran, where every chart panel must hold plotly's `.main-svg`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest


from llmpulse.commands.report import parse_duration, parse_time, report_errors, time_range  # noqa: E402
from llmpulse.dashboards.definitions import DASHBOARDS  # noqa: E402
from llmpulse.dashboards.report import Result, format_value, qualify_tables, render_report  # noqa: E402
from llmpulse.testing import free_port  # noqa: E402

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DB = "llmpulse_dash_test"  # test_dashboards' seed writes here
N_PANELS = sum(len(d.panels) for d in DASHBOARDS)
CHART_VIZ = ("timeseries", "barchart", "piechart")

SEED = f"""
import clickhouse_connect
from llmpulse.schemas.store import migrate
from tests.integration import test_dashboards as td
client = clickhouse_connect.get_client(dsn="chdb://" + {{path!r}})
migrate(client, td.DB, 3650)
assert td.DB == {DB!r}
print(td._seed(client)["events"])
client.close()
"""
RUN_COMMAND = "import typer; from llmpulse.commands.report import report_command; typer.run(report_command)"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLMPULSE_")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("report")
    state = tmp / "state"
    seeded = subprocess.run([sys.executable, "-c", SEED.format(path=str((state / "chdb").resolve()))], cwd=ROOT,
                            env=_clean_env(), capture_output=True, text=True, timeout=180)
    assert seeded.returncode == 0, seeded.stderr[-3000:]
    assert int(seeded.stdout.split()[-1]) > 400
    out = tmp / "report.html"
    run = subprocess.run(
        [sys.executable, "-c", RUN_COMMAND, "--out", str(out), "--last", "6h"], cwd=tmp, timeout=300,
        env=_clean_env(LLMPULSE_STATE_DIR=str(state), LLMPULSE_DATABASE=DB,
                       LLMPULSE_WORKER_WEB_PORT=str(free_port())),  # no worker there: read the directory
        capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert f"wrote {out}" in run.stdout
    return out


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    if CHROMIUM is None:
        pytest.fail("chromium is not installed (apt-get install -y chromium)")
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp / 'chromium-profile'}", *args],
        capture_output=True, timeout=180)


# ---------------------------------------------------------------------------- the page itself


def test_report_is_a_small_page_with_plotly_loaded_once_beside_it(report: Path) -> None:
    import plotly

    page = report.read_text(encoding="utf-8")
    assert report_errors(page) == 0, re.findall(r'<div class="error">.*?</div>', page)[:5]
    assert f'data-panels="{N_PANELS}"' in page
    # no CDN: the one script loaded is plotly.js, from a file beside the page (offline)
    sources = re.findall(r"<(?:script|img|iframe)[^>]+\bsrc=\"([^\"]+)\"", page)
    assert sources == [f"plotly-{plotly.__version__}.min.js"]
    assert (report.parent / sources[0]).stat().st_size > 3_000_000
    assert not re.search(r"<link[^>]+\bhref=", page)
    assert "Plotly.newPlot" in page and report.stat().st_size < 2_000_000
    for dash in DASHBOARDS:  # grouped by dashboard, with the descriptions
        assert f'id="{dash.uid}"' in page
        assert (dash.description.replace("'", "&#x27;").replace('"', "&quot;")) in page
    # the trace explorer shows the looping trace (the seed's only critical finding)
    assert "trace <code>trace-loop-0001</code>" in page


def _png_size_and_pixels(path: Path) -> tuple[int, int, bytes]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    idat, pos = b"", 8
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        if kind == b"IDAT":
            idat += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    return width, height, zlib.decompress(idat)


def test_screenshot_in_headless_chromium(report: Path, tmp_path: Path) -> None:
    png = tmp_path / "report.png"
    run = _chromium(tmp_path, f"--screenshot={png}", "--window-size=1400,3000", report.as_uri())
    assert run.returncode == 0 and png.exists(), run.stderr[-2000:]
    width, height, pixels = _png_size_and_pixels(png)
    assert (width, height) == (1400, 3000)
    # a blank page of this size compresses to ~10 KB and has a handful of distinct bytes
    assert png.stat().st_size > 100_000
    assert len(set(pixels[:: 997])) > 100
    shutil.copy(png, report.with_suffix(".png"))  # kept beside the report for a look


class _Panels(HTMLParser):
    """Per report panel (<section class="panel">): its viz, status and the classes inside."""

    def __init__(self) -> None:
        super().__init__()
        self.panels: list[dict] = []
        self._depth = 0  # <section> depth inside the current panel

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        classes = (a.get("class") or "").split()
        if tag == "section" and "panel" in classes:
            self.panels.append({"id": a.get("id"), "viz": a.get("data-viz"), "status": a.get("data-status"),
                                "classes": [], "tags": []})
            self._depth = 1
            return
        if self._depth:
            if tag == "section":
                self._depth += 1
            self.panels[-1]["classes"] += classes
            self.panels[-1]["tags"].append(tag)

    def handle_endtag(self, tag):
        if self._depth and tag == "section":
            self._depth -= 1


def test_every_chart_renders_in_chromium(report: Path, tmp_path: Path) -> None:
    run = _chromium(tmp_path, "--dump-dom", "--virtual-time-budget=10000", report.as_uri())
    assert run.returncode == 0, run.stderr[-2000:]
    dom = run.stdout.decode("utf-8", "replace")
    parser = _Panels()
    parser.feed(dom)
    panels = [p for p in parser.panels if p["id"].startswith("d")]  # the dashboards' (t…: trace sections)
    assert all(p["status"] == "ok" for p in parser.panels)
    assert len(panels) == N_PANELS
    assert all(p["status"] == "ok" for p in panels)
    specs = [p for d in DASHBOARDS for p in d.panels]
    assert [p["viz"] for p in panels] == [s.viz for s in specs]
    for got, spec in zip(panels, specs):
        if spec.viz in CHART_VIZ:  # the seed has data for every chart: plotly drew each one
            assert "main-svg" in got["classes"], f"{spec.title}: no plotly chart in the DOM"
            if spec.viz == "timeseries":
                assert "scatterlayer" in got["classes"], f"{spec.title}: no lines drawn"
        elif spec.viz == "table":
            assert "table" in got["tags"] and "td" in got["tags"], f"{spec.title}: empty table"
        elif spec.viz == "stat":
            assert "stat-value" in got["classes"]
    n_timeseries = sum(s.viz == "timeseries" for s in specs)
    assert n_timeseries >= 10 and dom.count('class="main-svg"') >= 2 * n_timeseries


def _chart_colors(page: str) -> dict[str, set[str]]:
    """Label -> the colours it has in the page's charts (lines, bars, pie slices)."""
    out: dict[str, set[str]] = {}
    for fig in re.finditer(r'Plotly\.newPlot\(\s*"[^"]+",\s*(\[.*?\]),\s*\{', page, re.S):
        for tr in json.loads(fig.group(1)):
            if tr.get("type") == "pie":
                pairs = zip(tr["labels"], tr["marker"]["colors"])
            elif tr.get("type") == "bar" and isinstance((tr.get("marker") or {}).get("color"), list):
                pairs = zip(tr["x"], tr["marker"]["color"])
            elif (tr.get("line") or {}).get("color"):
                pairs = [(tr["name"], tr["line"]["color"])]
            else:
                pairs = []
            for label, color in pairs:
                out.setdefault(str(label), set()).add(color)
    return out


def test_a_model_has_one_colour_in_every_chart_and_headers_are_words(report: Path) -> None:
    page = report.read_text(encoding="utf-8")
    colors = _chart_colors(page)
    models = [m for m in colors if m.startswith(("gpt", "claude", "o3", "gemini"))]
    assert len(models) >= 2, sorted(colors)
    assert all(len(colors[m]) == 1 for m in models), {m: colors[m] for m in models}
    assert len({next(iter(colors[m])) for m in models}) == len(models)  # and models differ
    headers = re.findall(r"<th [^>]*>([^<]*)</th>", page)
    assert headers and not [h for h in headers if "_" in h], [h for h in headers if "_" in h][:10]
    assert "1970-01-01" not in page
    # trace ids link to their trace's section (or the explorer past the first few), never wrapped
    links = re.findall(r'<td class="string id trace"[^>]*><a href="#([^"]+)"', page)
    anchors = set(re.findall(r'id="([^"]+)"', page))
    assert links and set(links) <= anchors and any(a.startswith("trace-") for a in links)
    assert "<h2>Trace <code>trace-loop-0001</code>" not in page  # the explorer's own trace: no copy


# ---------------------------------------------------------------------------- pieces, no browser


def test_words_colours_and_zero_times() -> None:
    from llmpulse.dashboards.report import ColorBook, words

    assert words("p95_latency_ms") == "p95 latency" and words("trace_id") == "Trace ID"
    assert words("cost_per_call_usd") == "Cost per call" and words("change_ts") == "Change time"
    assert words("Already Words") == "Already Words"
    book = ColorBook()
    assert book("gpt-4o", "model") == book("gpt-4o", "model") != book("o3-mini", "model")
    assert book("acme", "tenant") == book("gpt-4o", "model")  # each dimension walks the palette itself
    assert format_value(datetime(1970, 1, 1, tzinfo=timezone.utc)) == ""


def test_the_default_range_fits_the_data() -> None:
    from llmpulse.commands.report import MAX_FIT, fit_range

    minute = 60_000
    t0 = 1_767_225_600_000  # 2026-01-01T00:00Z
    assert fit_range(t0 + 5 * minute + 7, t0 + 50 * minute + 3) == (t0 + 5 * minute, t0 + 52 * minute)
    start, end = fit_range(t0, t0 + 30_000)  # half a minute of data: at least ten minutes shown
    assert end - start == 10 * minute and start <= t0 and end > t0 + 30_000
    start, end = fit_range(t0, t0 + 30 * 86_400_000)  # a month: the last week
    assert end - start == MAX_FIT.total_seconds() * 1000




def test_qualify_tables_is_what_default_database_does() -> None:
    sql = ("SELECT * FROM (SELECT * FROM findings FINAL WHERE x) JOIN traces t ON 1 "
           "WHERE y IN (SELECT 1 FROM events_per_minute) AND z FROM events FINAL, other.events")
    out = qualify_tables(sql, "db", ["events", "findings", "traces", "events_per_minute"])
    assert "FROM db.findings FINAL" in out and "JOIN db.traces t" in out
    assert "FROM db.events_per_minute" in out and "FROM db.events FINAL" in out and "other.events" in out
    assert qualify_tables("SELECT 1 FROM db.events", "db", ["events"]) == "SELECT 1 FROM db.events"


def test_a_failing_panel_is_shown_and_counted_not_fatal() -> None:
    overview = DASHBOARDS[0]

    def rows(sql: str) -> dict:
        if "dead_letters" in sql:
            raise RuntimeError("Table llmpulse.dead_letters does not exist")
        if "toStartOfInterval" in sql:  # times as they arrive over the worker's JSON endpoint
            return {"columns": ["time", "calls_per_s"], "types": ["DateTime('UTC')", "Float64"],
                    "rows": json.loads(json.dumps([["2026-01-01T10:00:00+00:00", 1.5], ["2026-01-01T10:05:00Z", 2]]))}
        return {"columns": ["n"], "types": ["UInt64"], "rows": [[3]]}

    end = datetime(2026, 1, 1, 12, tzinfo=timezone.utc)
    page = render_report(rows, int((end - timedelta(hours=6)).timestamp() * 1000), int(end.timestamp() * 1000),
                         dashboards=[overview])
    failed = sum("dead_letters" in p.sql for p in overview.panels)
    assert report_errors(page) == failed > 0
    assert "does not exist" in page and page.count('data-status="ok"') == len(overview.panels) - failed


def test_values_times_and_ranges() -> None:
    assert format_value(0.1234, "percentunit") == "12.3%"
    assert format_value(1234.5, "currencyUSD") == "$1,234" or format_value(1234.5, "currencyUSD") == "$1,235"
    assert format_value(0.004321, "currencyUSD") == "$0.004321"
    assert format_value(30_000.0, "ms") == "30.00 s" and format_value(812.4, "ms") == "812 ms"
    assert format_value(12345) == "12,345" and format_value(None) == ""
    res = Result.of({"columns": ["t"], "types": ["DateTime64(3, 'UTC')"], "rows": [["2026-01-01 10:00:00.123"]]})
    assert res.rows[0][0] == datetime(2026, 1, 1, 10, 0, 0, 123000, tzinfo=timezone.utc)
    assert parse_duration("90m") == timedelta(minutes=90) and parse_duration("7d") == timedelta(days=7)
    assert parse_time("2026-01-01T00:00Z") == parse_time("2026-01-01T00:00") == 1767225600000
    assert time_range(last="1h", now_ms=10_000_000) == (10_000_000 - 3_600_000, 10_000_000)
    assert time_range(since="1767225600000", until="2026-01-01T01:00Z") == (1767225600000, 1767229200000)
    with pytest.raises(ValueError):
        time_range(since="2026-01-01T00:00Z", last="1h")


def test_report_through_the_running_worker(worker, tmp_path: Path) -> None:
    """Embedded mode with the worker holding chDB: the report reads through its /query/
    endpoint (JSON rows), on data the real pipeline wrote (priced, with findings)."""
    from llmpulse.commands.report import write_report
    from llmpulse.ingest import KafkaPublisher
    from llmpulse.testing import tool_loop_events, wait_for
    from llmpulse.traffic import TrafficGenerator

    s = worker.settings
    now = int(datetime.now(timezone.utc).timestamp() * 1000)
    events = list(TrafficGenerator(seed=5, start_ms=now - 20 * 60_000, traces_per_minute=20).events(300))
    events += tool_loop_events("report-loop-1", start_ms=now - 60_000)
    pub = KafkaPublisher(s.kafka_bootstrap, s.events_topic)
    for e in events:
        assert pub.publish(e)
    assert pub.flush(30) == 0
    pub.close()
    wait_for(lambda: worker.stats().get("inserted", 0) >= len(events), 60, what="events stored")
    out = write_report(s, tmp_path / "worker-report.html")  # the range fits the data
    page = out.read_text(encoding="utf-8")
    first = datetime.fromtimestamp(min(e["ts"] for e in events) / 1000, timezone.utc).replace(second=0)
    assert f"<b>{first.strftime('%Y-%m-%d %H:%M')} UTC →" in page
    assert report_errors(page) == 0, re.findall(r'<div class="error">.*?</div>', page)[:5]
    assert re.search(r"Showing trace <code>[^<]+</code>", page)  # the trace explorer has a trace
    assert "report-loop-1" in page  # the injected loop's finding, e.g. in the loop findings table
    assert int(re.search(r'data-charts="(\d+)"', page).group(1)) >= 12
