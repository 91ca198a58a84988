"""The eval gate: is a candidate (prompt version, model, change) no worse than its baseline?

Pure: rules, records, statistics and the decision; the CLI (`llmpulse gate`,
llmpulse/commands/gate.py) reads ClickHouse and JSONL files and renders the result.

Config (`eval_gate:` in the llmpulse YAML, workflow -> rule, beside `contracts:`)::

    eval_gate:
      support-bot:
        min_evals: 100            # per eval name and side; fewer: "not enough evidence"
        max_drop: 0.03            # pass rate may fall at most this much (absolute)
        min_pass_rate: 0.85       # the candidate's pass rate, at least
        max_score_drop: 0.05      # mean score may fall at most this much (evals with a score)
        confidence: 0.95          # two-sided level of every interval
        evals:                    # per eval name, the same four keys
          faithfulness: {max_drop: 0.01}
        required_evals: [faithfulness]   # must be present on both sides
        # operational, from the output events of both sides
        min_calls: 50
        max_cost_ratio: 1.2       # cost per call, candidate / baseline
        max_p95_latency_ms: 8000
        max_p95_latency_ratio: 1.5
        max_error_rate: 0.05
        max_error_rate_increase: 0.02
        max_refusal_rate_increase: 0.02
      "*": {min_evals: 50}        # optional: rule of workflows not listed

The decision per eval name, with d = candidate - baseline pass rate and [lo, hi] its
Newcombe hybrid-score interval (two Wilson intervals; sound at rates near 0 or 1 and at
unequal sizes, where the Wald interval is not):

    fewer than min_evals on either side          -> insufficient
    d < -max_drop (the drop is likely too large) -> fail
    lo >= -max_drop (no larger drop is plausible) -> pass
    otherwise (cannot rule out a larger drop)    -> insufficient

so a small sample never passes silently. `min_pass_rate` fails on the point estimate
(printed with its Wilson interval); mean scores use Welch's t interval (Welch-Satterthwaite
degrees of freedom, at least 3 scores a side) the same way as pass rates. Operational checks compare point estimates (error and refusal differences
with their Newcombe intervals printed; p95 latency from a 1 % log-bucket histogram) and
need `min_calls` calls per side. Evidence is counts and sums per side (`Evidence`), so a
file's and ClickHouse's merge and ClickHouse aggregates any number of events. The gate
is `fail` if any check fails, else `insufficient` if any check lacks evidence (or there
are no evals at all, or no check is gated: scores without `max_score_drop`), else `pass`.

The stream uses the same thresholds (`stream_overrides`): a workflow's `max_drop` is its
`eval_regression` and `regression_after_change` eval drop, `max_error_rate_increase` /
`max_refusal_rate_increase` its change rate delta, `max_cost_ratio` /
`max_p95_latency_ratio` its change ratio. Only keys the rule (or `"*"`, for every workflow
without a rule: `stream_defaults`) sets; an explicit `anomalies:` entry for the same workflow
and key wins.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from statistics import NormalDist
from typing import Any, Iterable, Literal, Sequence

import msgspec
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, RootModel, field_validator, model_validator

from llmpulse.processors.anomalies import ERROR_STATUSES, REFUSAL_STATUSES
from llmpulse.processors.anomalies.stats import Moments  # the stream's own: one mean-and-variance summary

DEFAULT_KEY = "*"
Verdict = Literal["pass", "fail", "insufficient", "info"]
Decision = Literal["pass", "fail", "insufficient"]
EXIT_CODES: dict[str, int] = {"pass": 0, "fail": 1, "insufficient": 3}  # 2 is a usage error


# --- configuration ------------------------------------------------------------------------


class EvalRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    min_evals: PositiveInt = 30
    max_drop: float = Field(0.05, ge=0, le=1)
    min_pass_rate: float | None = Field(None, ge=0, le=1)
    max_score_drop: float | None = Field(None, ge=0)


class GateRule(EvalRule):
    confidence: float = Field(0.95, gt=0.5, lt=1)
    evals: dict[str, EvalRule] = {}
    required_evals: tuple[str, ...] = ()
    min_calls: PositiveInt = 30
    max_cost_ratio: float | None = Field(None, gt=0)
    max_p95_latency_ms: float | None = Field(None, gt=0)
    max_p95_latency_ratio: float | None = Field(None, gt=0)
    max_error_rate: float | None = Field(None, ge=0, le=1)
    max_error_rate_increase: float | None = Field(None, ge=0, le=1)
    max_refusal_rate_increase: float | None = Field(None, ge=0, le=1)

    @model_validator(mode="before")
    @classmethod
    def _per_eval_inherits(cls, data: Any) -> Any:
        # A per-eval entry names only what differs; the rest comes from the workflow rule.
        if isinstance(data, dict) and isinstance(data.get("evals"), dict):
            base = {k: data[k] for k in EvalRule.model_fields if k in data}
            evals = {}
            for name, rule in data["evals"].items():
                if rule is not None and not isinstance(rule, dict):
                    raise ValueError(f"evals.{name} must be a mapping of {sorted(EvalRule.model_fields)}")
                evals[name] = {**base, **(rule or {})}
            data = {**data, "evals": evals}
        return data

    def for_eval(self, name: str) -> EvalRule:
        return self.evals.get(name, self)

    @property
    def z(self) -> float:
        return NormalDist().inv_cdf(0.5 + self.confidence / 2)


class GateConfig(RootModel[dict[str, GateRule]]):
    """The `eval_gate:` section: workflow -> rule; `"*"` for workflows not listed."""

    model_config = ConfigDict(frozen=True)
    root: dict[str, GateRule] = {}

    @field_validator("root", mode="before")
    @classmethod
    def _empty_rules(cls, data: Any) -> Any:
        if data is None:
            return {}
        if isinstance(data, dict):  # `support-bot:` with nothing under it: the defaults
            return {wf: ({} if r is None else r) for wf, r in data.items()}
        return data

    def rule_for(self, workflow: str) -> GateRule:
        return self.root.get(workflow) or self.root.get(DEFAULT_KEY) or _DEFAULT_RULE


_DEFAULT_RULE = GateRule()
_STREAM_KEYS = {  # gate key -> the anomaly detector's keys it sets (processors/anomalies.py)
    "max_drop": ("eval_min_drop", "change_eval_drop"),
    "max_error_rate_increase": ("change_rate_delta",),
    "max_refusal_rate_increase": ("change_rate_delta",),
    "max_cost_ratio": ("change_ratio",),
    "max_p95_latency_ratio": ("change_ratio",),
}


def _derived(rule: GateRule, keys: set[str]) -> dict[str, float]:
    derived: dict[str, float] = {}
    for key in keys & set(_STREAM_KEYS):
        value = getattr(rule, key)
        if value is None:
            continue
        for stream_key in _STREAM_KEYS[key]:
            derived[stream_key] = min(value, derived.get(stream_key, math.inf))
    return derived


def stream_defaults(config: GateConfig) -> dict[str, float]:
    """The `"*"` rule's thresholds: the stream's for every workflow the gate does not list."""
    star = config.root.get(DEFAULT_KEY)
    return _derived(star, set(star.model_fields_set)) if star is not None else {}


def stream_overrides(config: GateConfig, anomalies: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-workflow anomaly overrides with the gate's thresholds folded in (explicit ones win).

    Change ratios are ratios over 1 (`max_cost_ratio: 1.2` is a ratio of 1.2); where two
    gate keys set one stream key the stricter (smaller) value is taken. A listed workflow
    also gives its own value (set or default) for each key `"*"` sets, as its rule does in CI."""
    star = config.root.get(DEFAULT_KEY)
    star_keys = set(star.model_fields_set) if star is not None else set()
    out = {wf: dict(o) for wf, o in anomalies.items()}
    for wf, rule in config.root.items():
        if wf == DEFAULT_KEY:
            continue  # the base of every workflow: stream_defaults
        derived = _derived(rule, set(rule.model_fields_set) | star_keys)
        if derived:
            out[wf] = {**derived, **out.get(wf, {})}
    return out


# --- records ----------------------------------------------------------------------------------


class GateRecord(msgspec.Struct, kw_only=True):
    """One line of evidence: an eval result or an output (a call). Contract events fit as
    they are (their other fields are ignored); so does a CI tool's short eval line."""

    event_type: Literal["eval", "output", "prompt", "tool_call", "change"] = "eval"
    event_id: str = ""
    ts: int | datetime | None = None  # epoch ms or RFC 3339; needed only to split around a change
    workflow: str = ""
    prompt_version: str = ""
    model: str = ""
    change_id: str = ""  # the change a result was produced under, if the tool knows it
    eval_name: str = ""
    passed: bool | None = None
    score: float | None = None
    status: str = ""
    latency_ms: float | None = None
    cost_usd: float | None = None  # reported, or our price when read from ClickHouse


class LineError(msgspec.Struct):
    line: int
    message: str


_record_decoder = msgspec.json.Decoder(GateRecord)
MAX_ERRORS_KEPT = 100


def parse_lines(lines: Iterable[bytes | str]) -> tuple[list[GateRecord], list[LineError], int]:
    """Records from JSON lines, one error per bad line (numbered from 1) and the count of
    errors beyond the first MAX_ERRORS_KEPT. Blank lines, prompts and tool calls are
    skipped; change events are kept (their time splits a change's sides). Never raises
    on content."""
    records: list[GateRecord] = []
    errors: list[LineError] = []
    more = 0
    for i, raw in enumerate(lines, 1):
        message = None
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogatepass")
        if i == 1 and raw.startswith(b"\xef\xbb\xbf"):  # a BOM (PowerShell's utf8, Excel): not JSON, but no error
            raw = raw[3:]
        if not raw.strip():
            continue
        try:
            rec = _record_decoder.decode(raw)
            message = _check(rec)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            message = str(exc)
        except UnicodeError as exc:  # a lone surrogate cannot be UTF-8
            message = f"not UTF-8: {exc.reason}"
        except (OverflowError, ValueError) as exc:  # a time msgspec parsed but UTC cannot hold
            message = f"bad ts: {exc}"
        if message is not None:
            if len(errors) < MAX_ERRORS_KEPT:
                errors.append(LineError(i, message[:300]))
            else:
                more += 1
        elif rec.event_type in ("eval", "output", "change"):
            records.append(rec)
    return records, errors, more


def _check(rec: GateRecord) -> str | None:
    if isinstance(rec.ts, datetime):
        if rec.ts.tzinfo is None:
            return "ts needs a timezone offset (or epoch milliseconds)"
        rec.ts = int(rec.ts.astimezone(timezone.utc).timestamp() * 1000)
    ts = rec.ts
    if ts is not None and not 946_684_800_000 <= ts <= 4_102_444_800_000:
        return f"ts {ts} is not epoch milliseconds between 2000 and 2100"
    if rec.event_type == "eval":
        if not rec.eval_name:
            return "an eval line needs a non-empty eval_name"
        if rec.passed is None and rec.score is None:
            return f"eval {rec.eval_name!r} has neither passed nor score"
        if rec.score is not None and not math.isfinite(rec.score):
            return f"eval {rec.eval_name!r} has a score that is not a finite number"
    elif rec.event_type == "output":
        if not rec.status:
            return "an output line needs a status"
        for name in ("latency_ms", "cost_usd"):
            v = getattr(rec, name)
            if v is not None and not (math.isfinite(v) and v >= 0):
                return f"{name} must be a finite number >= 0"
    return None


# --- which records are which side -----------------------------------------------------------------

SIDE_KINDS = {"prompt": "prompt_version", "prompt_version": "prompt_version", "model": "model", "change": "change"}


@dataclass(frozen=True)
class Side:
    """`prompt_version:v7`, `model:gpt-4o`, or `change:<event id>` (after the change; its
    baseline is before it)."""

    kind: str  # prompt_version | model | change
    value: str

    @classmethod
    def parse(cls, text: str) -> "Side":
        kind, sep, value = text.partition(":")
        kind = kind.strip()
        if not sep or not value.strip() or kind not in SIDE_KINDS:
            raise ValueError(f"{text!r}: expected prompt:VERSION, model:NAME or change:ID")
        return cls(SIDE_KINDS[kind], value.strip())

    def __str__(self) -> str:
        return f"{self.kind}:{self.value}"


def split_sides(records: Sequence[GateRecord], baseline: Side | None, candidate: Side,
                change_ts: int | None = None) -> tuple[list[GateRecord], list[GateRecord]]:
    """(baseline records, candidate records). A change candidate splits by time at the
    change (`change_ts`), or by the records' own `change_id` when they carry it."""
    if candidate.kind == "change":
        tagged = [r for r in records if r.change_id]
        if any(r.change_id == candidate.value for r in tagged):
            return ([r for r in records if r.change_id != candidate.value],
                    [r for r in records if r.change_id == candidate.value])
        if change_ts is None:
            raise ValueError(f"change {candidate.value}: no record names it and its time is unknown")
        if any(r.ts is None for r in records):
            raise ValueError(f"change {candidate.value}: splitting by time needs ts on every record")
        return [r for r in records if r.ts < change_ts], [r for r in records if r.ts >= change_ts]  # type: ignore[operator]
    if baseline is None or baseline.kind != candidate.kind:
        raise ValueError("baseline and candidate must be of the same kind (both prompt or both model)")
    if baseline.value == candidate.value:
        raise ValueError(f"baseline and candidate are the same {candidate}")
    key = candidate.kind
    return ([r for r in records if getattr(r, key) == baseline.value],
            [r for r in records if getattr(r, key) == candidate.value])


# --- statistics -----------------------------------------------------------------------------------


def wilson(k: int, n: int, z: float) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    z2 = z * z
    den = 1 + z2 / n
    centre = (p + z2 / (2 * n)) / den
    half = z / den * math.sqrt(max(0.0, p * (1 - p) / n + z2 / (4 * n * n)))
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe(k1: int, n1: int, k2: int, n2: int, z: float) -> tuple[float, float, float]:
    """p1 - p2 and its Newcombe hybrid score interval (Newcombe 1998, method 10)."""
    p1, p2 = k1 / n1, k2 / n2
    l1, u1 = wilson(k1, n1, z)
    l2, u2 = wilson(k2, n2, z)
    d = p1 - p2
    lo = d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2)
    hi = d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    return d, max(-1.0, lo), min(1.0, hi)


def two_proportion_p(k1: int, n1: int, k2: int, n2: int) -> float:
    """Two-sided p-value of the pooled two-proportion z test."""
    pooled = (k1 + k2) / (n1 + n2)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    if se == 0:
        return 1.0 if k1 / n1 == k2 / n2 else 0.0
    return 2 * (1 - NormalDist().cdf(abs(k1 / n1 - k2 / n2) / se))


def t_quantile(p: float, df: float) -> float:
    """Student's t quantile: the normal one corrected by its Cornish-Fisher expansion
    (Abramowitz & Stegun 26.7.5). Against the exact values (scipy): within 0.75 % at a two-sided
    95 % level from 2 degrees of freedom on, about 1 % at 99 %; exact as df grows."""
    z = NormalDist().inv_cdf(p)
    if math.isinf(df):
        return z
    z2 = z * z
    g1 = (z2 + 1) * z / 4
    g2 = ((5 * z2 + 16) * z2 + 3) * z / 96
    g3 = (((3 * z2 + 19) * z2 + 17) * z2 - 15) * z / 384
    g4 = ((((79 * z2 + 776) * z2 + 1482) * z2 - 1920) * z2 - 945) * z / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


def welch(a: Moments, b: Moments, z: float) -> tuple[float, float, float]:
    """mean(a) - mean(b) and its Welch interval at the level of the normal quantile `z`:
    Student's t with the Welch-Satterthwaite degrees of freedom (the normal interval is too
    narrow on the few scores a small eval set has)."""
    d = a.mean - b.mean
    va, vb = a.var / a.n, b.var / b.n
    den = va * va / (a.n - 1) + vb * vb / (b.n - 1)
    df = (va + vb) ** 2 / den if den > 0 else math.inf
    half = t_quantile(NormalDist().cdf(z), df) * math.sqrt(va + vb)
    return d, d - half, d + half


# Latencies are kept as a histogram of 1 % wide buckets (log scale), so the p95 of a side can be
# merged from a file and ClickHouse and read at any size; the value reported is the bucket's
# upper edge: the nearest-rank p95, rounded up by at most 1 %.
LATENCY_BASE = math.log(1.01)


def latency_bucket(ms: float) -> int:
    return int(math.floor(math.log1p(ms) / LATENCY_BASE))


def bucket_value(b: int) -> float:
    return math.expm1((b + 1) * LATENCY_BASE)


def p95(hist: dict[int, int]) -> float:
    n = sum(hist.values())
    rank = max(1, math.ceil(0.95 * n))  # nearest rank
    seen = 0
    for b in sorted(hist):
        seen += hist[b]
        if seen >= rank:
            return bucket_value(b)
    raise ValueError("p95 of an empty histogram")


class EvalStats(msgspec.Struct):
    judged: int = 0  # results with `passed`
    passed: int = 0
    score: Moments = msgspec.field(default_factory=Moments)


class Evidence(msgspec.Struct):
    """What one side of the gate shows, as counts and sums (from records, or a GROUP BY)."""

    evals: dict[str, EvalStats] = {}
    calls: int = 0
    errors: int = 0
    refusals: int = 0
    cost: Moments = msgspec.field(default_factory=Moments)  # ok calls with a cost
    latency: dict[int, int] = {}  # ok calls with a latency: bucket -> count

    def eval(self, name: str) -> EvalStats:
        st = self.evals.get(name)
        if st is None:
            st = self.evals[name] = EvalStats()
        return st

    def merge(self, o: "Evidence") -> "Evidence":
        for name, st in o.evals.items():
            mine = self.eval(name)
            mine.judged += st.judged
            mine.passed += st.passed
            mine.score.merge(st.score)
        self.calls += o.calls
        self.errors += o.errors
        self.refusals += o.refusals
        self.cost.merge(o.cost)
        for b, c in o.latency.items():
            self.latency[b] = self.latency.get(b, 0) + c
        return self

    @property
    def ok_latency_calls(self) -> int:
        return sum(self.latency.values())


def summarize(records: Iterable[GateRecord]) -> Evidence:
    ev = Evidence()
    for r in records:
        if r.event_type == "eval":
            st = ev.eval(r.eval_name)
            if r.passed is not None:
                st.judged += 1
                st.passed += r.passed
            if r.score is not None:
                st.score.add(r.score)
        elif r.event_type == "output":
            ev.calls += 1
            ev.errors += r.status in ERROR_STATUSES
            ev.refusals += r.status in REFUSAL_STATUSES
            if r.status == "ok":
                if r.cost_usd is not None:
                    ev.cost.add(r.cost_usd)
                if r.latency_ms is not None:
                    b = latency_bucket(r.latency_ms)
                    ev.latency[b] = ev.latency.get(b, 0) + 1
    return ev


# --- the decision -----------------------------------------------------------------------------------


@dataclass
class Check:
    """One row of the gate: an eval name's pass rate or mean score, or an operational figure."""

    name: str
    metric: str  # pass_rate | min_pass_rate | mean_score | cost_per_call | p95_latency_ms | error_rate | refusal_rate
    verdict: Verdict
    reason: str
    n_baseline: int
    n_candidate: int
    baseline: float | None = None
    candidate: float | None = None
    diff: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value: float | None = None
    threshold: float | None = None


@dataclass
class GateReport:
    workflow: str
    baseline: str
    candidate: str
    decision: Decision
    confidence: float
    checks: list[Check] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.decision]

    def failing(self) -> list[Check]:
        return [c for c in self.checks if c.verdict == "fail"]

    def to_dict(self) -> dict[str, Any]:
        import dataclasses

        def finite(v: Any) -> Any:  # an infinite ratio (a baseline costing 0) is no JSON number: null
            return None if isinstance(v, float) and not math.isfinite(v) else v

        return {"workflow": self.workflow, "baseline": self.baseline, "candidate": self.candidate,
                "decision": self.decision, "confidence": self.confidence,
                "checks": [{k: finite(v) for k, v in dataclasses.asdict(c).items()} for c in self.checks]}


def _r(x: float | None, nd: int = 4) -> float | None:
    return None if x is None else round(x, nd)


def _pass_rate(name: str, rule: EvalRule, z: float, b: EvalStats, c: EvalStats) -> list[Check]:
    nb, nc, kb, kc = b.judged, c.judged, b.passed, c.passed
    if nb < rule.min_evals or nc < rule.min_evals:
        return [Check(name, "pass_rate", "insufficient",
                      f"not enough evidence: {nc} candidate and {nb} baseline evals, {rule.min_evals} needed on each side",
                      nb, nc, _r(kb / nb) if nb else None, _r(kc / nc) if nc else None, threshold=rule.min_evals)]
    d, lo, hi = newcombe(kc, nc, kb, nb, z)
    pb, pc = kb / nb, kc / nc
    row = dict(n_baseline=nb, n_candidate=nc, baseline=_r(pb), candidate=_r(pc), diff=_r(d),
               ci_low=_r(lo), ci_high=_r(hi), p_value=_r(two_proportion_p(kc, nc, kb, nb), 6), threshold=-rule.max_drop)
    if d < -rule.max_drop:
        out = [Check(name, "pass_rate", "fail", f"pass rate fell {-d:.3f} (allowed {rule.max_drop:g})", **row)]
    elif lo >= -rule.max_drop:
        out = [Check(name, "pass_rate", "pass", f"no drop over {rule.max_drop:g} is plausible", **row)]
    else:
        out = [Check(name, "pass_rate", "insufficient",
                     f"not enough evidence: the drop could be up to {-lo:.3f} (allowed {rule.max_drop:g})", **row)]
    if rule.min_pass_rate is not None:
        wl, wh = wilson(kc, nc, z)
        ok = pc >= rule.min_pass_rate
        out.append(Check(name, "min_pass_rate", "pass" if ok else "fail",
                         f"candidate pass rate {pc:.3f} {'>=' if ok else '<'} {rule.min_pass_rate:g}",
                         nb, nc, _r(pb), _r(pc), None, _r(wl), _r(wh), None, rule.min_pass_rate))
    return out


def _score(name: str, rule: EvalRule, z: float, base: Moments, cand: Moments) -> Check | None:
    nb, nc = base.n, cand.n
    if not nb and not nc or rule.max_score_drop is None and not (nb and nc):
        return None  # a pass/fail-only eval, or scores on one side only and nothing gated
    if nb < max(3, rule.min_evals) or nc < max(3, rule.min_evals):  # 3: Welch's df >= 2
        verdict: Verdict = "insufficient" if rule.max_score_drop is not None else "info"
        return Check(name, "mean_score", verdict, f"{nc} candidate and {nb} baseline scores, {rule.min_evals} needed",
                     nb, nc, _r(base.mean) if nb else None, _r(cand.mean) if nc else None)
    d, lo, hi = welch(cand, base, z)
    row = dict(n_baseline=nb, n_candidate=nc, baseline=_r(base.mean), candidate=_r(cand.mean),
               diff=_r(d), ci_low=_r(lo), ci_high=_r(hi))
    if rule.max_score_drop is None:
        return Check(name, "mean_score", "info", "not gated: set max_score_drop to gate mean scores", **row)
    m = rule.max_score_drop
    if d < -m:
        return Check(name, "mean_score", "fail", f"mean score fell {-d:.3f} (allowed {m:g})", threshold=-m, **row)
    if lo >= -m:
        return Check(name, "mean_score", "pass", f"no drop over {m:g} is plausible", threshold=-m, **row)
    return Check(name, "mean_score", "insufficient",
                 f"not enough evidence: the drop could be up to {-lo:.3f} (allowed {m:g})", threshold=-m, **row)


OPERATIONAL = "operational"


def _rate(rule: GateRule, metric: str, kb: int, nb: int, kc: int, nc: int,
          max_abs: float | None, max_inc: float | None) -> Check:
    gated = max_abs is not None or max_inc is not None
    if nb < rule.min_calls or nc < rule.min_calls:
        return Check(OPERATIONAL, metric, "insufficient" if gated else "info",
                     f"{nc} candidate and {nb} baseline calls, {rule.min_calls} needed", nb, nc)
    d, lo, hi = newcombe(kc, nc, kb, nb, rule.z)
    pc = kc / nc
    row = dict(n_baseline=nb, n_candidate=nc, baseline=_r(kb / nb), candidate=_r(pc), diff=_r(d),
               ci_low=_r(lo), ci_high=_r(hi), p_value=_r(two_proportion_p(kc, nc, kb, nb), 6))
    if max_abs is not None and pc > max_abs:
        return Check(OPERATIONAL, metric, "fail", f"{metric} {pc:.3f} > {max_abs:g}", threshold=max_abs, **row)
    if max_inc is not None and d > max_inc:
        return Check(OPERATIONAL, metric, "fail", f"{metric} rose {d:.3f} (allowed {max_inc:g})", threshold=max_inc, **row)
    return Check(OPERATIONAL, metric, "pass" if gated else "info", "within limits" if gated else "not gated", **row)


def _ratio(rule: GateRule, metric: str, nb: int, vb: float | None, nc: int, vc: float | None,
           max_ratio: float | None, max_abs: float | None = None) -> Check:
    gated = max_ratio is not None or max_abs is not None
    if nb < rule.min_calls or nc < rule.min_calls or vb is None or vc is None:
        return Check(OPERATIONAL, metric, "insufficient" if gated else "info",
                     f"{nc} candidate and {nb} baseline ok calls with a value, {rule.min_calls} needed", nb, nc)
    r = vc / vb if vb > 0 else (math.inf if vc > 0 else 1.0)
    row = dict(n_baseline=nb, n_candidate=nc, baseline=_r(vb, 6), candidate=_r(vc, 6), diff=_r(r))
    if max_abs is not None and vc > max_abs:
        return Check(OPERATIONAL, metric, "fail", f"{metric} {vc:g} > {max_abs:g}", threshold=max_abs, **row)
    if max_ratio is not None and r > max_ratio:
        return Check(OPERATIONAL, metric, "fail", f"{metric} x{r:.2f} (allowed x{max_ratio:g})", threshold=max_ratio, **row)
    return Check(OPERATIONAL, metric, "pass" if gated else "info", "within limits" if gated else "not gated", **row)


def _operational(rule: GateRule, b: Evidence, c: Evidence) -> list[Check]:
    if not b.calls and not c.calls:
        return []
    lb, lc = b.ok_latency_calls, c.ok_latency_calls
    return [
        _ratio(rule, "cost_per_call", b.cost.n, b.cost.mean if b.cost.n else None,
               c.cost.n, c.cost.mean if c.cost.n else None, rule.max_cost_ratio),
        _ratio(rule, "p95_latency_ms", lb, p95(b.latency) if lb else None, lc, p95(c.latency) if lc else None,
               rule.max_p95_latency_ratio, rule.max_p95_latency_ms),
        _rate(rule, "error_rate", b.errors, b.calls, c.errors, c.calls, rule.max_error_rate, rule.max_error_rate_increase),
        _rate(rule, "refusal_rate", b.refusals, b.calls, c.refusals, c.calls, None, rule.max_refusal_rate_increase),
    ]


def evaluate(rule: GateRule, workflow: str, baseline_name: str, candidate_name: str,
             base: Evidence, cand: Evidence) -> GateReport:
    """The gate over the two sides' evidence (evals and outputs)."""
    z = rule.z
    checks: list[Check] = []
    names = sorted(set(base.evals) | set(cand.evals) | set(rule.required_evals))
    empty = EvalStats()
    for name in names:
        er = rule.for_eval(name)
        b, c = base.evals.get(name, empty), cand.evals.get(name, empty)
        if b.judged or c.judged or name in rule.required_evals:
            checks += _pass_rate(name, er, z, b, c)
        score = _score(name, er, z, b.score, c.score)
        if score is not None:
            checks.append(score)
    checks += _operational(rule, base, cand)
    verdicts = {c.verdict for c in checks}
    if "fail" in verdicts:
        decision: Decision = "fail"
    elif "insufficient" in verdicts or not names or verdicts <= {"info"}:  # nothing decided is no pass
        decision = "insufficient"
    else:
        decision = "pass"
    return GateReport(workflow, baseline_name, candidate_name, decision, rule.confidence, checks)
