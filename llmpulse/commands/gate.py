"""`llmpulse gate WORKFLOW --candidate prompt:v8 --baseline prompt:v7`: the eval gate for CI.

Evidence: eval (and output) events in ClickHouse since `--since`, a JSONL file of eval
results (`--evals FILE`, repeatable; then neither ClickHouse nor Kafka is needed), or both.
The rule is the workflow's `eval_gate:` entry (processors/gate.py, which also holds the
statistics and the decision). Exit codes: 0 pass, 1 fail, 3 not enough evidence, 2 a usage
or input error (bad lines are listed, each with its line number), 4 the decision could
not be published (`--publish`).

Output: a table (or `--format json` on stdout), `--junit FILE` (one test case per check;
a failed check is a failed test, missing evidence an error) and `--markdown FILE` (a
pull-request comment). `--publish` records the decision as a `change` of kind
`eval_gate` on the events topic; its id (printed, or `--gate-id`) is what the deploy
step puts in its change's `gate_id`.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Optional
from xml.etree import ElementTree as ET

import typer

if TYPE_CHECKING:
    from llmpulse.processors.gate import Evidence, GateRecord, GateReport
    from llmpulse.settings import Settings

EXIT_USAGE, EXIT_UNPUBLISHED = 2, 4
_UNITS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


class GateInputError(ValueError):
    pass


def duration_ms(text: str) -> int | None:
    """`30s`, `30m`, `12h`, `7d` in ms; None if `text` is not such a duration."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhd])\s*", text)
    return int(m.group(1)) * _UNITS[m.group(2)] if m else None


def since_ms(text: str, now_ms: int | None = None) -> int:
    """`7d`, `12h`, `30m` before now, or what `reprice` accepts (ISO 8601, a date, epoch ms)."""
    from llmpulse.commands.reprice import parse_time

    d = duration_ms(text)
    if d is not None:
        return (time.time_ns() // 1_000_000 if now_ms is None else now_ms) - d
    return parse_time(text)


def read_jsonl(paths: list[Path]) -> list[GateRecord]:
    """Records of every file; any bad line is a GateInputError listing each (file:line: why)."""
    from llmpulse.processors.gate import parse_lines

    records, problems = [], []
    for path in paths:
        try:
            with open(path, "rb") as f:
                recs, errors, more = parse_lines(f)
        except OSError as exc:
            raise GateInputError(f"{path}: {exc.strerror or exc}") from None
        records += recs
        problems += [f"{path}:{e.line}: {e.message}" for e in errors]
        if more:
            problems.append(f"{path}: {more} more bad lines")
    if problems:
        raise GateInputError("bad eval lines:\n" + "\n".join(problems[:50])
                             + (f"\n... {len(problems) - 50} more" if len(problems) > 50 else ""))
    return records


def _quote(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def query_evidence(settings: Settings, workflow: str, start_ms: int, until_ms: int | None, base: Any, cand: Any,
                   change_ts: int | None, tenant: str | None) -> tuple[Evidence, Evidence]:
    """Each side's evidence from ClickHouse, aggregated there (counts, sums, a latency
    histogram: any number of events), read-only through the worker's /query/ in embedded mode."""
    from llmpulse.processors.anomalies import ERROR_STATUSES, REFUSAL_STATUSES
    from llmpulse.processors.gate import LATENCY_BASE, Evidence
    from llmpulse.query import run_query

    where = [f"workflow = {_quote(workflow)}", f"ts >= fromUnixTimestamp64Milli(toInt64({int(start_ms)}))"]
    if until_ms is not None:
        where.append(f"ts < fromUnixTimestamp64Milli(toInt64({int(until_ms)}))")
    if tenant:
        where.append(f"tenant = {_quote(tenant)}")
    if cand.kind == "change":
        side = f"if(ts >= fromUnixTimestamp64Milli(toInt64({int(change_ts)})), 'c', 'b')"  # type: ignore[arg-type]
    else:
        side = f"if({cand.kind} = {_quote(cand.value)}, 'c', 'b')"
        where.append(f"{cand.kind} IN ({_quote(base.value)}, {_quote(cand.value)})")
    cond = " AND ".join(where)
    table = f"{settings.database}.events FINAL"
    errors = ", ".join(_quote(s) for s in sorted(ERROR_STATUSES))
    refusals = ", ".join(_quote(s) for s in sorted(REFUSAL_STATUSES))
    cost = "coalesce(price_usd, cost_usd)"
    sides = {"b": Evidence(), "c": Evidence()}
    for s, name, judged, passed, n, total, squares in run_query(settings, (
            f"SELECT {side} AS side, eval_name, countIf(passed IS NOT NULL), countIf(passed), countIf(score IS NOT NULL), "
            f"sumIf(score, score IS NOT NULL), sumIf(score * score, score IS NOT NULL) FROM {table} "
            f"WHERE event_type = 'eval' AND {cond} GROUP BY side, eval_name"))["rows"]:
        st = sides[s].eval(name)
        st.judged, st.passed = int(judged), int(passed)
        st.score.n, st.score.s, st.score.ss = int(n), float(total or 0), float(squares or 0)
    for s, calls, errs, refs, n, total, squares in run_query(settings, (
            f"SELECT {side} AS side, count(), countIf(status IN ({errors})), countIf(status IN ({refusals})), "
            f"countIf(status = 'ok' AND {cost} IS NOT NULL), sumIf({cost}, status = 'ok' AND {cost} IS NOT NULL), "
            f"sumIf({cost} * {cost}, status = 'ok' AND {cost} IS NOT NULL) FROM {table} "
            f"WHERE event_type = 'output' AND {cond} GROUP BY side"))["rows"]:
        ev = sides[s]
        ev.calls, ev.errors, ev.refusals = int(calls), int(errs), int(refs)
        ev.cost.n, ev.cost.s, ev.cost.ss = int(n), float(total or 0), float(squares or 0)
    for s, bucket, n in run_query(settings, (
            f"SELECT {side} AS side, toInt64(floor(log1p(latency_ms) / {LATENCY_BASE!r})) AS bucket, count() "
            f"FROM {table} WHERE event_type = 'output' AND status = 'ok' AND latency_ms IS NOT NULL AND {cond} "
            f"GROUP BY side, bucket"))["rows"]:
        sides[s].latency[int(bucket)] = int(n)
    return sides["b"], sides["c"]


def change_time(settings: Settings | None, records: list[GateRecord], change_id: str) -> int | None:
    """Event time of the change: from the records (a JSONL file may carry it), else ClickHouse."""
    for r in records:
        if r.event_type == "change" and r.event_id == change_id and r.ts is not None:
            return int(r.ts)
    if settings is None:
        return None
    from llmpulse.query import run_query

    rows = run_query(settings, f"SELECT toUnixTimestamp64Milli(ts) FROM {settings.database}.events FINAL WHERE "
                               f"event_type = 'change' AND event_id = {_quote(change_id)} LIMIT 1")["rows"]
    return int(rows[0][0]) if rows else None


# --- renderers ---------------------------------------------------------------------------------


def _fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "-"
    return f"{x:+.3f}" if pct else f"{x:.4g}"


def _ci(c: Any) -> str:
    if c.ci_low is None:
        return ""
    return f"[{c.ci_low:+.3f}, {c.ci_high:+.3f}]" if c.diff is not None else f"[{c.ci_low:.3f}, {c.ci_high:.3f}]"


def _rows(report: GateReport) -> list[list[str]]:
    return [[c.name, c.metric, c.verdict, f"{_fmt(c.baseline)} (n={c.n_baseline})",
             f"{_fmt(c.candidate)} (n={c.n_candidate})",
             (_fmt(c.diff, c.metric in ("pass_rate", "mean_score", "error_rate", "refusal_rate"))
              + (" " + _ci(c) if _ci(c) else "")), c.reason] for c in report.checks]


HEADERS = ["eval", "metric", "verdict", "baseline", "candidate", "difference [CI]", "why"]
_LABEL = {"pass": "PASS", "fail": "FAIL", "insufficient": "NOT ENOUGH EVIDENCE"}


def print_report(report: GateReport, console: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"eval gate {report.workflow}: {report.candidate} vs {report.baseline} "
                        f"({report.confidence:.0%} intervals)")
    for h in HEADERS:
        table.add_column(h, overflow="fold")  # CI logs are narrow: wrap, never cut an eval's name
    style = {"pass": "green", "fail": "red", "insufficient": "yellow", "info": "dim"}
    for row, c in zip(_rows(report), report.checks):
        table.add_row(*(Text(v, style=style[c.verdict] if i == 2 else "") for i, v in enumerate(row)))
    console.print(table)
    console.print(Text(f"decision: {_LABEL[report.decision]}",
                       style={"pass": "bold green", "fail": "bold red"}.get(report.decision, "bold yellow")))


def junit_xml(report: GateReport) -> bytes:
    """JUnit XML: one <testcase> per check; fail -> <failure>, not enough evidence -> <error>."""
    suite = ET.Element("testsuite", name=f"llmpulse gate {report.workflow}", tests=str(len(report.checks)),
                       failures=str(sum(c.verdict == "fail" for c in report.checks)),
                       errors=str(sum(c.verdict == "insufficient" for c in report.checks)))
    props = ET.SubElement(suite, "properties")
    for k in ("workflow", "baseline", "candidate", "decision"):
        ET.SubElement(props, "property", name=k, value=str(getattr(report, k)))
    for row, c in zip(_rows(report), report.checks):
        case = ET.SubElement(suite, "testcase", classname=f"llmpulse.gate.{report.workflow}", name=f"{c.name}.{c.metric}")
        detail = "; ".join(f"{h}: {v}" for h, v in zip(HEADERS[3:6], row[3:6]))
        if c.verdict == "fail":
            ET.SubElement(case, "failure", message=c.reason, type="gate_failed").text = detail
        elif c.verdict == "insufficient":
            ET.SubElement(case, "error", message=c.reason, type="not_enough_evidence").text = detail
        else:
            ET.SubElement(case, "system-out").text = f"{c.reason}; {detail}"
    # XML 1.0 has no way to write most control characters (an eval name may hold one): spelled out
    text = _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", ET.tostring(suite, encoding="unicode"))
    return b"<?xml version='1.0' encoding='utf-8'?>\n" + text.encode()


_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _md(text: str) -> str:
    """A table cell shown as written: GitHub renders HTML and code spans in a comment's table."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace("`", "\\`")
    return text.replace("|", "\\|").replace("\n", " ")


def _code(text: str) -> str:
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def markdown(report: GateReport) -> str:
    mark = {"pass": "✅", "fail": "❌", "insufficient": "⚠️"}[report.decision]
    lines = [f"### {mark} Eval gate `{report.workflow}`: {_LABEL[report.decision]}", "",
             f"Candidate `{report.candidate}` against baseline `{report.baseline}`, "
             f"{report.confidence:.0%} confidence intervals.", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(_md(v) for v in row) + " |" for row in _rows(report)]
    failing = report.failing()
    if failing:
        lines += ["", "Failing: " + ", ".join(f"{_code(c.name.replace(chr(10), ' '))} ({c.metric})" for c in failing)]
    return "\n".join(lines) + "\n"


def gate_event(report: GateReport, gate_id: str, tenant: str, actor: str = "") -> dict:
    """The decision as a contract `change` of kind eval_gate."""
    failing = report.failing()
    return {"event_type": "change", "event_id": gate_id, "ts": time.time_ns() // 1_000_000,
            "tenant": tenant, "workflow": report.workflow, "change_kind": "eval_gate", "actor": actor,
            "from_value": report.baseline, "to_value": report.candidate, "gate_result": report.decision,
            "description": f"eval gate {report.decision}: {len(report.checks)} checks, {len(failing)} failing",
            "attributes": {"failing": ",".join(f"{c.name}.{c.metric}" for c in failing)[:1000],
                           "confidence": str(report.confidence),
                           "evals_candidate": str(sum(c.n_candidate for c in report.checks if c.metric == "pass_rate")),
                           "evals_baseline": str(sum(c.n_baseline for c in report.checks if c.metric == "pass_rate"))}}


# --- the command ---------------------------------------------------------------------------------


def run_gate(settings: Settings, workflow: str, candidate: str, baseline: str | None, evals: list[Path],
             since: str | None, until: str | None, tenant: str | None, notes: list[str] | None = None) -> GateReport:
    """Gather the evidence and decide. Raises GateInputError (or QueryError) for the user;
    `notes` gets a line per side no evidence matched (a mistyped version is the likely cause)."""
    from llmpulse.processors.gate import Side, evaluate, split_sides, summarize

    try:
        cand = Side.parse(candidate)
        base = Side.parse(baseline) if baseline else None
        start = since_ms(since) if since else None
        end = since_ms(until) if until else None
    except ValueError as exc:
        raise GateInputError(str(exc)) from None
    if cand.kind != "change" and base is None:
        raise GateInputError("--baseline is needed unless the candidate is change:ID")
    if not evals and start is None:
        raise GateInputError("no evidence: give --evals FILE, --since TIME (ClickHouse), or both")
    records, ids = [], set()
    read = read_jsonl(evals)
    for r in read:  # one result per event id, as ClickHouse's FINAL counts the stored ones
        if not r.event_id or r.event_id not in ids:
            ids.add(r.event_id)
            records.append(r)
    if notes is not None and len(read) > len(records):
        notes.append(f"{len(read) - len(records)} results repeat an event_id already read: counted once")
    change_ts = change_time(settings if start is not None else None, records, cand.value) if cand.kind == "change" else None
    try:
        b, c = split_sides(records, base, cand, change_ts)
    except ValueError as exc:
        if start is None or records:
            raise GateInputError(str(exc)) from None
        b, c = [], []  # ClickHouse alone: its side of the split is below
    eb, ec = summarize(b), summarize(c)
    if start is not None:
        if cand.kind == "change" and change_ts is None:
            raise GateInputError(f"change {cand.value} is not among the stored change events")
        qb, qc = query_evidence(settings, workflow, start, end, base, cand, change_ts, tenant)
        eb.merge(qb)
        ec.merge(qc)
    base_name = str(base) if base else f"before {cand}"
    if notes is not None:
        for label, side, ev in (("candidate", cand, ec), ("baseline", base, eb)):
            if side is not None and side.kind != "change" and not ev.evals and not ev.calls:
                seen = sorted({v for r in records if r.event_type != "change" and (v := getattr(r, side.kind))})
                notes.append(f"no eval or output matched {label} {side}"
                             + (f"; {side.kind} values seen: {', '.join(seen[:10])}" if seen else ""))
    return evaluate(settings.eval_gate.rule_for(workflow), workflow, base_name, str(cand), eb, ec)


def gate_command(
    workflow: Annotated[str, typer.Argument(help="the workflow whose eval_gate rule applies")],
    candidate: Annotated[str, typer.Option("--candidate", help="prompt:VERSION, model:NAME or change:ID")],
    baseline: Annotated[Optional[str], typer.Option("--baseline", help="prompt:VERSION or model:NAME "
                                                    "(a change's baseline is before it)")] = None,
    evals: Annotated[Optional[list[Path]], typer.Option("--evals", help="JSONL of eval results (repeatable)")] = None,
    since: Annotated[Optional[str], typer.Option("--since", help="also read ClickHouse from: 7d, 12h, ISO 8601, epoch ms")] = None,
    until: Annotated[Optional[str], typer.Option("--until", help="... up to (default now)")] = None,
    tenant: Annotated[Optional[str], typer.Option("--tenant", help="only this tenant's events")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table | json")] = "table",
    junit: Annotated[Optional[Path], typer.Option("--junit", help="write a JUnit XML report here")] = None,
    md: Annotated[Optional[Path], typer.Option("--markdown", help="write a Markdown summary here")] = None,
    publish: Annotated[bool, typer.Option("--publish", help="record the decision as an eval_gate change event")] = False,
    gate_id: Annotated[Optional[str], typer.Option("--gate-id", help="event id of the published decision")] = None,
    actor: Annotated[str, typer.Option("--actor", help="who ran the gate, for the published decision "
                                                        "(e.g. $GITHUB_ACTOR)")] = "",
) -> None:
    """Compare a candidate with its baseline on evals (and cost, latency, errors); exit non-zero when worse."""
    from rich.console import Console

    from rich.text import Text

    from llmpulse.cli import _settings
    from llmpulse.query import QueryError

    console = Console(stderr=fmt == "json")
    err = Console(stderr=True)
    if fmt not in ("table", "json"):
        err.print("--format must be table or json")
        raise typer.Exit(EXIT_USAGE)
    try:
        settings = _settings()
        notes: list[str] = []
        report = run_gate(settings, workflow, candidate, baseline, list(evals or []), since, until, tenant, notes)
    except (GateInputError, QueryError, FileNotFoundError) as exc:
        err.print(Text(f"gate: {exc}", style="red"), soft_wrap=True)
        raise typer.Exit(EXIT_USAGE)
    except ValueError as exc:  # the settings file: pydantic's message names the entry
        err.print(f"gate: config: {exc}", soft_wrap=True, markup=False)
        raise typer.Exit(EXIT_USAGE)
    for note in notes:
        err.print(Text(f"gate: {note}", style="yellow"), soft_wrap=True)
    if fmt == "json":
        typer.echo(json.dumps(report.to_dict(), indent=2, allow_nan=False))
    else:
        print_report(report, console)
    for flag, path, write in (("--junit", junit, lambda p: p.write_bytes(junit_xml(report))),
                              ("--markdown", md, lambda p: p.write_text(markdown(report)))):
        try:
            if path:
                write(path)
        except OSError as exc:  # 1 would say "the candidate is worse": this is the caller's path
            err.print(Text(f"gate: cannot write {flag} {path}: {exc.strerror or exc}", style="red"), soft_wrap=True)
            raise typer.Exit(EXIT_USAGE)
    if publish:
        gid = gate_id or f"gate-{uuid.uuid4().hex[:24]}"
        if not _publish(settings, gate_event(report, gid, tenant or "default", actor), err):
            raise typer.Exit(EXIT_UNPUBLISHED)
        err.print(f"published gate decision {gid} (put it in the change's gate_id)")
    raise typer.Exit(report.exit_code)


def _publish(settings: Settings, event: dict, err: Any) -> bool:
    from llmpulse.ingest import KafkaPublisher

    pub = KafkaPublisher.from_settings(settings)
    try:
        pub.publish(event)
        remaining = pub.flush(15)
    finally:
        pub.close(1)
    if remaining or pub.stats.failed or not pub.stats.delivered:
        err.print(f"gate: the decision was not delivered to {settings.kafka_bootstrap} (stats {pub.stats})")
        return False
    return True
