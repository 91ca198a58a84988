"""`llmpulse control ...`: kill switches by hand, and what is active (schemas/controls.py).

    llmpulse control pause --workflow support-bot --reason "refund loop" --for 30m
    llmpulse control resume --workflow support-bot
    llmpulse control halt --trace 4bf92f35... --reason "stuck"
    llmpulse control disable-tool issue_refund --reason "provider outage"
    llmpulse control route --model gpt-4o --to gpt-4o-mini --workflow support-bot --reason "5xx"
    llmpulse control approve --trace 4bf92f35... --tool issue_refund
    llmpulse control lift 3f2a... --reason "fixed"
    llmpulse control list [--all]
    llmpulse control pending [--since 24h]
    llmpulse control forget [--ended-before 7d]
    llmpulse control authority [WORKFLOW]

Who acts: `--actor`, else $LLMPULSE_ACTOR. Each command publishes one record per action to
`llm.controls` (created compacted if missing) and waits for the broker to take it; every
running app with the SDK applies it within a poll (ingest/controls.py).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from llmpulse.ingest.controls import ControlState
    from llmpulse.schemas.controls import ControlAction
    from llmpulse.settings import Settings

control_app = typer.Typer(no_args_is_help=True, help="Kill switches: halt, pause, route, disable tools; list what is active.")
console = Console()

Actor = Annotated[Optional[str], typer.Option("--actor", envvar="LLMPULSE_ACTOR", show_envvar=True,
                                              help="who acts (recorded in the audit)")]
Reason = Annotated[str, typer.Option("--reason", "-r", help="why (recorded, shown to the app)")]
For = Annotated[Optional[str], typer.Option("--for", help="expires after this long: 90s, 30m, 2h, 7d (default: until lifted)")]
Tenant = Annotated[str, typer.Option(help="only this tenant (default: every tenant)")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="decide and record, but let calls through")]


_QUIET = {"log_level": 0}  # the command says what went wrong in one line; librdkafka stays silent


class ControlCommandError(Exception):
    """A user mistake or an unreachable broker: one line, exit 1."""


def _settings() -> "Settings":
    from llmpulse.cli import _settings as load

    return load()


def _fail(message: str) -> None:
    console.print(Text(message, style="red"), soft_wrap=True)
    raise typer.Exit(1)


# -- reading and publishing -----------------------------------------------------------------

def read_state(s: "Settings", timeout: float = 10.0) -> "ControlState":
    from llmpulse.ingest.controls import read_all

    state, complete = read_all(s.kafka_bootstrap, s.controls_topic, timeout=timeout, consumer_config=_QUIET)
    if not complete:
        raise ControlCommandError(f"could not read {s.controls_topic} from {s.kafka_bootstrap} within {timeout:g}s "
                                  "(is the broker up?)")
    return state


def publish(s: "Settings", actions: list["ControlAction"], timeout: float = 10.0, forget: tuple[str, ...] = ()) -> None:
    """Publish records to llm.controls (and a tombstone for each key in `forget`) and wait
    until the broker has every one."""
    from confluent_kafka import KafkaException, Producer

    from llmpulse.kafka.topics import CONTROLS_TOPIC_CONFIG, ensure_topics
    from llmpulse.schemas.controls import encode_action, scope_key

    try:
        ensure_topics(s.kafka_bootstrap, {s.controls_topic: 1}, timeout=timeout,
                      configs={s.controls_topic: CONTROLS_TOPIC_CONFIG}, client_config=_QUIET)
    except KafkaException as exc:
        raise ControlCommandError(f"cannot reach the broker at {s.kafka_bootstrap}: {exc.args[0].str()}") from None
    failures: list[str] = []
    producer = Producer({**_QUIET, "bootstrap.servers": s.kafka_bootstrap, "enable.idempotence": True,
                         "message.timeout.ms": int(timeout * 1000)})
    records = [(scope_key(a), encode_action(a)) for a in actions] + [(k, None) for k in forget]
    for key, value in records:
        producer.produce(s.controls_topic, value, key.encode(),
                         on_delivery=lambda err, _m: err is not None and failures.append(str(err)))
    left = producer.flush(timeout + 1)
    if failures or left:
        raise ControlCommandError(f"the broker at {s.kafka_bootstrap} did not take the action: "
                                  f"{failures[0] if failures else 'timed out'}")


def _now() -> int:
    return time.time_ns() // 1_000_000


def _actor(actor: str | None) -> str:
    if not actor or not actor.strip():
        raise ControlCommandError("say who acts: --actor NAME or LLMPULSE_ACTOR=NAME")
    return actor.strip()


def _create(kind: str, *, reason: str, actor: str | None, duration: str | None, dry_run: bool = False,
            route_to: str = "", **scope: str) -> None:
    from llmpulse.schemas.controls import ControlError, new_action, parse_duration

    try:
        who = _actor(actor)
        at = _now()
        expires = expires_at(at, duration)
        a = new_action(kind, reason=reason, at=at, actor=who, expires_at=expires, route_to=route_to,
                       mode="dry_run" if dry_run else "enforce", **{k: v for k, v in scope.items() if v})
        s = _settings()
        if kind == "approve":
            _check_approver(s, a)
        publish(s, [*_superseded(s, a), a])
    except (ControlError, ControlCommandError) as exc:
        _fail(str(exc))
    console.print(f"{kind} {_scope_text(a)}: action [bold]{a.action_id}[/bold]"
                  + (f", expires {_when(a.expires_at)}" if a.expires_at else ", until lifted")
                  + (" (dry run)" if dry_run else ""))


def _superseded(s: "Settings", a: "ControlAction") -> list["ControlAction"]:
    """A person's new action on a scope replaces the active one of the same key in every reader
    (compaction keeps the latest record); its lift record says so, or the audit would keep it active."""
    from llmpulse.schemas.controls import lift, scope_key

    old = read_state(s).by_key.get(scope_key(a))
    if old is None or old.action_id == a.action_id:
        return []
    return [lift(old, by=a.actor, reason=f"superseded by {a.action_id}", at=a.created_at)]


def expires_at(at: int, duration: str | None) -> int | None:
    """`--for`: None (not given) is until lifted; any text given must be a duration ending before 2100."""
    from llmpulse.schemas.contract import MAX_TS_MS
    from llmpulse.schemas.controls import ControlError, parse_duration

    if duration is None:
        return None
    end = at + parse_duration(duration)
    if end > MAX_TS_MS:
        raise ControlError(f"duration {duration!r} is too long: it would end after 2100")
    return end


def _check_approver(s: "Settings", a: "ControlAction") -> None:
    from llmpulse.processors.contracts import ContractsConfig

    approvers = ContractsConfig.from_config(s.contracts).for_workflow(a.workflow).approvers if a.workflow else ()
    if approvers and a.actor not in approvers:
        raise ControlCommandError(f"{a.actor} is not an approver of {a.workflow} (approvers: {', '.join(approvers)})")


def _lift(predicate, what: str, reason: str, actor: str | None, unique: bool = False) -> None:
    from llmpulse.schemas.controls import lift

    try:
        who = _actor(actor)
        s = _settings()
        state = read_state(s)
        now = _now()
        targets = [a for a in state.active(now) if predicate(a)]
        if not targets:
            raise ControlCommandError(f"nothing active matches {what}")
        if unique and len(ids := sorted({a.action_id for a in targets})) > 1:  # a prefix that is not one action's
            raise ControlCommandError(f"{what} is ambiguous, give more of the id: {', '.join(ids)}")
        publish(s, [lift(a, by=who, reason=reason, at=now) for a in targets])
    except ControlCommandError as exc:
        _fail(str(exc))
    for a in targets:
        console.print(f"lifted {a.kind} {_scope_text(a)} (action {a.action_id})")


# -- commands -------------------------------------------------------------------------------

@control_app.command("halt")
def halt(trace: Annotated[str, typer.Option("--trace", help="the trace_id of the run to stop")],
         reason: Reason, actor: Actor = None, duration: For = None, tenant: Tenant = "",
         workflow: Annotated[str, typer.Option(help="the trace's workflow (for the audit)")] = "",
         dry_run: DryRun = False) -> None:
    """Stop one running agent: its further model and tool calls are refused."""
    _create("halt_trace", reason=reason, actor=actor, duration=duration, dry_run=dry_run,
            trace_id=trace, tenant=tenant, workflow=workflow)


@control_app.command("pause")
def pause(workflow: Annotated[str, typer.Option(help="the workflow to pause")], reason: Reason,
          actor: Actor = None, duration: For = None, tenant: Tenant = "", dry_run: DryRun = False) -> None:
    """Refuse new model and tool calls of a workflow (one tenant's, or everyone's)."""
    _create("pause_workflow", reason=reason, actor=actor, duration=duration, dry_run=dry_run,
            workflow=workflow, tenant=tenant)


@control_app.command("resume")
def resume(workflow: Annotated[str, typer.Option(help="the paused workflow")],
           tenant: Annotated[str, typer.Option(help="only this tenant's pause (default: every pause of it)")] = "",
           reason: Annotated[str, typer.Option("--reason", "-r")] = "", actor: Actor = None) -> None:
    """Lift the pauses of a workflow."""
    _lift(lambda a: a.kind == "pause_workflow" and a.workflow == workflow and (not tenant or a.tenant == tenant),
          f"pause_workflow {workflow}" + (f" of tenant {tenant}" if tenant else ""), reason, actor)


@control_app.command("disable-tool")
def disable_tool(tool: Annotated[str, typer.Argument(help="the tool's name")], reason: Reason,
                 workflow: Annotated[str, typer.Option(help="only in this workflow (default: everywhere)")] = "",
                 actor: Actor = None, duration: For = None, tenant: Tenant = "", dry_run: DryRun = False) -> None:
    """Refuse calls of a tool."""
    _create("disable_tool", reason=reason, actor=actor, duration=duration, dry_run=dry_run,
            tool=tool, workflow=workflow, tenant=tenant)


@control_app.command("route")
def route(model: Annotated[str, typer.Option(help="the model to stop using")],
          to: Annotated[str, typer.Option("--to", help="the model to use instead")], reason: Reason,
          workflow: Annotated[str, typer.Option(help="only in this workflow (default: every workflow)")] = "",
          actor: Actor = None, duration: For = None, tenant: Tenant = "", dry_run: DryRun = False) -> None:
    """Use another model instead of MODEL."""
    _create("route_model", reason=reason, actor=actor, duration=duration, dry_run=dry_run, route_to=to,
            model=model, workflow=workflow, tenant=tenant)


@control_app.command("require-approval")
def require_approval(reason: Reason,
                     workflow: Annotated[str, typer.Option(help="only in this workflow")] = "",
                     tool: Annotated[str, typer.Option(help="this tool (default: every write/irreversible call)")] = "",
                     actor: Actor = None, duration: For = None, tenant: Tenant = "", dry_run: DryRun = False) -> None:
    """Hold write/irreversible tool calls (or one tool's) until a person approves them."""
    _create("require_approval", reason=reason, actor=actor, duration=duration, dry_run=dry_run,
            workflow=workflow, tool=tool, tenant=tenant)


@control_app.command("block-spend")
def block_spend(reason: Reason, workflow: Annotated[str, typer.Option()] = "",
                user_id: Annotated[str, typer.Option("--user-id")] = "", model: Annotated[str, typer.Option()] = "",
                actor: Actor = None, duration: For = None, tenant: Tenant = "", dry_run: DryRun = False) -> None:
    """Refuse model calls of a scope (a tenant, workflow, model or user)."""
    _create("block_spend", reason=reason, actor=actor, duration=duration, dry_run=dry_run,
            workflow=workflow, user_id=user_id, model=model, tenant=tenant)


@control_app.command("approve")
def approve(trace: Annotated[str, typer.Option("--trace", help="the run waiting for approval")],
            tool: Annotated[str, typer.Option(help="only this tool (default: every held call of the run)")] = "",
            workflow: Annotated[str, typer.Option(help="the trace's workflow (checks its approvers)")] = "",
            reason: Annotated[str, typer.Option("--reason", "-r")] = "approved",
            actor: Actor = None, duration: Annotated[str, typer.Option("--for")] = "1h") -> None:
    """Approve the held tool calls of one run (the app records approved_by = you)."""
    _create("approve", reason=reason, actor=actor, duration=duration, trace_id=trace, tool=tool, workflow=workflow)


@control_app.command("lift")
def lift_command(action_id: Annotated[str, typer.Argument(help="the action's id (or a unique prefix)")],
                 reason: Annotated[str, typer.Option("--reason", "-r")] = "", actor: Actor = None) -> None:
    """Lift one action by its id."""
    if len(action_id) < 4:
        _fail("give at least 4 characters of the action id")
    _lift(lambda a: a.action_id.startswith(action_id), f"action {action_id}", reason, actor, unique=True)


@control_app.command("list")
def list_command(all_: Annotated[bool, typer.Option("--all", help="ended actions too")] = False,
                 workflow: Annotated[Optional[str], typer.Option(help="only actions that apply to it")] = None) -> None:
    """The active kill switches (and, with --all, the lifted and expired ones still on the topic)."""
    try:
        state = read_state(_settings())
    except ControlCommandError as exc:
        _fail(str(exc))
    now = _now()
    rows = state.active(now) + (list((state.ended or {}).values()) if all_ else [])
    if workflow is not None:
        rows = [a for a in rows if a.workflow in ("", workflow)]
    console.print(actions_table(rows, now, title="Kill switches" + (" (all)" if all_ else " active"), with_state=all_))


@control_app.command("forget")
def forget_command(ended_before: Annotated[str, typer.Option("--ended-before", help="ended longer ago than: 7d, 12h")] = "7d",
                   dry_run: Annotated[bool, typer.Option("--dry-run", help="only say which keys would go")] = False) -> None:
    """Tombstone the keys of actions that ended (lifted or expired) longer ago than
    --ended-before, so the compacted topic every app reads at start stays the size of what is
    live (a halt per looping trace is a key each). Their history stays in `control_audit`."""
    from llmpulse.commands.gate import duration_ms
    from llmpulse.schemas.controls import is_active

    age = duration_ms(ended_before)
    if age is None:
        _fail(f"--ended-before: not a duration like 7d or 12h: {ended_before!r}")
    try:
        s = _settings()
        state = read_state(s)
        now = _now()
        cutoff = now - age
        ended = {k: a.updated_at for k, a in (state.ended or {}).items()}
        ended |= {k: a.expires_at for k, a in state.by_key.items()
                  if a.expires_at is not None and not is_active(a, now)}
        keys = tuple(sorted(k for k, at in ended.items() if at < cutoff))
        if keys and not dry_run:
            publish(s, [], forget=keys)
    except ControlCommandError as exc:
        _fail(str(exc))
    verb = "would forget" if dry_run else "forgot"
    console.print(f"{verb} {len(keys)} ended action key(s) (ended before {_when(cutoff)}); "
                  f"{len(ended) - len(keys)} ended more recently kept")


@control_app.command("pending")
def pending_command(since: Annotated[str, typer.Option(help="held since: 30m, 12h, 7d, or a time")] = "24h",
                    workflow: Annotated[Optional[str], typer.Option(help="only this workflow")] = None,
                    limit: Annotated[int, typer.Option(min=1, max=10_000)] = 200) -> None:
    """Tool calls held for approval that no approval has answered yet, newest first, with the
    command that approves each (read from the stored decisions and the live actions)."""
    from llmpulse.commands.gate import since_ms
    from llmpulse.query import QueryError

    try:
        s = _settings()
        start = since_ms(since)
        held = held_for_approval(s, start, workflow, limit)
        state = read_state(s)
    except (ValueError, QueryError, ControlCommandError) as exc:
        _fail(str(exc))
    approvals = [a for a in [*state.by_key.values(), *(state.ended or {}).values()] if a.kind == "approve"]
    waiting = [h for h in held if not answered(h, approvals)]
    table = Table(title=f"Held for approval, unanswered ({len(waiting)})")
    for col in ("tenant", "workflow", "trace", "tool", "held", "last held", "approve with"):
        table.add_column(col)
    now = _now()
    for h in waiting:
        cmd = (f"llmpulse control approve --trace {h['trace_id']}" + (f" --tool {h['tool_name']}" if h["tool_name"] else "")
               + (f" --workflow {h['workflow']}" if h["workflow"] else ""))
        table.add_row(*(Text(str(x)) for x in (h["tenant"], h["workflow"], h["trace_id"], h["tool_name"], h["held"],
                                                 _ago(h["last"], now), cmd)))
    console.print(table)


def held_for_approval(s: "Settings", start: int, workflow: str | None, limit: int) -> list[dict]:
    """Per (tenant, workflow, trace, tool): how many calls the SDK held since `start`, and when last."""
    from llmpulse.commands.gate import _quote
    from llmpulse.query import run_query

    where = ["event_type = 'decision'", "decision = 'needs_approval'", "control_mode = 'enforce'",
             f"ts >= fromUnixTimestamp64Milli(toInt64({int(start)}))"]
    if workflow:
        where.append(f"workflow = {_quote(workflow)}")
    sql = (f"SELECT tenant, workflow, trace_id, tool_name, sum(decision_count), "
           f"toUnixTimestamp64Milli(max(coalesce(last_decision_ts, ts))) AS last "
           f"FROM {s.database}.events FINAL WHERE {' AND '.join(where)} "
           f"GROUP BY tenant, workflow, trace_id, tool_name ORDER BY last DESC LIMIT {int(limit)}")
    names = ("tenant", "workflow", "trace_id", "tool_name", "held", "last")
    return [dict(zip(names, r)) for r in run_query(s, sql)["rows"]]


def answered(held: dict, approvals: list["ControlAction"]) -> bool:
    """An approval of the trace (for this tool, or every tool) given after the last hold."""
    return any(a.trace_id == held["trace_id"] and a.tool in ("", held["tool_name"])
               and a.tenant in ("", held["tenant"]) and a.created_at >= int(held["last"]) for a in approvals)


def actions_table(actions: list["ControlAction"], now: int, title: str | None = None,
                  with_state: bool = False) -> Table:
    table = Table(title=title)
    table.add_column("id", no_wrap=True)
    for col in ("kind", "scope", "by", "reason", "since", "expires") + (("state",) if with_state else ()):
        table.add_column(col)
    for a in sorted(actions, key=lambda a: a.created_at, reverse=True):
        state = a.state if a.state != "active" or a.expires_at is None or now < a.expires_at else "expired"
        by = a.actor if a.source == "person" else f"policy {a.policy}".strip() + f" (finding {a.finding_id[:12]})"
        kind = a.kind + (" (dry run)" if a.mode == "dry_run" else "")
        row = [a.action_id, kind, _scope_text(a), by, a.reason, _ago(a.created_at, now),
               _ago(a.expires_at, now) if a.expires_at else "until lifted"]
        if with_state:
            row.append(state + (f" by {a.ended_by}" if a.ended_by and a.ended_by != "expiry" else ""))
        table.add_row(*(Text(x) for x in row))
    return table


@control_app.command("authority")
def authority(workflow: Annotated[Optional[str], typer.Argument(help="one workflow (default: every declared one)")] = None) -> None:
    """The one-page authority and rollback view: owner, tools, approvers, fallback, active switches."""
    from llmpulse.processors.contracts import ContractsConfig

    s = _settings()
    try:
        contracts = ContractsConfig.from_config(s.contracts)
    except ValueError as exc:
        _fail(f"contracts: {exc}".replace("\n", " "))
    try:
        state = read_state(s)
        active, note = state.active(_now()), ""
    except ControlCommandError as exc:
        active, note = [], f"(active switches unknown: {exc})"
    names = [workflow] if workflow else sorted(set(contracts.contracts) | set(s.governance.workflows)) or ["*"]
    for name in names:
        console.print(authority_view(name, contracts, active, note, s.governance, s.retention_days))


def authority_view(workflow: str, contracts, active: list["ControlAction"], note: str = "",
                   governance=None, retention_days: int | None = None) -> Table:
    c = contracts.for_workflow(workflow)
    declared = workflow in contracts.contracts or (governance is not None and workflow in governance.workflows)
    t = Table(title=f"{workflow}: authority and rollback" + ("" if declared else " (no contract: defaults)"),
              show_header=False, title_justify="left")
    t.add_column("", style="bold")
    t.add_column("")
    fb = c.fallback
    rows = [
        ("owner", c.owner or "-"),
        ("allowed tools", "any" if c.allowed_tools is None else ", ".join(c.allowed_tools) or "none"),
        ("irreversible tools", ", ".join(c.irreversible_tools) or "none by name (side_effect irreversible needs approval)"),
        ("approvers", ", ".join(c.approvers) or "anyone"),
        ("fallback", "none" if fb is None else
         " / ".join(x for x in (f"model {fb.model}" if fb.model else "", f"reply {fb.reply!r}" if fb.reply else "") if x)),
        ("controls stale", f"fail {c.fail_mode}"),
        ("limits", f"{c.max_steps or '-'} steps, ${c.max_cost_usd or '-'} and {c.max_tokens or '-'} tokens per trace"),
    ]
    if governance is not None:
        rows.extend(_governance_rows(workflow, governance, retention_days))
    mine = [a for a in active if a.workflow in ("", workflow)]
    halts = [a for a in mine if a.kind == "halt_trace"]
    switches = [f"{a.kind} {_scope_text(a)} ({a.mode}, by {a.actor or 'policy ' + a.policy}, "
                f"{'until ' + _when(a.expires_at) if a.expires_at else 'until lifted'}): {a.reason}  [{a.action_id}]"
                for a in mine if a.kind != "halt_trace"]
    if halts:
        switches.append(f"{len(halts)} halted trace(s): " + ", ".join(a.trace_id[:16] for a in halts[:5])
                        + (" ..." if len(halts) > 5 else ""))
    rows.append(("active switches", note or ("\n".join(switches) if switches else "none")))
    rows.append(("rollback", f"llmpulse control pause --workflow {workflow} --reason ...   |   "
                             f"llmpulse control resume --workflow {workflow}"))
    for k, v in rows:
        t.add_row(k, Text(v))
    return t


def _governance_rows(workflow: str, governance, retention_days: int | None) -> list[tuple[str, str]]:
    """Issue 17's part of the page: who approves which change, which models, what is logged and for how long."""
    g = governance.for_workflow(workflow)
    approvals = ", ".join(f"{kind}: {' '.join(a.approvers)}{' + passing eval gate' if a.require_gate else ''}"
                          for kind, a in sorted((g.approvals if g else {}).items())) or "not governed"
    lists = governance.model_lists(workflow)
    models = "; ".join(f"{' '.join(m.models)} (owner {m.owner})" for m in lists) or "any"
    content = g.content if g else None
    capture = ("full" if content is None or content.capture == "full" else
               f"sampled, {content.rate:g} of traces" if content.capture == "sampled" else "metadata only (no text)")
    days = g.retention_days if g and g.retention_days else retention_days
    return [("change approvals", approvals), ("approved models", models), ("content capture", capture),
            ("retention", f"{days} days" if days else "-")]


def _scope_text(a: "ControlAction") -> str:
    from llmpulse.schemas.controls import SCOPE_FIELDS

    parts = [f"{f}={getattr(a, f)}" for f in SCOPE_FIELDS if getattr(a, f)]
    if a.route_to:
        parts.append(f"-> {a.route_to}")
    return " ".join(parts) or "everywhere"


def _ago(ms: int, now: int) -> str:
    d = abs(ms - now) / 1000
    span = f"{d / 86400:.1f}d" if d >= 86400 * 2 else f"{d / 3600:.1f}h" if d >= 3600 else f"{d / 60:.0f}m" if d >= 60 else f"{d:.0f}s"
    return f"in {span}" if ms > now else f"{span} ago"


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ms / 1000)) + f" ({_ago(ms, _now())})"
