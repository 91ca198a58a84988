"""Kill switch latency: a loop's finding -> the app's own SDK refusing the trace's next call.

A real worker runs every processor and the one-line policy defaults (`policies: {defaults:
enforce}`) under steady background traffic (default 2,000 events/s, re-stamped with the
wall clock as sent). An app in its own process (bench/_controls_app.py: a KafkaPublisher
with its live view of `llm.controls`) injects a tool loop in a new trace once a second (a
prompt and three identical calls; the third completes the pattern) and then checks that
trace with `trace.check_tool` every 5 ms until the SDK denies it. Measured per loop,
on the machine's one wall clock:

    finding -> enforced   the deny in the app minus the finding's `detected_at` (the worker's
                          wall clock when the detector raised it: the batch's policies, side
                          outputs and acknowledgements, the SDK's reader and the app's check)
    event -> enforced     the deny in the app minus the publish of the completing call
                          (event -> finding, the detection part, printed beside it: it
                          is bench_detection_latency's figure, and the worker's lag)

Floor: finding -> enforced p99 <= 1 s at 2,000 events/s.

    python bench/bench_controls_e2e.py [--rate 2000] [--seconds 30] [--batch-seconds 0.25]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import orjson  # noqa: E402
import yaml  # noqa: E402

from _broker import bench_broker  # noqa: E402
from _tap import FindingsTap, pct  # noqa: E402
from llmpulse.ingest import KafkaPublisher  # noqa: E402
from llmpulse.testing import WorkerProcess, isolated_settings  # noqa: E402
from llmpulse.traffic import TrafficGenerator  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WARM_S = 3.0
FLOOR_P99_MS = 1000.0


def run(bootstrap: str, rate: int, seconds: int, batch_seconds: float, work: Path) -> dict:
    config = work / "llmpulse.yaml"
    config.write_text(yaml.safe_dump({"policies": {"defaults": "enforce"}}))
    settings = isolated_settings(bootstrap, work / f"ks-{batch_seconds}", batch_max_seconds=batch_seconds)
    total = int(rate * (seconds + WARM_S + 5))
    background = list(TrafficGenerator(seed=307).events(total // 4 + 1))[:total]
    worker = WorkerProcess(settings, work / f"worker-{batch_seconds}.log", {"LLMPULSE_CONFIG_FILE": str(config)}).start()
    tap = FindingsTap(bootstrap, settings.findings_topic, "ks-")
    pub = KafkaPublisher(bootstrap, settings.events_topic, redaction=False)
    app = subprocess.Popen([sys.executable, str(ROOT / "bench" / "_controls_app.py"), bootstrap, settings.events_topic,
                            settings.controls_topic, str(WARM_S), str(seconds)],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sent, bg = 0, iter(background)
    try:
        t0 = time.monotonic()
        while app.poll() is None:  # background traffic for as long as the app injects and waits
            due = int((time.monotonic() - t0) * rate)
            wall_ms = time.time_ns() // 1_000_000
            while sent < due:
                e = next(bg, None)
                if e is None:
                    break
                e["ts"] = wall_ms
                pub.publish_raw(orjson.dumps(e), e.get("trace_id") or "")
                sent += 1
            time.sleep(0.002)
        achieved = sent / (time.monotonic() - t0)
        out, err = app.communicate(timeout=30)
        assert app.returncode == 0, err[-3000:]
        loops = [orjson.loads(line) for line in out.splitlines() if line.startswith("{")]
        time.sleep(1.0)  # the tap has read every finding by now
        stats = worker.stats()
    finally:
        if app.poll() is None:
            app.kill()
        pub.close()
        tap.close()
        worker.stop()
    arrived = tap.snapshot()
    enforced = [lp for lp in loops if lp["enforced_ms"] is not None]
    f2e = [lp["enforced_ms"] - arrived[lp["trace"]] for lp in enforced if lp["trace"] in arrived]
    e2e = [lp["enforced_ms"] - lp["sent_ms"] for lp in enforced]
    e2f = [arrived[lp["trace"]] - lp["sent_ms"] for lp in loops if lp["trace"] in arrived]
    return {"loops": len(loops), "enforced": len(enforced), "achieved": achieved, "consumed": stats.get("consumed"),
            "f2e": f2e, "e2e": e2e, "e2f": e2f}


def summary(xs: list[float]) -> str:
    return f"p50 {statistics.median(xs):.0f} ms, p99 {pct(xs, 0.99):.0f} ms, max {max(xs):.0f} ms"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rate", type=int, default=2000)
    ap.add_argument("--seconds", type=int, default=30)
    ap.add_argument("--batch-seconds", type=float, nargs="+", default=[0.25])
    args = ap.parse_args()
    broker = bench_broker()
    with tempfile.TemporaryDirectory(prefix="llmpulse-bench-") as tmp:
        for bs in args.batch_seconds:
            r = run(broker.bootstrap, args.rate, args.seconds, bs, Path(tmp))
            if not r["f2e"]:
                print(f"no loop was enforced ({r['loops']} injected)", flush=True)
                continue
            verdict = "ok" if pct(r["f2e"], 0.99) <= FLOOR_P99_MS else "ABOVE FLOOR"
            print(f"kill switch, {args.rate}/s background for {args.seconds}s, LLMPULSE_BATCH_MAX_SECONDS={bs}: "
                  f"{r['enforced']} of {r['loops']} loops halted in the app, achieved {r['achieved']:,.0f} events/s; "
                  f"finding -> enforced in the app: {summary(r['f2e'])} (floor p99 {FLOOR_P99_MS:,.0f} ms: {verdict}); "
                  f"completing event -> enforced: {summary(r['e2e'])} (of which event -> finding: "
                  f"{summary(r['e2f'])})", flush=True)


if __name__ == "__main__":
    main()
