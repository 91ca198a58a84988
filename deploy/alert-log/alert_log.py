"""The webhook receiver that works with no secrets: Alertmanager's `log`, `page` and `chat`
receivers post here (docker-compose.yml's `alert-log` service), and each notification
becomes one JSON line on stdout, so `docker compose logs -f alert-log` shows what would have
paged, what went to chat and what was only logged.

The path names the receiver (`/page`, `/chat`, `/log`). Standard library only; GET /healthz
answers 200 for the healthcheck. Alert annotations are not printed (they may quote user
data); labels, status and the receiver are.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 4 * 1024 * 1024

_OUT = threading.Lock()


def summary(path: str, body: dict) -> dict:
    """One line per notification: receiver, status and each alert's identity."""
    return {
        "receiver": path.strip("/") or "log",
        "status": body.get("status", ""),
        "group": body.get("groupLabels", {}),
        "alerts": [
            {"status": a.get("status", ""), "severity": a.get("labels", {}).get("severity", ""),
             "alertname": a.get("labels", {}).get("alertname", ""),
             "finding_id": a.get("labels", {}).get("finding_id", ""),
             "tenant": a.get("labels", {}).get("tenant", ""), "workflow": a.get("labels", {}).get("workflow", "")}
            for a in body.get("alerts", [])
        ],
    }


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            self.send_response(413)
            self.end_headers()
            return
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            self.send_response(400)
            self.end_headers()
            return
        line = json.dumps(summary(self.path, body), sort_keys=True) + "\n"
        with _OUT:  # Alertmanager posts to several receivers at once: one whole line each
            sys.stdout.write(line)
            sys.stdout.flush()
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:  # one line per notification is enough
        pass


def main() -> None:
    port = int(os.environ.get("ALERT_LOG_PORT", "8080"))
    server = ThreadingHTTPServer(("0.0.0.0", port), Handler)
    print(f"alert-log listening on :{port}", file=sys.stderr, flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
