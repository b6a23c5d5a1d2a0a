"""A fake Kubernetes API on 127.0.0.1 that keeps every object `argo-workflows create` sends.

It answers as an empty cluster: a read or a delete is 404, a create succeeds and is recorded, so the
real deploy command runs to the end and the test sees the WorkflowTemplate, CronWorkflow and Sensor
exactly as Argo would receive them.
"""
from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class FakeKubernetes:
    def __init__(self) -> None:
        self.created: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _not_found(self) -> None:
                self._reply(404, {"kind": "Status", "status": "Failure", "code": 404, "reason": "NotFound", "message": f"{self.path} not found"})

            do_GET = do_DELETE = _not_found

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake._lock:
                    fake.created.append(body)
                self._reply(201, body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)

    def write_kubeconfig(self, path: Path) -> Path:
        """Write a kubeconfig that points the kubernetes client at this server (export it as KUBECONFIG)."""
        server = f"http://127.0.0.1:{self._server.server_address[1]}"
        path.write_text(json.dumps({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": server}}],
            "users": [{"name": "ci", "user": {"token": "fake-token"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "ci", "namespace": "default"}}],
            "current-context": "fake",
        }))
        return path

    def take(self) -> list[dict[str, Any]]:
        """The objects created since the last call."""
        with self._lock:
            taken, self.created = self.created, []
        return taken

    def __enter__(self) -> "FakeKubernetes":
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.shutdown()
        self._server.server_close()
