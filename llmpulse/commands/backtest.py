"""`llmpulse backtest FILE`: the stream's processors over a JSONL file, findings out.

The same Pipeline object the worker runs (validate, redact, price, detectors), fed
the file's lines in file order as if they arrived from Kafka, in batches. Event
time drives every detector, so yesterday's traffic gives the findings it gave live.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Iterator

from llmpulse.processors.pipeline import Pipeline, RawMessage
from llmpulse.schemas.findings import Finding

BATCH = 5_000


def read_messages(path: Path, topic: str = "backtest") -> Iterator[list[RawMessage]]:
    batch: list[RawMessage] = []
    with open(path, "rb") as f:
        for offset, line in enumerate(f):
            line = line.strip()
            if not line:
                continue
            batch.append(RawMessage(line, topic, 0, offset))
            if len(batch) == BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def backtest(pipeline: Pipeline, path: Path, progress=None) -> tuple[list[Finding], Counter]:
    """Returns the findings and counts of rows, dead letters and findings."""
    findings: list[Finding] = []
    counts: Counter = Counter()
    for batch in read_messages(path):
        result = pipeline.run(batch)
        findings.extend(result.findings)
        counts["events"] += len(result.rows)
        counts["dead_letters"] += len(result.dead_letters)
        if progress is not None:
            progress(len(batch))
    findings.extend(pipeline.flush())  # close what is still open at the end of the file
    counts["findings"] = len(findings)
    return findings, counts
