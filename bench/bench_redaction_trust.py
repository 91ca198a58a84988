"""Worker redaction cost with and without trusting the SDK's marker (`redaction.trust_upstream`).

The demo traffic of bench_worker's backtest, redacted first by the SDK's hook as `Publisher`
sends it, then run through the pipeline (spine + redact, no other stage) as a backtest: once
unmarked (the worker redacts every event), once marked with the SDK's `llmpulse-redacted`
header for a tenant the worker trusts (it skips its own pass). CPU time per event, best of
three rounds; the difference is what trusting the marker saves the worker.
Run: python bench/bench_redaction_trust.py [--events 100000]
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import orjson  # noqa: E402

from llmpulse.commands.backtest import _run_batch  # noqa: E402
from llmpulse.ingest.publisher import _stamp  # noqa: E402
from llmpulse.ingest.redaction_hook import redaction_hook  # noqa: E402
from llmpulse.processors.pipeline import Pipeline, RawMessage  # noqa: E402
from llmpulse.settings import Settings  # noqa: E402
from llmpulse.traffic import TrafficGenerator  # noqa: E402


TRUSTED = "marked, trust_upstream: ['*']"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=100_000)
    n = ap.parse_args().events
    hook = redaction_hook()
    sent = [hook(_stamp(e)) for e in list(TrafficGenerator(seed=101).events(n // 4 + 1))[:n]]
    values = [orjson.dumps(e) for e in sent]
    marks = [hook.headers_for(e)[0][1] for e in sent]
    with tempfile.TemporaryDirectory() as work:
        print(f"spine + redact over {n} SDK-redacted events, CPU us per event (best of 3):")
        got = {}
        for label, trust, marked in (("unmarked (worker redacts)", [], False),
                                     ("marked, tenant not trusted", [], True),
                                     (TRUSTED, ["*"], True),
                                     ("spine only (no redact stage)", None, False)):
            stages = [] if trust is None else ["redact"]
            s = Settings(state_dir=Path(work), stages=stages, redaction={"trust_upstream": trust or []})
            batches = [[RawMessage(values[j], "bench", 0, j, marks[j] if marked else None)
                        for j in range(i, min(i + 5000, n))] for i in range(0, n, 5000)]
            best = float("inf")
            for _ in range(3):
                pipeline = Pipeline.from_settings(s, replay=True)
                pipeline.run(batches[0][:50])  # compiled scanners outside the timing
                t0 = time.process_time()
                for batch in batches:
                    _run_batch(pipeline, batch)
                best = min(best, (time.process_time() - t0) / n * 1e6)
                gc.unfreeze()
            got[label] = best
            print(f"  {label:32s} {best:6.2f} us/event")
        spine = got["spine only (no redact stage)"]
        print(f"redact stage: {got['unmarked (worker redacts)'] - spine:5.2f} us/event unmarked, "
              f"{got[TRUSTED] - spine:5.2f} us/event trusted")


if __name__ == "__main__":
    main()
