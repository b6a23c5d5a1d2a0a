"""A JPEG server on 127.0.0.1 for the fetcher's tests: /slow.jpg answers after `slow_s`, /redirect?to=URL
redirects, anything else is the photo; every request's path and Authorization header is remembered."""
from __future__ import annotations

import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


class ImageServer:
    def __init__(self, size: tuple[int, int] = (32, 24), slow_s: float = 1.5):
        buf = io.BytesIO()
        Image.new("RGB", size, (200, 40, 40)).save(buf, "JPEG")
        self.photo, self.slow_s, self.seen = buf.getvalue(), slow_s, []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self.server_port = self._httpd.server_port
        self.base_url = f"http://127.0.0.1:{self.server_port}"

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.seen.append((self.path, self.headers.get("Authorization")))
                if self.path.startswith("/redirect?to="):
                    self.send_response(302)
                    self.send_header("Location", self.path.split("=", 1)[1])
                    self.end_headers()
                    return
                if self.path == "/slow.jpg":
                    time.sleep(server.slow_s)
                self.send_response(200)
                self.send_header("Content-Type", "image/jpeg")
                self.send_header("Content-Length", str(len(server.photo)))
                self.end_headers()
                self.wfile.write(server.photo)

            def log_message(self, *args):
                pass

        return Handler

    def __enter__(self) -> "ImageServer":
        threading.Thread(target=self._httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
