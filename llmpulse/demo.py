"""`llmpulse demo`: the whole pipeline on one machine with the embedded default.

Starts the local broker if needed, runs the worker, publishes realistic traffic
(plus a few malformed messages) through the SDK, waits until everything has
landed, and prints a summary read back from ClickHouse.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from llmpulse.ingest import KafkaPublisher
from llmpulse.query import run_query, worker_stats
from llmpulse.settings import Settings
from llmpulse.traffic import MALFORMED, TrafficGenerator

SUMMARY_QUERIES = {
    "Events per type": "SELECT event_type, count() AS events FROM {db}.events FINAL GROUP BY event_type ORDER BY events DESC",
    "Traces": "SELECT count() AS traces, round(avg(steps), 2) AS avg_steps, countIf(trace_status = 'error') AS with_errors, "
              "countIf(trace_status = 'refusal') AS with_refusals FROM {db}.traces",
    "Latency per model (output events)": "SELECT model, count() AS calls, round(quantile(0.5)(latency_ms)) AS p50_ms, "
              "round(quantile(0.95)(latency_ms)) AS p95_ms, sum(cache_read_tokens) AS cached_tokens "
              "FROM {db}.events FINAL WHERE event_type = 'output' GROUP BY model ORDER BY calls DESC",
    "Top tools": "SELECT tool_name, count() AS calls, round(countIf(status != 'ok') / count(), 3) AS error_rate "
                 "FROM {db}.events FINAL WHERE event_type = 'tool_call' GROUP BY tool_name ORDER BY calls DESC LIMIT 8",
    "Dead letters": "SELECT count() AS dead_letters, any(reason) AS example_reason FROM {db}.dead_letters FINAL",
    "Spend by workflow (priced by llmpulse)": "SELECT workflow, round(sum(spend_usd), 2) AS usd, sum(calls) AS model_calls, "
                 "round(sum(spend_usd) / sum(calls), 5) AS usd_per_call FROM {db}.calls_per_day GROUP BY workflow ORDER BY usd DESC",
    "Findings": "SELECT kind, severity, count() AS findings, round(sum(wasted_usd), 4) AS wasted_usd, any(title) AS example "
                "FROM {db}.findings FINAL WHERE status = 'open' GROUP BY kind, severity ORDER BY findings DESC",
}


def run_demo(settings: Settings, console: Console, traces: int = 3000, keep_running: bool = False) -> int:
    s = settings
    if s.kafka_bootstrap.startswith(("127.0.0.1:", "localhost:")):
        from llmpulse.kafka.local import LocalKafka

        with console.status(f"Kafka {s.kafka_version} on {s.kafka_bootstrap} ..."):
            how = LocalKafka(s.kafka_dir, s.kafka_bootstrap, s.kafka_version).up()
        console.print(f"[green]✓[/] Kafka on {s.kafka_bootstrap} ({how})")

    worker = None
    if worker_stats(s) is None:
        worker = _start_worker(s, console)
    baseline = worker_stats(s).get("consumed", 0)

    gen = TrafficGenerator(seed=int(time.time()), start_ms=int(time.time() * 1000) - traces * 100,
                           traces_per_minute=600)
    pub = KafkaPublisher(s.kafka_bootstrap, s.events_topic)
    events = list(gen.events(traces))
    # A few agents stuck in a tool loop, so the findings table has something to show.
    events += [e for i in range(3) for e in gen.looping_trace(gen.start_ms + (i + 1) * traces * 25)]
    sent = 0
    with _progress(console) as progress:
        task = progress.add_task("publishing events", total=len(events) + len(MALFORMED))
        for i, event in enumerate(events):
            while not pub.publish(event):
                pub.flush(0.5)  # buffer full: let the broker catch up instead of dropping demo data
            sent += 1
            if i % 500 == 0:
                progress.update(task, completed=sent)
        for raw in MALFORMED:
            sent += pub.publish_raw(raw, "malformed")
        pub.flush(30)
        progress.update(task, completed=sent)

        task = progress.add_task("landing in ClickHouse", total=sent)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            landed = worker_stats(s)["consumed"] - baseline
            progress.update(task, completed=min(landed, sent))
            if landed >= sent:
                break
            time.sleep(0.3)
    pub.close()
    console.print(f"[green]✓[/] {sent} messages published ({len(MALFORMED)} deliberately malformed), "
                  f"{pub.stats.undelivered} undelivered")

    from llmpulse.cli import print_table

    for title, sql in SUMMARY_QUERIES.items():
        print_table(run_query(s, sql.format(db=s.database)), title=title)
    from llmpulse.commands.report import write_report

    report = write_report(s, Path("report.html"))  # the range fits the data
    console.print(f"[green]✓[/] report with the dashboards' panels: {report.resolve()} (works offline)")
    console.print(
        "\nQuery it yourself, e.g.:\n"
        f"  llmpulse sql \"SELECT workflow, count() FROM {s.database}.traces GROUP BY workflow\"\n"
        f"  llmpulse sql \"SELECT * FROM {s.database}.calls_per_minute ORDER BY minute DESC LIMIT 10\"\n"
        f"Data: {s.dsn}   Worker log: {s.state_dir / 'worker.log'}"
    )
    if worker is not None and not keep_running:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
    return 0


def _start_worker(s: Settings, console: Console) -> subprocess.Popen:
    s.state_dir.mkdir(parents=True, exist_ok=True)
    log = open(s.state_dir / "worker.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "llmpulse", "worker"], stdout=log, stderr=subprocess.STDOUT,
                            env=os.environ.copy(), start_new_session=True)
    with console.status("starting the worker ..."):
        deadline = time.monotonic() + 90
        while not (worker_stats(s) or {}).get("ready"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the worker did not start; see {s.state_dir / 'worker.log'}")
            time.sleep(0.3)
    console.print(f"[green]✓[/] worker running (pid {proc.pid})")
    return proc


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=console)
