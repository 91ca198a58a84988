"""llmpulse: streaming observability for LLM apps (worker, demo, sql, replay, backtest, kafka, config, ...)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from llmpulse.settings import Settings, load_settings, masked_url

# Plain help: rich's panels print `<bool>` after every flag, as if it took a value.
app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__, rich_markup_mode=None,
                  pretty_exceptions_enable=False, context_settings={"max_content_width": 120})
kafka_app = typer.Typer(no_args_is_help=True, help="The local single-node Kafka broker (dev, demo, tests).")
app.add_typer(kafka_app, name="kafka")
console = Console()
_config: dict[str, Any] = {"file": None, "debug": False}


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"llmpulse {version('llmpulse')}")
        raise typer.Exit()


@app.callback()
def _global_options(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file (default ./llmpulse.yaml)"),
    debug: bool = typer.Option(False, "--debug", help="show the traceback of an unexpected error"),
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="print the version"),
) -> None:
    _config["file"] = config
    _config["debug"] = debug


def _settings() -> Settings:
    return load_settings(_config["file"])


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
    """Is the broker answering? (exit 1 when not)"""
    st = _local_kafka(_settings()).status()
    table = Table(show_header=False, box=None)
    for key, value in st.items():
        shown = {True: "yes", False: "no", None: "-"}.get(value, value) if isinstance(value, (bool, type(None))) else value
        table.add_row(key, Text(str(shown), style=("green" if value else "red") if key == "answering" else ""))
    console.print(table)
    raise typer.Exit(0 if st["answering"] else 1)


@kafka_app.command("fetch")
def kafka_fetch() -> None:
    """Only resolve the broker jars (CI caches them before tests)."""
    console.print(str(_local_kafka(_settings()).fetch()))


@app.command()
def worker(loglevel: str = typer.Option("warning", help="debug | info | warning | error")) -> None:
    """Run the stream worker: llm.events -> validate -> processors -> ClickHouse (+ DLQ, findings);
    serves /metrics, /healthz, /readyz and /stats/ on worker_web_host:worker_web_port."""
    from llmpulse.kafka.local import BrokerUnreachable
    from llmpulse.processors.runtime.worker import run_worker

    settings = _settings()
    sys.argv = [sys.argv[0], "worker"]  # faust's Worker parses argv; keep ours out of it
    try:
        if settings.scale.role != "single":  # several workers: README "Scaling out"
            from llmpulse.processors.runtime.scaled_app import run_scaled

            run_scaled(settings, loglevel=loglevel)
        else:
            run_worker(settings, loglevel=loglevel)
    except BrokerUnreachable as exc:
        typer.echo(f"llmpulse worker: {exc}", err=True)
        raise typer.Exit(1)


@app.command()
def migrate() -> None:
    """Apply ClickHouse migrations (idempotent). The worker also runs them at start."""
    from llmpulse.schemas.store import connect, migrate as apply

    from llmpulse.query import error_message

    s = _settings()
    try:
        client = connect(s.dsn, s.clickhouse_user, s.clickhouse_password.get_secret_value())
    except Exception as exc:
        why = "connection refused" if "Connection refused" in str(exc) else error_message(exc)
        typer.echo(f"llmpulse migrate: cannot reach ClickHouse at {s.dsn_shown}: {masked_url(why)}", err=True)
        raise typer.Exit(1)
    applied = apply(client, s.database, s.retention_days, s.clickhouse_cluster)
    console.print(f"applied: {applied}" if applied else "schema is up to date")


@app.command()
def sql(
    query: str = typer.Argument(..., help="one read-only statement; the default database is the project's "
                                "(`FROM events` reads llmpulse.events)"),
    fmt: str = typer.Option("table", "--format", "-f", help="table | csv | json | jsonl"),
) -> None:
    """Run a read-only query and print the result (works while the embedded worker holds the data)."""
    from llmpulse.commands.output import FORMATS, write_result
    from llmpulse.query import QueryError, QueryRefused, run_query

    if fmt not in FORMATS:
        typer.echo(f"llmpulse sql: --format must be one of {', '.join(FORMATS)}, not {fmt!r}", err=True)
        raise typer.Exit(2)
    try:
        result = run_query(_settings(), query)
    except QueryError as exc:  # refused, a syntax error, no data: one line, not a traceback
        prefix = "refused: " if isinstance(exc, QueryRefused) else ""
        typer.echo(f"llmpulse sql: {prefix}{' '.join(str(exc).split())}", err=True)  # stdout may be a file
        raise typer.Exit(1)
    if fmt == "table":
        print_table(result)
    else:
        write_result(result, fmt, sys.stdout)


def print_table(result: dict, title: str | None = None) -> None:
    table = Table(title=title)
    for name in result["columns"]:
        table.add_column(name)
    for row in result["rows"]:
        table.add_row(*(Text("" if v is None else str(v)) for v in row))  # data, not rich markup
    console.print(table)


@app.command()
def replay(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSON lines, one event per line"),
    topic: Optional[str] = typer.Option(None, help="defaults to the events topic"),
    accept_invalid: bool = typer.Option(False, "--accept-invalid",
                                        help="publish lines that are not JSON objects too (the worker dead-letters "
                                        "them with the reason) and exit 0"),
) -> None:
    """Publish a JSONL file to Kafka as it is. Lines that are not JSON objects are reported with
    their line numbers and not published (exit 1), unless --accept-invalid."""
    from rich.progress import Progress

    from llmpulse.ingest import KafkaPublisher

    s = _settings()
    lines = file.read_bytes().splitlines()
    rejected = [(n, why) for n, why in ((i + 1, _unparsable(line)) for i, line in enumerate(lines)) if why]
    for n, why in rejected[:20]:
        typer.echo(f"{file}:{n}: {why}", err=True)
    if len(rejected) > 20:
        typer.echo(f"... and {len(rejected) - 20} more unparsable lines", err=True)
    skip = set() if accept_invalid else {n - 1 for n, _ in rejected}
    _require_broker(s, "replay")
    pub = KafkaPublisher(s.kafka_bootstrap, topic or s.events_topic)
    with Progress(console=console, transient=not sys.stderr.isatty()) as progress:
        task = progress.add_task(f"replaying {file.name}", total=len(lines))
        for i, line in enumerate(lines):
            if line.strip() and i not in skip:
                while not pub.publish_raw(line, _trace_key(line)):
                    pub.flush(1.0)  # local buffer full: wait for the broker rather than drop
                    pub.stats.queue_full = 0
            if i % 1000 == 0:
                progress.update(task, completed=i)
        progress.update(task, completed=len(lines))
    remaining = pub.flush(60)
    pub.close()
    not_sent = f", {len(rejected)} unparsable lines not published" if rejected and not accept_invalid else ""
    console.print(f"published {pub.stats.delivered} events, {remaining} still queued, {pub.stats.failed} failed"
                  f"{not_sent}")
    raise typer.Exit(1 if remaining or pub.stats.failed or (rejected and not accept_invalid) else 0)


def _unparsable(line: bytes) -> str:
    """Why a line is not a JSON object ('' when it is one, or blank)."""
    import orjson

    if not line.strip():
        return ""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return f"not JSON: {exc}"
    return "" if isinstance(value, dict) else f"not a JSON object but {type(value).__name__}"


def _trace_key(line: bytes) -> str:
    import orjson

    try:
        return str(orjson.loads(line).get("trace_id") or "")
    except Exception:
        return ""


@app.command()
def demo(
    traces: int = typer.Option(3000, help="agent traces to generate"),
    keep_running: bool = typer.Option(False, "--keep-running", help="leave the worker running afterwards"),
) -> None:
    """Start Kafka and the worker, publish realistic traffic, and summarise what landed."""
    from llmpulse.demo import run_demo

    raise typer.Exit(run_demo(_settings(), console, traces=traces, keep_running=keep_running))


@app.command()
def generate(
    rate: float = typer.Option(50.0, help="traces per second"),
    traces: int = typer.Option(0, help="stop after this many traces (0 = run until stopped)"),
    seed: int = typer.Option(0, help="0 = a new seed every run"),
) -> None:
    """Publish realistic synthetic traffic to Kafka at a steady rate (live event times)."""
    import time

    from llmpulse.ingest import KafkaPublisher
    from llmpulse.traffic import TrafficGenerator

    s = _settings()
    gen = TrafficGenerator(seed=seed or int(time.time()))
    _require_broker(s, "generate")
    pub = KafkaPublisher(s.kafka_bootstrap, s.events_topic)
    started, n = time.monotonic(), 0
    try:
        while not traces or n < traces:
            for event in gen.trace(int(time.time() * 1000)):
                pub.publish(event)
            n += 1
            time.sleep(max(0.0, started + n / rate - time.monotonic()))
    except KeyboardInterrupt:
        pass
    finally:
        pub.close()
    console.print(f"{n} traces, {pub.stats.delivered} events delivered, {pub.stats.undelivered} undelivered")
    raise typer.Exit(1 if pub.stats.delivered < pub.stats.published else 0)


def _require_broker(s: Any, command: str) -> None:
    """One line and exit 1 when no broker answers within kafka_wait_seconds (a publisher would
    queue the events and wait, then leave them undelivered)."""
    from llmpulse.kafka.local import BrokerUnreachable, wait_for_broker

    try:
        wait_for_broker(s.kafka_bootstrap, s.kafka_wait_seconds)
    except BrokerUnreachable as exc:
        typer.echo(f"llmpulse {command}: {exc}", err=True)
        raise typer.Exit(1)


@app.command()
def backtest(
    file: Path = typer.Argument(..., exists=True, dir_okay=False, help="JSON lines of contract events"),
    out: Optional[Path] = typer.Option(None, help="write the findings here as JSON lines"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config (budgets, contracts, ...)"),
    actions_out: Optional[Path] = typer.Option(None, help="write the policies' control actions here as JSON lines"),
) -> None:
    """Run the stream's processors over a file and print the findings they raise (deterministic);
    with `policies:`, the control actions they would have taken and what those would have saved."""
    from collections import Counter

    from rich.progress import Progress

    from llmpulse.commands.backtest import SUMMARY_COLUMNS, run, savings, summarize
    from llmpulse.processors.pipeline import Pipeline
    from llmpulse.schemas.controls import encode_action
    from llmpulse.schemas.findings import encode_finding

    try:
        settings = load_settings(config) if config else _settings()
    except ValueError as exc:  # a config mistake (each entry named): one message, no traceback
        typer.echo(str(exc), err=True)
        raise typer.Exit(2)
    pipeline = Pipeline.from_settings(settings, replay=True)
    total = sum(1 for _ in open(file, "rb"))
    if not any(line.strip() for line in open(file, "rb")):
        typer.echo(f"llmpulse backtest: {file} is empty: no events to run the processors over", err=True)
        raise typer.Exit(1)
    with Progress(console=console) as progress:
        task = progress.add_task(f"backtest {file.name}", total=total)
        result = run(pipeline, file, lambda n: progress.advance(task, n))
    findings, counts = result.findings, result.counts
    by_kind = Counter((f.kind, f.severity, f.status) for f in findings)
    print_table({"columns": ["kind", "severity", "status", "findings"],
                 "rows": [[*k, n] for k, n in sorted(by_kind.items())]}, title="Findings")
    console.print(f"{counts['events']} events, {counts['dead_letters']} dead letters, {counts['findings']} findings")
    if out:
        out.write_bytes(b"".join(encode_finding(f) + b"\n" for f in findings))
    if pipeline.policies is not None:
        rows = summarize(savings(pipeline, file, result.actions))
        print_table({"columns": SUMMARY_COLUMNS, "rows": rows}, title="Control actions the policies would have taken")
        total = [sum(r[i] for r in rows) for i in range(3, len(SUMMARY_COLUMNS))]
        console.print(f"{total[0]} actions would have saved {total[2]} model calls (${total[3]:.2f}) and "
                      f"{total[4]} tool calls; {total[1]} loops cut short, {total[5]} calls rerouted, "
                      f"{total[6]} tool calls held for approval", soft_wrap=True)
        if actions_out:
            actions_out.write_bytes(b"".join(encode_action(a) + b"\n" for a in result.actions))


otlp_app = typer.Typer(help="OTLP/HTTP receiver: POST /v1/traces (protobuf or JSON) -> contract events on llm.events.")
app.add_typer(otlp_app, name="otlp-gateway")


@otlp_app.callback(invoke_without_command=True)
def otlp_gateway(
    ctx: typer.Context,
    host: Optional[str] = typer.Option(None, help="bind address (0.0.0.0 to accept other hosts) (default 127.0.0.1)"),
    port: Optional[int] = typer.Option(None, help="default 4318"),
    max_body_mb: Optional[float] = typer.Option(None, help="default 4"),
    max_pending: Optional[int] = typer.Option(None, help="default 100000"),
    retry_after: Optional[int] = typer.Option(None, help="Retry-After of a 503, seconds (default 2)"),
    keys_file: Optional[Path] = typer.Option(None, help="API keys file, re-read when it changes or on SIGHUP"),
    tls_cert: Optional[Path] = typer.Option(None, help="serve HTTPS with this certificate (PEM) ..."),
    tls_key: Optional[Path] = typer.Option(None, help="... and this private key (PEM)"),
    insecure_no_auth: bool = typer.Option(False, "--insecure-no-auth", help="accept requests without an API key"),
) -> None:
    """OTLP/HTTP receiver (the `otlp_gateway:` config section; keys from `keygen`)."""
    if ctx.invoked_subcommand is not None:
        return
    from pydantic import ValidationError

    from llmpulse.config_errors import problems
    from llmpulse.ingest import KafkaPublisher
    from llmpulse.ingest.otlp_gateway import GatewayConfig, KeyConfigError, preflight, serve

    if bool(tls_cert) != bool(tls_key):
        typer.echo("otlp-gateway: give both --tls-cert and --tls-key", err=True)
        raise typer.Exit(2)
    s = _settings()
    given = {"host": host, "port": port, "max_pending": max_pending, "retry_after_s": retry_after,
             "keys_file": keys_file, "max_body_bytes": int(max_body_mb * 1024 * 1024) if max_body_mb else None,
             "tls": {"cert_file": tls_cert, "key_file": tls_key} if tls_cert or tls_key else None,
             "allow_unauthenticated": True if insecure_no_auth else None}
    try:
        config = GatewayConfig.model_validate({**s.otlp_gateway.model_dump(), **{k: v for k, v in given.items() if v is not None}})
        preflight(config)
    except KeyConfigError as exc:
        typer.echo(str(exc).replace("\n", " "), err=True)
        raise typer.Exit(2)
    except ValidationError as exc:  # an option out of range: `port: must be <= 65535 (got 99999)`
        typer.echo(f"llmpulse otlp-gateway: {'; '.join(problems(exc, model=GatewayConfig))}", err=True)
        raise typer.Exit(2)
    # Validation's bounds, as the worker applies them (older than the retention: refused too).
    limits = s.limits if s.limits.max_age_days is not None else s.limits.model_copy(
        update={"max_age_days": s.retention_days})
    sink = KafkaPublisher.from_settings(s)  # redacts before anything reaches Kafka
    # Its view of llm.controls, served at /v1/controls for apps that poll it (ingest/controls_http.py).
    controls = sink.enforcer.view if sink.enforcer is not None and s.controls.http.enabled else None
    try:
        serve(sink, config, limits, controls=controls)
    finally:
        sink.close()


@otlp_app.command("keygen")
def otlp_keygen(
    tenant: str = typer.Option(..., help="the tenant this key's spans belong to"),
    key_id: str = typer.Option("", "--id", help="a name for stats and logs (default TENANT-YYYYMMDD-xxxx)"),
    trusted: bool = typer.Option(False, "--trusted", help="a collector that may set llmpulse.tenant from its spans"),
    append: Optional[Path] = typer.Option(None, help="append the line to this keys file"),
) -> None:
    """Make an API key; print it once, and the hash line for the keys file (the key is stored nowhere)."""
    import secrets
    import time

    from llmpulse.ingest.otel_gateway_config import key_line, new_key

    key = new_key()
    line = key_line(key, tenant, key_id or f"{tenant}-{time.strftime('%Y%m%d')}-{secrets.token_hex(2)}", trusted)
    typer.echo(f"key (give it to the client; shown once): {key}", err=True)
    typer.echo(line)
    if append is not None:
        with open(append, "a") as f:
            f.write(line + "\n")
        typer.echo(f"appended to {append}; a running gateway picks it up within a second", err=True)


grafana_app = typer.Typer(no_args_is_help=True, help="Dashboards and alert rules as code.")
app.add_typer(grafana_app, name="grafana")


@grafana_app.command("build")
def grafana_build(out: Optional[Path] = typer.Option(None, help="defaults to dashboards/generated")) -> None:
    """Regenerate the dashboard JSON and provisioning files from the code."""
    from llmpulse.dashboards.build import build_all

    paths = build_all(out) if out else build_all()
    console.print(f"wrote {len(paths)} files")


@grafana_app.command("sync")
def grafana_sync(
    url: str = typer.Option(..., envvar="LLMPULSE_GRAFANA_URL"),
    token: str = typer.Option(..., envvar="LLMPULSE_GRAFANA_TOKEN"),
    clickhouse_host: str = typer.Option("clickhouse", help="as Grafana reaches it"),
    clickhouse_password: str = typer.Option("", envvar="LLMPULSE_GRAFANA_CH_PASSWORD"),
) -> None:
    """Push data source, folders, dashboards and alert rules to Grafana (idempotent)."""
    from llmpulse.dashboards.sync import ClickHouseConnection, sync

    report = sync(url, token, clickhouse=ClickHouseConnection(clickhouse_host, password=clickhouse_password))
    console.print(report)


def _register_commands() -> None:
    from llmpulse.commands.config import config_app

    app.add_typer(config_app, name="config")
    from llmpulse.commands.changes import changes_command
    from llmpulse.commands.gate import gate_command
    from llmpulse.commands.control import control_app
    from llmpulse.commands.redact import redact_command
    from llmpulse.commands.report import report_command
    from llmpulse.commands.reprice import reprice_command

    app.command("changes")(changes_command)
    app.command("gate")(gate_command)
    app.command("redact")(redact_command)
    app.add_typer(control_app, name="control")
    app.command("reprice")(reprice_command)
    app.command("report")(report_command)


_register_commands()


def _command_name(argv: list[str]) -> str:
    """`sql` of `llmpulse -c x.yaml sql ...`: the first words that are no option or option value."""
    words, skip = [], False
    for arg in argv:
        if skip or arg in ("-c", "--config"):
            skip = not skip
            continue
        if arg.startswith("-"):
            continue
        words.append(arg)
        if len(words) == 2 or words[0] not in {"kafka", "grafana", "config", "otlp-gateway", "control"}:
            break
    return " ".join(words)


def main() -> None:
    """The CLI, with user errors as one message: no traceback unless --debug."""
    import logging

    from llmpulse.config_errors import ConfigError

    # A library's own error log line on top of our one-line message: not on the terminal.
    logging.getLogger("clickhouse_connect").addHandler(logging.NullHandler())
    try:
        app()
    except ConfigError as exc:
        typer.echo(f"llmpulse: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        if _config["debug"]:
            raise
        command = _command_name(sys.argv[1:])
        typer.echo(f"llmpulse {command}: {type(exc).__name__}: {' '.join(str(exc).split())[:500]} "
                   "(run with --debug for the traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
