"""`llmpulse` command line: worker, demo, replay, sql, migrate, kafka up|down|status."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from llmpulse.settings import Settings, load_settings

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
kafka_app = typer.Typer(no_args_is_help=True, help="The local single-node Kafka broker (dev, demo, tests).")
app.add_typer(kafka_app, name="kafka")
console = Console()


def _settings() -> Settings:
    return load_settings()


def _local_kafka(s: Settings):
    from llmpulse.kafka.local import LocalKafka

    return LocalKafka(s.kafka_dir, s.kafka_bootstrap, s.kafka_version)


@kafka_app.command("up")
def kafka_up() -> None:
    """Fetch the broker jars (Maven), format KRaft storage, start the broker and wait for it."""
    from llmpulse.kafka.local import LocalKafkaError

    k = _local_kafka(_settings())
    try:
        with console.status(f"starting Kafka {k.version} on {k.bootstrap} ..."):
            how = k.up()
    except LocalKafkaError as exc:
        console.print(f"[red]{exc}")
        raise typer.Exit(1)
    console.print(f"Kafka on {k.bootstrap}: {how}")


@kafka_app.command("down")
def kafka_down() -> None:
    """Stop the broker started by `kafka up`."""
    stopped = _local_kafka(_settings()).down()
    console.print("stopped" if stopped else "no local broker was running")


@kafka_app.command("status")
def kafka_status() -> None:
    """Is the broker answering?"""
    st = _local_kafka(_settings()).status()
    console.print(st)
    raise typer.Exit(0 if st["answering"] else 1)


@kafka_app.command("fetch")
def kafka_fetch() -> None:
    """Only resolve the broker jars (CI caches them before tests)."""
    console.print(str(_local_kafka(_settings()).fetch()))


@app.command()
def worker(loglevel: str = typer.Option("warning", help="faust log level")) -> None:
    """Run the stream worker: llm.events -> validate -> processors -> ClickHouse (+ DLQ, findings)."""
    from llmpulse.processors.worker import run_worker

    sys.argv = [sys.argv[0], "worker"]  # faust's Worker parses argv; keep ours out of it
    run_worker(_settings(), loglevel=loglevel)


@app.command()
def migrate() -> None:
    """Apply ClickHouse migrations (idempotent). The worker also runs them at start."""
    from llmpulse.schemas.store import connect, migrate as apply

    s = _settings()
    client = connect(s.dsn, s.clickhouse_user, s.clickhouse_password.get_secret_value())
    applied = apply(client, s.database, s.retention_days)
    console.print(f"applied: {applied}" if applied else "schema is up to date")


@app.command()
def sql(query: str = typer.Argument(..., help="SQL; use the `llmpulse` database, e.g. llmpulse.events")) -> None:
    """Run a query and print the result (works while the embedded worker holds the data)."""
    from llmpulse.query import QueryError, run_query

    try:
        result = run_query(_settings(), query)
    except QueryError as exc:
        console.print(f"[red]{exc}")
        raise typer.Exit(1)
    print_table(result)


def print_table(result: dict, title: str | None = None) -> None:
    table = Table(title=title)
    for name in result["columns"]:
        table.add_column(name)
    for row in result["rows"]:
        table.add_row(*("" if v is None else str(v) for v in row))
    console.print(table)


@app.command()
def replay(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSON lines, one event per line"),
    topic: Optional[str] = typer.Option(None, help="defaults to the events topic"),
) -> None:
    """Publish a JSONL file to Kafka as it is (invalid lines end up in the DLQ, with reasons)."""
    from rich.progress import Progress

    from llmpulse.ingest import KafkaPublisher

    s = _settings()
    pub = KafkaPublisher(s.kafka_bootstrap, topic or s.events_topic)
    lines = file.read_bytes().splitlines()
    with Progress(console=console) as progress:
        task = progress.add_task(f"replaying {file.name}", total=len(lines))
        for i, line in enumerate(lines):
            if line.strip():
                while not pub.publish_raw(line, _trace_key(line)):
                    pub.flush(1.0)  # local buffer full: wait for the broker rather than drop
                    pub.stats.queue_full = 0
            if i % 1000 == 0:
                progress.update(task, completed=i)
        progress.update(task, completed=len(lines))
    remaining = pub.flush(60)
    pub.close()
    console.print(f"published {pub.stats.delivered} events, {remaining} still queued, {pub.stats.failed} failed")
    raise typer.Exit(1 if remaining or pub.stats.failed else 0)


def _trace_key(line: bytes) -> str:
    import orjson

    try:
        return str(orjson.loads(line).get("trace_id") or "")
    except Exception:
        return ""


@app.command()
def demo(
    traces: int = typer.Option(3000, help="agent traces to generate"),
    keep_running: bool = typer.Option(False, help="leave the worker running afterwards"),
) -> None:
    """Start Kafka and the worker, publish realistic traffic, and summarise what landed."""
    from llmpulse.demo import run_demo

    raise typer.Exit(run_demo(_settings(), console, traces=traces, keep_running=keep_running))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
