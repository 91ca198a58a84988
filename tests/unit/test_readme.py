"""The README's config example is real: it loads and builds every processor."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from llmpulse.processors.pipeline import Pipeline
from llmpulse.settings import Settings

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_config_example_builds_the_pipeline(tmp_path) -> None:
    block = re.search(r"```yaml\n(.*?)```", README.read_text(), re.S).group(1)
    settings = Settings(state_dir=tmp_path, **yaml.safe_load(block))
    pipeline = Pipeline.from_settings(settings)
    assert pipeline.pricer is not None and pipeline.redaction is not None
    assert [type(d).__name__ for d in pipeline.detectors] == [
        "BudgetTracker", "ContractChecker", "LoopDetector", "AnomalyDetector"]
