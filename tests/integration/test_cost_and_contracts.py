"""Cost, budgets and contracts through the real broker and a real worker (issue 3).

One worker for the module, configured by a YAML file (budgets, contracts) passed as
LLMPULSE_CONFIG_FILE; each test uses its own tenant, so tests do not see each other's
spend or findings. A consumer reads `llm.findings` from the start for the whole module
and notes when each finding arrived, for the event -> finding latency.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import yaml
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from llmpulse.ingest import KafkaPublisher
from llmpulse.schemas.findings import Finding, decode_finding
from llmpulse.testing import WorkerProcess, isolated_settings, wait_for

pytestmark = pytest.mark.integration

CONFIG = {
    "budgets": [{"scope": {"tenant": "budget-co"}, "period": "day", "limit_usd": 1.0}],
    "contracts": {
        "support-bot": {
            "allowed_tools": ["search_kb", "create_ticket", "issue_refund"],
            "irreversible_tools": ["issue_refund"],
            "max_steps": 5,
        },
    },
}
# gpt-4o in the bundled genai-prices catalog, USD per million tokens.
GPT4O_INPUT, GPT4O_CACHED, GPT4O_OUTPUT = 2.5, 1.25, 10.0
SETTLE_S = 1.5  # after the expected findings arrived: time for a duplicate to show up


class FindingsTap:
    """Everything on the findings topic, with the wall time it arrived."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.got: list[tuple[float, Finding]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"tap-{uuid.uuid4().hex}",
                                   "enable.auto.commit": False, "fetch.wait.max.ms": 10})
        self._consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.05)
            if msg is None or msg.error():
                continue
            now = time.time()
            with self._lock:
                self.got.append((now, decode_finding(msg.value())))

    def findings(self, tenant: str, kind: str | None = None) -> list[tuple[float, Finding]]:
        with self._lock:
            return [(t, f) for t, f in self.got if f.tenant == tenant and (kind is None or f.kind == kind)]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._consumer.close()


@pytest.fixture(scope="module")
def env(kafka, tmp_path_factory):
    root = tmp_path_factory.mktemp("cost")
    config = root / "llmpulse.yaml"
    config.write_text(yaml.safe_dump(CONFIG))
    settings = isolated_settings(kafka.bootstrap, root / "state", batch_max_seconds=0.2)
    worker = WorkerProcess(settings, root / "worker.log", extra_env={"LLMPULSE_CONFIG_FILE": str(config)}).start()
    tap = FindingsTap(settings.kafka_bootstrap, settings.findings_topic)
    pub = KafkaPublisher(settings.kafka_bootstrap, settings.events_topic)
    yield worker, tap, pub, root
    pub.close()
    tap.close()
    worker.stop()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def event(event_type: str, tenant: str, workflow: str, trace_id: str, **fields) -> dict:
    return {"event_type": event_type, "event_id": uuid.uuid4().hex, "ts": now_ms(), "tenant": tenant,
            "workflow": workflow, "trace_id": trace_id, **fields}


def output(tenant: str, workflow: str, trace_id: str, model: str = "gpt-4o", usage: dict | None = None,
           **fields) -> dict:
    return event("output", tenant, workflow, trace_id, provider="openai", model=model, status="ok",
                 latency_ms=120.0, usage=usage or {"input_tokens": 1_000, "output_tokens": 100}, **fields)


def tool(tenant: str, trace_id: str, name: str, **fields) -> dict:
    return event("tool_call", tenant, "support-bot", trace_id, tool_name=name, tool_call_id=uuid.uuid4().hex,
                 **fields)


def publish(pub: KafkaPublisher, events: list[dict]) -> None:
    for e in events:
        assert pub.publish(e)
    assert pub.flush(30) == 0


def table_findings(worker: WorkerProcess, tenant: str) -> dict[str, int]:
    rows = worker.query(f"SELECT kind, count() FROM {{db}}.findings FINAL WHERE tenant = '{tenant}' GROUP BY kind")
    return {k: n for k, n in rows}


def rows_landed(worker: WorkerProcess, tenant: str, n: int) -> bool:
    return worker.scalar(f"SELECT count() FROM {{db}}.events FINAL WHERE tenant = '{tenant}'") >= n


# -- (a) priced rows ------------------------------------------------------------------------


def test_output_rows_carry_catalog_price_and_unknown_model_is_null_with_one_finding(env) -> None:
    worker, tap, pub, _ = env
    tenant = "pricing-co"
    usage = {"input_tokens": 10_000, "cache_read_tokens": 4_000, "output_tokens": 2_000, "reasoning_tokens": 500}
    known = output(tenant, "pricing", "tr-known", usage=usage, cost_usd=0.05)
    unknown = [output(tenant, "pricing", f"tr-unknown-{i}", model="mystery-model-x") for i in range(3)]
    publish(pub, [known, *unknown])
    wait_for(lambda: rows_landed(worker, tenant, 4), 60, what="priced rows")

    # Cached tokens at the cached rate only, reasoning inside output at the output rate.
    expected = (6_000 * GPT4O_INPUT + 4_000 * GPT4O_CACHED + 2_000 * GPT4O_OUTPUT) / 1e6
    assert expected == pytest.approx(0.04)
    price, source, version, reported = worker.query(
        f"SELECT price_usd, price_source, price_version, cost_usd FROM {{db}}.events FINAL "
        f"WHERE event_id = '{known['event_id']}'")[0]
    assert price == pytest.approx(expected, rel=1e-12)
    assert source == "genai-prices" and version.startswith("genai-prices==")
    assert reported == pytest.approx(0.05)  # the app's own figure, kept beside ours

    nulls = worker.query(f"SELECT price_usd, price_source FROM {{db}}.events FINAL "
                         f"WHERE tenant = '{tenant}' AND model = 'mystery-model-x'")
    assert nulls == [[None, ""]] * 3  # never a made-up 0

    wait_for(lambda: tap.findings(tenant, "unpriced_model"), 30, what="unpriced_model finding")
    time.sleep(SETTLE_S)
    on_topic = tap.findings(tenant, "unpriced_model")
    assert len(on_topic) == 1
    assert on_topic[0][1].model == "mystery-model-x" and on_topic[0][1].severity == "low"
    wait_for(lambda: table_findings(worker, tenant).get("unpriced_model"), 30, what="finding row")
    assert table_findings(worker, tenant) == {"unpriced_model": 1}
    spend = worker.scalar(f"SELECT sum(spend_usd) FROM {{db}}.calls_per_day WHERE tenant = '{tenant}'")
    assert spend == pytest.approx(expected, rel=1e-12)


# -- (b) budget thresholds -----------------------------------------------------------------


def test_budget_crossing_50_80_100_percent_gives_exactly_three_findings(env) -> None:
    worker, tap, pub, _ = env
    tenant = "budget-co"
    # 100k input tokens of gpt-4o = $0.25 (exact in binary); limit $1: 50 % at the 2nd
    # call, 80 % and 100 % together at the 4th, nothing new at the 5th.
    calls = [output(tenant, "spend", f"tr-b{i}", usage={"input_tokens": 100_000, "output_tokens": 0})
             for i in range(5)]
    for c in calls:  # one at a time: state carries across batches
        publish(pub, [c])
        time.sleep(0.1)
    wait_for(lambda: rows_landed(worker, tenant, 5), 60, what="budget rows")
    wait_for(lambda: len(tap.findings(tenant, "budget_threshold")) >= 3, 30, what="three thresholds")
    time.sleep(SETTLE_S)
    found = [f for _, f in tap.findings(tenant)]
    assert sorted((f.kind, f.evidence["threshold_pct"], f.severity) for f in found) == [
        ("budget_threshold", 50, "low"), ("budget_threshold", 80, "medium"), ("budget_threshold", 100, "critical")]
    by_pct = {f.evidence["threshold_pct"]: f for f in found}
    assert by_pct[50].evidence["event_id"] == calls[1]["event_id"]
    assert by_pct[80].evidence["event_id"] == by_pct[100].evidence["event_id"] == calls[3]["event_id"]
    wait_for(lambda: table_findings(worker, tenant).get("budget_threshold") == 3, 30, what="finding rows")
    assert table_findings(worker, tenant) == {"budget_threshold": 3}


# -- (c) contracts, with event -> finding latency -------------------------------------------


def test_contract_violations_give_one_finding_each_within_a_second(env) -> None:
    worker, tap, pub, _ = env
    tenant = "contract-co"
    sent: dict[str, float] = {}  # event_id -> wall time it was handed to the SDK

    def send(e: dict) -> None:
        sent[e["event_id"]] = time.time()
        assert pub.publish(e)
        time.sleep(0.3)  # a stream, not one batch: each finding's latency on its own

    # Unauthorized tool, twice in one trace: one finding.
    send(tool(tenant, "tr-unauth", "search_kb"))
    send(tool(tenant, "tr-unauth", "drop_tables"))
    send(tool(tenant, "tr-unauth", "drop_tables"))
    # Irreversible tool: approved is fine, unapproved is one finding.
    send(tool(tenant, "tr-refund", "issue_refund", approved_by="alice"))
    send(tool(tenant, "tr-refund", "issue_refund"))
    # Runaway steps: max_steps 5, the 6th step crosses, the 7th adds nothing.
    # Distinct prompts and arguments: a runaway, not a loop (the loop detector watches too).
    steps = [
        event("prompt", tenant, "support-bot", "tr-steps", messages=[{"role": "user", "content": f"step {i}"}])
        if i % 2 == 0 else tool(tenant, "tr-steps", "search_kb", arguments={"q": f"q{i}"}, result=f"article {i}")
        for i in range(7)
    ]
    for i, e in enumerate(steps):
        e["ts"] = now_ms() + i  # strictly increasing event time: the 6th is the crossing one
        send(e)
    assert pub.flush(30) == 0

    kinds = ("unauthorized_tool", "unapproved_irreversible_action", "runaway_steps")
    wait_for(lambda: {f.kind for _, f in tap.findings(tenant)} >= set(kinds), 30, what="contract findings")
    time.sleep(SETTLE_S)
    got = tap.findings(tenant)
    assert sorted(f.kind for _, f in got) == sorted(kinds)
    by_kind = {f.kind: (t, f) for t, f in got}
    assert by_kind["unauthorized_tool"][1].evidence["tool_name"] == "drop_tables"
    assert by_kind["runaway_steps"][1].evidence["event_id"] == steps[5]["event_id"]
    assert all(f.severity == ("high" if f.kind == "runaway_steps" else "critical") for _, f in got)

    latencies = {k: t - sent[f.evidence["event_id"]] for k, (t, f) in by_kind.items()}
    print("event -> finding on llm.findings: "
          + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in sorted(latencies.items())))
    assert all(0 < v < 5.0 for v in latencies.values()), latencies

    wait_for(lambda: sum(table_findings(worker, tenant).values()) >= 3, 30, what="finding rows")
    assert table_findings(worker, tenant) == {k: 1 for k in kinds}


# -- (d) reprice ------------------------------------------------------------------------------


def _run(root: Path, worker: WorkerProcess, config: Path, *args: str) -> subprocess.CompletedProcess:
    s = worker.settings
    env = {**worker.env, "LLMPULSE_CONFIG_FILE": str(config)}
    return subprocess.run([sys.executable, *args], env=env, cwd=s.state_dir, capture_output=True, text=True,
                          timeout=300)


SEED_SCRIPT = """
import json, sys
from llmpulse.processors.budgets import BudgetTracker
from llmpulse.processors.runtime.budgets_seed import seed_budgets
from llmpulse.schemas.store import connect
from llmpulse.settings import load_settings
s = load_settings()
client = connect(s.dsn)
tracker = BudgetTracker.from_config([{"scope": {"tenant": sys.argv[1]}, "period": "day", "limit_usd": 0.05}])
seeded = seed_budgets(tracker, client, s.database, int(sys.argv[2]))
st = tracker.rules[0]
print(json.dumps({"seeded": seeded, "fired": st.current.fired}))
client.close()
"""


def test_reprice_rewrites_a_time_range_once_and_idempotently(env) -> None:
    worker, tap, pub, root = env
    tenant = "reprice-co"
    usage = {"input_tokens": 10_000, "cache_read_tokens": 4_000, "output_tokens": 2_000}
    t0 = now_ms()
    old = output(tenant, "rp", "tr-old", usage=usage)
    old["ts"] = t0 - 2 * 3_600_000  # before the repriced range: must keep its price
    in_range = [output(tenant, "rp", "tr-new", usage=usage) for _ in range(3)]
    mystery = output(tenant, "rp", "tr-new", model="mystery-reprice-model", usage=usage)
    tool_step = tool(tenant, "tr-new", "search_kb")  # not an output: untouched
    publish(pub, [old, *in_range, mystery, tool_step])
    wait_for(lambda: rows_landed(worker, tenant, 6), 60, what="rows to reprice")
    catalog = (6_000 * GPT4O_INPUT + 4_000 * GPT4O_CACHED + 2_000 * GPT4O_OUTPUT) / 1e6

    # A price fix: a negotiated gpt-4o rate and a price for the unknown model.
    fixed = root / "reprice.yaml"
    fixed.write_text(yaml.safe_dump({**CONFIG, "prices": [
        {"provider": "openai", "model": "gpt-4o", "input_mtok": 2.0, "output_mtok": 8.0, "cache_read_mtok": 1.0},
        {"model": "mystery-reprice-*", "input_mtok": 1.0, "output_mtok": 3.0}]}))
    negotiated = (6_000 * 2.0 + 4_000 * 1.0 + 2_000 * 8.0) / 1e6
    mystery_price = (10_000 * 1.0 + 2_000 * 3.0) / 1e6
    since, until = str(t0 - 3_600_000), str(now_ms() + 60_000)
    cmd = ("-m", "llmpulse.commands.reprice", "--since", since, "--until", until)

    refused = _run(root, worker, fixed, *cmd)  # the running worker owns the embedded data
    assert refused.returncode == 1 and "stop it" in refused.stderr, refused.stderr

    worker.stop()
    try:
        first = _run(root, worker, fixed, *cmd)
        assert first.returncode == 0, first.stderr
        # Every in-range output of every tenant with gpt-4o or the mystery model changes; ours are 4.
        changed_first = int(first.stdout.split()[1])
        assert changed_first >= 4
        second = _run(root, worker, fixed, *cmd)
        assert second.returncode == 0 and second.stdout.strip() == "repriced 0 rows", second.stdout
        seed = _run(root, worker, fixed, "-c", SEED_SCRIPT, tenant, str(t0))
        assert seed.returncode == 0, seed.stderr
    finally:
        worker.start()
    print(f"reprice: {changed_first} rows changed, then 0")

    prices = {r[0]: r[1:] for r in worker.query(
        f"SELECT event_id, price_usd, price_source FROM {{db}}.events FINAL WHERE tenant = '{tenant}'")}
    assert len(prices) == 6  # one row per event under FINAL
    assert prices[old["event_id"]][0] == pytest.approx(catalog) and prices[old["event_id"]][1] == "genai-prices"
    for e in in_range:
        assert prices[e["event_id"]][0] == pytest.approx(negotiated) and prices[e["event_id"]][1] == "override"
    assert prices[mystery["event_id"]][0] == pytest.approx(mystery_price)
    assert prices[tool_step["event_id"]] == [None, ""]

    total = catalog + 3 * negotiated + mystery_price
    assert worker.scalar(f"SELECT sum(spend_usd) FROM {{db}}.traces WHERE tenant = '{tenant}'") == pytest.approx(total)
    assert worker.scalar(f"SELECT sum(spend_usd) FROM {{db}}.calls_per_day WHERE tenant = '{tenant}'") \
        == pytest.approx(total)
    assert worker.scalar(f"SELECT sum(spend_usd) FROM {{db}}.calls_per_minute WHERE tenant = '{tenant}'") \
        == pytest.approx(total)
    assert worker.scalar(f"SELECT sum(calls) FROM {{db}}.calls_per_day WHERE tenant = '{tenant}'") == 5

    # Budget seed after a restart sums the same (repriced) spend for the current day.
    seeded = json.loads(seed.stdout)
    day_start = t0 - t0 % 86_400_000
    expected_today = 3 * negotiated + mystery_price + (catalog if old["ts"] >= day_start else 0.0)
    assert seeded["seeded"][f"tenant={tenant}/day"] == pytest.approx(expected_today)
    assert seeded["fired"] == 3  # over the $0.05 limit: 50/80/100 % count as already raised
