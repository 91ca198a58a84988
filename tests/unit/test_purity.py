"""The purity line: processors outside `runtime/` and the schema's pure modules import no I/O library.

Each pure module is imported in a fresh interpreter whose import system refuses the
Kafka, ClickHouse, faust and network client packages, so an indirect import fails too.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# The clients of our I/O. (genai-prices, a pure dependency, imports an HTTP client of its own
# for catalogue updates we never call, so generic HTTP modules are not on the list.)
IO_PACKAGES = ("confluent_kafka", "clickhouse_connect", "chdb", "faust", "aiokafka", "aiohttp",
               "grafana_client", "llmpulse.processors.runtime", "llmpulse.schemas.store")


def pure_modules() -> list[str]:
    mods = [f"llmpulse.processors.{p.stem}" for p in sorted((ROOT / "processors").glob("*.py"))
            if p.stem != "__init__"]
    return mods + ["llmpulse.schemas.contract", "llmpulse.schemas.rows", "llmpulse.schemas.findings"]


BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError("I/O import from a pure module: " + name)
        return None
sys.meta_path.insert(0, Block())
import importlib
for m in {mods!r}:
    importlib.import_module(m)
print("ok", len({mods!r}))
"""


def test_pure_modules_import_no_io_library():
    mods = pure_modules()
    assert "llmpulse.processors.pipeline" in mods and len(mods) > 8
    code = BLOCKER.format(blocked=IO_PACKAGES, mods=mods)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok")


def test_blocker_catches_an_io_import():
    """The check can fail: the I/O shell itself is refused under the same blocker."""
    code = BLOCKER.format(blocked=IO_PACKAGES, mods=["llmpulse.schemas.rows", "llmpulse.schemas.store"])
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode != 0 and "I/O import from a pure module" in proc.stderr
