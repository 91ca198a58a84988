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


def test_readme_policies_example_loads() -> None:
    from llmpulse.processors.policies import Policies

    block = next(b for b in re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S) if b.startswith("policies:"))
    policies = Policies.from_config(Settings(**yaml.safe_load(block)).policies)
    assert [r.name for r in policies.rules][-4:] == ["halt-loops", "block-spend", "fallback-model",
                                                     "approve-after-irreversible"]
    assert policies.rules[0].workflows  # the workflow rules come first
