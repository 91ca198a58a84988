"""Every detector stage implements the one Detector protocol (process, advance, flush, stats):
the pipeline calls them all alike, no method is optional."""

from __future__ import annotations

import inspect

from llmpulse.processors.detector import Detector
from llmpulse.processors.pipeline import Pipeline
from llmpulse.settings import Settings


def test_every_stage_is_a_detector_with_counters() -> None:
    pipeline = Pipeline.from_settings(Settings(stages=["budgets", "contracts", "loops", "anomalies"]))
    names = sorted(type(d).__name__ for d in pipeline.detectors)
    assert names == ["AnomalyDetector", "BudgetTracker", "ContractChecker", "LoopDetector"]
    for det in pipeline.detectors:
        assert isinstance(det, Detector), type(det).__name__
        assert det.advance(1_772_409_600_000) == []  # nothing seen yet: no timer can fire
        assert det.flush() == []
        stats = det.stats()
        assert stats and all(isinstance(v, int) for v in stats.values()), stats


def test_the_pipeline_no_longer_probes_detectors_by_name() -> None:
    assert "getattr(detector" not in inspect.getsource(Pipeline)
