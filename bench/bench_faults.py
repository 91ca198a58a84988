"""Fault scenarios through a real broker and worker: prints scenario -> sent / landed /
dead-lettered / duplicated / findings, and the time each took (bench/faults.py)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.faults import run_duplicate_after, run_poison  # noqa: E402
from llmpulse.kafka.local import LocalKafka  # noqa: E402
from llmpulse.testing import WorkerProcess, isolated_settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    kafka = LocalKafka(ROOT / ".llmpulse" / "kafka", "127.0.0.1:29092")
    kafka.up()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, run, env in (("poison mixed into valid traffic", run_poison, {"LLMPULSE_DLQ_MAX_BYTES": "20000"}),
                               ("duplicate after 200,000 events", run_duplicate_after, {})):
            d = Path(tmp) / name.split()[0]
            s = isolated_settings(kafka.bootstrap, d / "state", batch_max_seconds=0.2)
            w = WorkerProcess(s, d / "worker.log", extra_env=env).start()
            try:
                out = run(w)
                out = out[0] if isinstance(out, tuple) else out
            finally:
                w.stop()
            rows.append((name, out))
    print(f"{'scenario':34} {'sent':>8} {'landed':>8} {'DLQ':>6} {'dup':>5} {'findings':>8} {'s':>6}")
    for name, o in rows:
        print(f"{name:34} {o.sent:8d} {o.landed:8d} {o.dead_lettered:6d} {o.duplicated:5d} {o.findings:8d} "
              f"{o.seconds:6.1f}  {o.note}")


if __name__ == "__main__":
    main()
