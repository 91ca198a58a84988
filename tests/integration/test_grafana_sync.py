"""`sync()` against a local stand-in for Grafana's HTTP API.

The server keeps state and checks each request the way Grafana documents it (paths,
methods, bearer auth, required body fields, uid consistency); the test asserts the first
run creates everything and the second run makes no writes at all.
"""

from __future__ import annotations

import copy
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

import pytest


from llmpulse.dashboards import alerts  # noqa: E402
from llmpulse.dashboards.clickhouse import DATASOURCE_UID  # noqa: E402
from llmpulse.dashboards.definitions import DASHBOARDS, FOLDER_UID  # noqa: E402
from llmpulse.dashboards.sync import ClickHouseConnection, ContactSettings, sync  # noqa: E402

pytestmark = pytest.mark.integration

TOKEN = "glsa_test_token"
RULE_REQUIRED = {"title", "condition", "data", "folderUID", "ruleGroup", "noDataState", "execErrState", "for"}


class FakeGrafana:
    def __init__(self) -> None:
        self.datasources: dict[str, dict] = {}
        self.folders: dict[str, dict] = {}
        self.dashboards: dict[str, dict] = {}
        self.rules: dict[str, dict] = {}
        self.contact_points: dict[str, dict] = {}
        self.mute_timings: dict[str, dict] = {}
        self.policies: dict = {"receiver": "grafana-default-email"}
        self.writes: list[tuple[str, str]] = []
        self.errors: list[str] = []
        self.next_id = 1

    # Each handler returns (status, body).
    def handle(self, method: str, path: str, query: dict, headers, body) -> tuple[int, object]:
        if headers.get("Authorization") != f"Bearer {TOKEN}":
            return 401, {"message": "Unauthorized"}
        if method in ("POST", "PUT") and not (headers.get("Content-Type") or "").startswith("application/json"):
            return 415, {"message": "Content-Type must be application/json"}
        if method != "GET":
            self.writes.append((method, path))
        parts = [p for p in path.split("/") if p]
        if parts[:1] != ["api"]:
            return 404, {"message": "not found"}
        p = parts[1:]

        # --- /api/datasources
        if p[:2] == ["datasources", "uid"] and len(p) == 3:
            uid = p[2]
            if method == "GET":
                return (200, self._public_ds(self.datasources[uid])) if uid in self.datasources else (
                    404, {"message": "Data source not found"})
            if method == "PUT":
                if uid not in self.datasources:
                    return 404, {"message": "Data source not found"}
                for k in ("name", "type", "access"):
                    if k not in body:
                        return 400, {"message": f"{k} required"}
                stored = self.datasources[uid]
                secure = body.pop("secureJsonData", None)
                stored.update(body)
                if secure:
                    stored["_secure"] = secure
                stored["version"] += 1
                return 200, {"message": "Datasource updated", "datasource": self._public_ds(stored)}
        if p == ["datasources"] and method == "POST":
            for k in ("name", "type", "access"):
                if k not in body:
                    return 400, {"message": f"{k} required"}
            uid = body.get("uid") or f"gen{self.next_id}"
            if uid in self.datasources:
                return 409, {"message": "data source with the same uid already exists"}
            ds = dict(body, id=self.next_id, uid=uid, version=1, orgId=1)
            ds["_secure"] = ds.pop("secureJsonData", {})
            self.next_id += 1
            self.datasources[uid] = ds
            return 200, {"id": ds["id"], "message": "Datasource added", "name": ds["name"],
                         "datasource": self._public_ds(ds)}

        # --- /api/folders
        if p == ["folders"] and method == "POST":
            if "title" not in body:
                return 400, {"message": "title required"}
            uid = body.get("uid")
            if uid in self.folders:
                return 409, {"message": "a folder with the same uid already exists"}
            self.folders[uid] = {"uid": uid, "title": body["title"], "id": self.next_id, "version": 1}
            self.next_id += 1
            return 200, self.folders[uid]
        if p[:1] == ["folders"] and len(p) == 2:
            uid = p[1]
            if uid not in self.folders:
                return 404, {"message": "folder not found"}
            if method == "GET":
                return 200, self.folders[uid]
            if method == "PUT":
                self.folders[uid].update({k: v for k, v in body.items() if k in ("title",)})
                self.folders[uid]["version"] += 1
                return 200, self.folders[uid]

        # --- /api/dashboards
        if p == ["dashboards", "db"] and method == "POST":
            dash = body.get("dashboard")
            if not isinstance(dash, dict) or not dash.get("title") or not dash.get("uid"):
                return 400, {"message": "dashboard with title and uid required"}
            folder = body.get("folderUid")
            if folder and folder not in self.folders:
                return 400, {"message": "folder not found"}
            uid = dash["uid"]
            existing = self.dashboards.get(uid)
            if existing and not body.get("overwrite") and dash.get("version") != existing["dashboard"]["version"]:
                return 412, {"message": "The dashboard has been changed by someone else", "status": "version-mismatch"}
            if dash.get("id") not in (None, existing and existing["dashboard"]["id"]):
                return 404, {"message": "Dashboard not found"}
            stored = copy.deepcopy(dash)
            stored["id"] = existing["dashboard"]["id"] if existing else self.next_id
            stored["version"] = (existing["dashboard"]["version"] + 1) if existing else 1
            self.next_id += 1
            self.dashboards[uid] = {"dashboard": stored, "meta": {"folderUid": folder or "", "slug": uid}}
            return 200, {"id": stored["id"], "uid": uid, "status": "success", "version": stored["version"],
                         "url": f"/d/{uid}/{uid}"}
        if p[:2] == ["dashboards", "uid"] and len(p) == 3 and method == "GET":
            d = self.dashboards.get(p[2])
            return (200, d) if d else (404, {"message": "Dashboard not found"})

        # --- /api/v1/provisioning
        if p[:2] == ["v1", "provisioning"]:
            return self._provisioning(method, p[2:], query, headers, body)
        self.errors.append(f"unexpected {method} {path}")
        return 404, {"message": "not found"}

    def _provisioning(self, method, p, query, headers, body):
        if p == ["alert-rules"] and method == "POST":
            missing = RULE_REQUIRED - set(body)
            if missing:
                return 400, {"message": f"missing {sorted(missing)}"}
            if body["folderUID"] not in self.folders:
                return 400, {"message": "folder does not exist"}
            if body["uid"] in self.rules:
                return 409, {"message": "rule uid exists"}
            self.rules[body["uid"]] = dict(body, id=self.next_id, provenance="api", updated="2026-01-01T00:00:00Z")
            self.next_id += 1
            return 201, self.rules[body["uid"]]
        if p[:1] == ["alert-rules"] and len(p) == 2:
            uid = p[1]
            if method == "GET":
                return (200, self.rules[uid]) if uid in self.rules else (404, {"message": "rule not found"})
            if method == "PUT":
                if uid not in self.rules:
                    return 404, {"message": "rule not found"}
                if body.get("uid", uid) != uid or RULE_REQUIRED - set(body):
                    return 400, {"message": "bad rule"}
                self.rules[uid] = dict(body, id=self.rules[uid]["id"], provenance="api")
                return 200, self.rules[uid]
        if p == ["contact-points"]:
            if method == "GET":
                cps = list(self.contact_points.values())
                if "name" in query:
                    cps = [c for c in cps if c["name"] == query["name"][0]]
                return 200, [self._redact(c) for c in cps]
            if method == "POST":
                if not body.get("name") or not body.get("type") or "settings" not in body:
                    return 400, {"message": "name, type and settings required"}
                self.contact_points[body["uid"]] = copy.deepcopy(body)
                return 202, body
        if p[:1] == ["contact-points"] and len(p) == 2 and method == "PUT":
            if p[1] not in self.contact_points:
                return 404, {"message": "contact point not found"}
            self.contact_points[p[1]] = copy.deepcopy(body)
            return 202, {"message": "contactpoint updated"}
        if p == ["mute-timings"] and method == "POST":
            if not body.get("name"):
                return 400, {"message": "name required"}
            self.mute_timings[body["name"]] = copy.deepcopy(body)
            return 201, body
        if p[:1] == ["mute-timings"] and len(p) == 2:
            if p[1] not in self.mute_timings:
                return 404, {"message": "mute timing not found"}
            if method == "GET":
                return 200, self.mute_timings[p[1]]
            if method == "PUT":
                self.mute_timings[p[1]] = copy.deepcopy(body)
                return 200, body
        if p == ["policies"]:
            if method == "GET":
                return 200, self.policies
            if method == "PUT":
                if not body.get("receiver"):
                    return 400, {"message": "root receiver required"}
                known = {c["name"] for c in self.contact_points.values()}
                for route in [body, *body.get("routes", [])]:
                    if route.get("receiver") and route["receiver"] not in known:
                        return 400, {"message": f"unknown receiver {route['receiver']}"}
                    for mt in route.get("mute_time_intervals", []):
                        if mt not in self.mute_timings:
                            return 400, {"message": f"unknown mute timing {mt}"}
                self.policies = copy.deepcopy(body)
                return 202, {"message": "policies updated"}
        self.errors.append(f"unexpected {method} provisioning/{'/'.join(p)}")
        return 404, {"message": "not found"}

    @staticmethod
    def _public_ds(ds: dict) -> dict:
        out = {k: v for k, v in ds.items() if k != "_secure"}
        out["secureJsonFields"] = {k: True for k in ds.get("_secure", {})}
        return out

    @staticmethod
    def _redact(cp: dict) -> dict:
        out = copy.deepcopy(cp)
        for k in ("integrationKey", "url"):
            if k in out["settings"] and out["type"] in ("pagerduty", "slack"):
                out["settings"][k] = "[REDACTED]"
        return out


@pytest.fixture
def grafana():
    state = FakeGrafana()

    class Handler(BaseHTTPRequestHandler):
        def _serve(self):
            u = urlparse(self.path)
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                status, payload = 400, {"message": "invalid JSON"}
            else:
                status, payload = state.handle(self.command, u.path, parse_qs(u.query), self.headers, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_DELETE = _serve

        def log_message(self, *args):  # keep test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


CH = ClickHouseConnection(host="clickhouse.internal", username="grafana_ro", password="s3cret", database="llmpulse")
CONTACTS = ContactSettings(pagerduty_integration_key="pd-key", slack_webhook_url="https://hooks.example/x",
                           slack_channel="#llm-alerts", webhook_url="http://127.0.0.1:9/hook",
                           business_tz="Europe/Berlin")


def test_sync_creates_everything_then_changes_nothing(grafana):
    state, url = grafana
    first = sync(url, TOKEN, clickhouse=CH, contacts=CONTACTS)
    assert not state.errors
    assert {a for _, _, a in first.actions} == {"created", "updated"}  # policies tree is always there: updated
    assert DATASOURCE_UID in state.datasources
    assert state.datasources[DATASOURCE_UID]["_secure"] == {"password": "s3cret"}
    assert state.datasources[DATASOURCE_UID]["jsonData"]["username"] == "grafana_ro"
    assert set(state.dashboards) == {d.uid for d in DASHBOARDS}
    assert all(d["meta"]["folderUid"] == FOLDER_UID for d in state.dashboards.values())
    assert set(state.rules) == {r.uid for r in alerts.RULES}
    assert state.policies["routes"][1]["receiver"] == alerts.PAGE
    writes_after_first = len(state.writes)

    second = sync(url, TOKEN, clickhouse=CH, contacts=CONTACTS)
    assert not state.errors
    assert second.changed == []
    assert len(state.writes) == writes_after_first, f"second run wrote: {state.writes[writes_after_first:]}"


def test_sync_repairs_drift(grafana):
    state, url = grafana
    sync(url, TOKEN, clickhouse=CH)
    uid = DASHBOARDS[0].uid
    state.dashboards[uid]["dashboard"]["title"] = "edited in the UI"
    state.rules[alerts.RULES[0].uid]["for"] = "1h"
    report = sync(url, TOKEN, clickhouse=CH)
    assert ("dashboard", uid, "updated") in report.actions
    assert ("alert-rule", alerts.RULES[0].uid, "updated") in report.actions
    assert state.dashboards[uid]["dashboard"]["title"] == DASHBOARDS[0].title
    assert sync(url, TOKEN, clickhouse=CH).changed == []


def test_sync_rejects_a_bad_token(grafana):
    _, url = grafana
    from grafana_client.client import GrafanaUnauthorizedError

    with pytest.raises(GrafanaUnauthorizedError):
        sync(url, "wrong", clickhouse=CH)
