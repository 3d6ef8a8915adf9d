"""Small test utilities: load a ``scripts/*.py`` file as a module, serve HTTP on localhost, a free port."""
from __future__ import annotations

import http.server
import importlib.util
import socket
import threading
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Iterator

REPO = Path(__file__).resolve().parents[2]


def load_script(name: str) -> ModuleType:
    """``scripts/<name>.py`` imported as a module (its ``main(argv)`` can then be called in-process)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class StaticFiles(http.server.BaseHTTPRequestHandler):
    """Serves ``files`` (URL path -> bytes; key ``"*"`` answers any path) and honours
    ``Range: bytes=N-`` (206); other paths get 404. Subclass it to give each test its own files."""

    files: dict[str, bytes] = {}

    def do_GET(self):  # noqa: N802 - http.server API
        body = self.files.get(self.path, self.files.get("*"))
        if body is None:
            self.send_response(404)
            self.end_headers()
            return
        header = self.headers.get("Range")
        start = int(header.split("=")[1].split("-")[0]) if header else 0
        self.send_response(206 if header else 200)
        body = body[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@contextmanager
def local_http_server(handler: type) -> Iterator[http.server.ThreadingHTTPServer]:
    """A threaded HTTP server on 127.0.0.1 (a free port) with ``handler``; shut down on exit."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (right now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
