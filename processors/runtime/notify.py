"""Findings → Prometheus Alertmanager (v2 API): a paging path that does not wait for Grafana.

One alert per finding. Its label set is stable for the finding's life (`alertname`,
`finding_id`, `kind`, `severity`, `tenant`, `workflow`, `model`, `source`), so
Alertmanager's fingerprint is stable: re-sending an open finding refreshes the same alert
and never pages twice; sending its `resolved` row sets `endsAt` and resolves it.

Alertmanager expires an alert whose `endsAt` passes, so open alerts carry
`endsAt = now + hold` and the worker calls `refresh()` periodically (more often than
`hold`) to keep them firing, the way Prometheus re-sends firing alerts.

`finding_to_alert` is pure (no I/O); `AlertmanagerNotifier` owns HTTP (stdlib only),
retries transient failures (connection errors, 5xx, 429) with backoff, fails fast on other
4xx, and never raises into the worker: failures are counted in `stats`.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Callable, Iterable

from llmpulse.processors.runtime.retry import Backoff, RetryConfig
from llmpulse.schemas.findings import Finding

ALERTNAME_PREFIX = "llmpulse_"


def _iso(ms_or_dt: int | datetime) -> str:
    dt = ms_or_dt if isinstance(ms_or_dt, datetime) else datetime.fromtimestamp(ms_or_dt / 1000, timezone.utc)
    return dt.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alert_labels(f: Finding) -> dict[str, str]:
    """The identity of the alert: only fields fixed for the finding's life, no empties."""
    labels = {
        "alertname": ALERTNAME_PREFIX + f.kind,
        "finding_id": f.finding_id,
        "kind": f.kind,
        "severity": f.severity,
        "tenant": f.tenant,
        "workflow": f.workflow,
        "model": f.model,
        "source": "llmpulse",
    }
    return {k: v for k, v in labels.items() if v}


def finding_to_alert(f: Finding, *, now: datetime, hold: timedelta, grafana_url: str = "") -> dict[str, Any]:
    """The Alertmanager v2 `postableAlert` for a finding's current state."""
    annotations = {"summary": f.title or f.kind}
    if f.trace_id:
        annotations["trace_id"] = f.trace_id
    if f.value is not None:
        annotations["value"] = repr(f.value)
    if f.threshold is not None:
        annotations["threshold"] = repr(f.threshold)
    if f.wasted_usd is not None:
        annotations["wasted_usd"] = f"{f.wasted_usd:.4f}"
    action = f.evidence.get("control_action") if f.evidence else None
    if isinstance(action, dict):  # the kill switch a policy threw for it (processors/policies.py)
        annotations["action"] = action_text(action)
        annotations["action_id"] = str(action.get("action_id", ""))
    if f.evidence:
        annotations["evidence"] = json.dumps(f.evidence, sort_keys=True)[:2000]
    alert: dict[str, Any] = {
        "labels": alert_labels(f),
        "annotations": annotations,
        "startsAt": _iso(f.event_ts),
    }
    if grafana_url and f.trace_id:
        alert["generatorURL"] = f"{grafana_url.rstrip('/')}/d/llmpulse-trace?var-trace_id={f.trace_id}"
    if f.status == "resolved":
        alert["endsAt"] = _iso(max(f.detected_at, f.event_ts))
    else:
        alert["endsAt"] = _iso(now + hold)
    return alert


def action_text(action: dict[str, Any]) -> str:
    """'halt_trace trace_id=t1 (enforce, policy halt-loops, until 2026-12-03T11:00:00.000Z)'."""
    scope = " ".join(f"{k}={v}" for k, v in (action.get("scope") or {}).items())
    mode = "dry run: not enforced" if action.get("mode") == "dry_run" else "enforced"
    until = f", until {_iso(action['expires_at'])}" if action.get("expires_at") else ""
    already = "" if action.get("caused_by_this_finding", True) else "already in force: "
    return f"{already}{action.get('kind', '')} {scope} ({mode}, policy {action.get('policy', '')}{until})".replace("  ", " ")


class PermanentNotifyError(Exception):
    """Alertmanager rejected the request (4xx other than 429): retrying will not help."""


@dataclass
class NotifyStats:
    sent: int = 0
    batches: int = 0
    retries: int = 0
    failed: int = 0
    last_error: str = ""


Post = Callable[[str, bytes, float], int]


def _urllib_post(url: str, body: bytes, timeout: float) -> int:
    req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status
    except urllib.error.HTTPError as e:
        return e.code


@dataclass
class AlertmanagerNotifier:
    """Forward findings to Alertmanager at `url` (e.g. `http://127.0.0.1:9093`)."""

    url: str
    hold: timedelta = timedelta(minutes=15)
    grafana_url: str = ""
    timeout_s: float = 5.0
    max_attempts: int = 4
    retry: RetryConfig = field(default_factory=RetryConfig)  # the worker's one backoff policy
    post: Post = _urllib_post
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc)
    stats: NotifyStats = field(default_factory=NotifyStats)
    _open: dict[str, Finding] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def endpoint(self) -> str:
        return self.url.rstrip("/") + "/api/v2/alerts"

    def notify(self, findings: Iterable[Finding]) -> bool:
        """Send the current state of these findings; True when Alertmanager took them."""
        batch = list(findings)
        if not batch:
            return True
        with self._lock:
            for f in batch:
                if f.status == "resolved":
                    self._open.pop(f.finding_id, None)
                else:
                    self._open[f.finding_id] = f
        return self._send(batch)

    def refresh(self) -> bool:
        """Re-send every open finding so Alertmanager keeps it firing (call < `hold`)."""
        with self._lock:
            batch = list(self._open.values())
        return self._send(batch) if batch else True

    def open_findings(self) -> list[str]:
        with self._lock:
            return sorted(self._open)

    def _send(self, batch: list[Finding]) -> bool:
        now = self.clock()
        body = json.dumps([finding_to_alert(f, now=now, hold=self.hold, grafana_url=self.grafana_url)
                           for f in batch]).encode()
        backoff = Backoff(self.retry)
        for attempt in range(1, self.max_attempts + 1):
            try:
                status = self.post(self.endpoint, body, self.timeout_s)
            except (OSError, urllib.error.URLError) as e:  # connection refused, timeout, DNS
                status, err = 0, f"{type(e).__name__}: {e}"
            else:
                err = f"HTTP {status}"
            if 200 <= status < 300:
                self.stats.sent += len(batch)
                self.stats.batches += 1
                return True
            if 400 <= status < 500 and status != 429:
                self.stats.failed += len(batch)
                self.stats.last_error = err
                return False  # permanent: the same body will always fail
            self.stats.last_error = err
            if attempt < self.max_attempts:
                self.stats.retries += 1
                self.sleep(backoff.next_delay())
        self.stats.failed += len(batch)
        return False
