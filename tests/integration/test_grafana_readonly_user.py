"""The `readonly` level of Grafana's ClickHouse profile (deploy/clickhouse/users.d/grafana_ro.xml),
tried on the real engine (chDB, in a subprocess: one data path per process).

A profile setting acts like a `SET` at the start of the session, so the session below starts
with the profile's level, then does what Grafana's ClickHouse plugin does (sets
`max_execution_time`, runs a SELECT) and what it must never do (write, drop, lift readonly).
readonly=1 is shown to refuse the plugin's setting: that is why the profile uses 2.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = r"""
import json, sys, tempfile
from chdb import session
level = int(sys.argv[1])
s = session.Session(tempfile.mkdtemp() + "/data")
s.query("CREATE DATABASE IF NOT EXISTS llmpulse")
s.query("CREATE TABLE llmpulse.events (a UInt8) ENGINE = MergeTree ORDER BY a")
out = {}
for name, q in [("profile", f"SET readonly = {level}"),
                ("set_max_execution_time", "SET max_execution_time = 30"),
                ("select", "SELECT count() FROM llmpulse.events"),
                ("insert", "INSERT INTO llmpulse.events VALUES (1)"),
                ("create", "CREATE TABLE llmpulse.x (a UInt8) ENGINE = Memory"),
                ("drop", "DROP TABLE llmpulse.events"),
                ("lift_readonly", "SET readonly = 0")]:
    try:
        s.query(q)
        out[name] = "ok"
    except Exception as e:
        out[name] = str(e).splitlines()[0][:200]
print(json.dumps(out))
"""


def _session(level: int) -> dict[str, str]:
    res = subprocess.run([sys.executable, "-c", SCRIPT, str(level)], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def _profile_level() -> int:
    root = ET.parse(ROOT / "deploy" / "clickhouse" / "users.d" / "grafana_ro.xml").getroot()
    profile = root.findtext("users/grafana_ro/profile")
    return int(root.findtext(f"profiles/{profile}/readonly"))


def test_grafana_profile_allows_the_plugins_setting_and_refuses_writes():
    got = _session(_profile_level())
    assert got["profile"] == "ok" and got["set_max_execution_time"] == "ok" and got["select"] == "ok", got
    for forbidden in ("insert", "create", "drop", "lift_readonly"):
        assert "READONLY" in got[forbidden], (forbidden, got[forbidden])


def test_readonly_1_would_refuse_grafana():
    got = _session(1)
    assert "READONLY" in got["set_max_execution_time"], got
