"""The operations endpoint of ``cliphaze serve``: ``/healthz``, ``/cameras`` (JSON) and ``/metrics``.

Binds 127.0.0.1 unless told otherwise. ``/healthz`` answers 200 while the process serves (its shared
dehazers are alive and it is not shutting down), 503 otherwise; ``/healthz?camera=NAME`` answers for one
camera (200 only while it delivers frames), so a watchdog can restart a camera's consumer, not the
whole server. The server runs in its own daemon threads; handlers only read snapshots.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

logger = logging.getLogger(__name__)

DEFAULT_BIND = "127.0.0.1"


class HttpError(RuntimeError):
    """The endpoint could not be started (port in use, bad address)."""


class StatusProvider:
    """What the endpoint reads: set by the engine (or the Ray head, for a whole cluster).

    ``details`` adds fields to the ``/healthz`` answer (the Ray head: its actors).
    """

    def __init__(self, cameras: Callable[[], list[dict[str, Any]]], healthy: Callable[[], bool],
                 metrics: Callable[[], bytes], details: Callable[[], dict[str, Any]] = dict) -> None:  # fmt: skip
        self.cameras = cameras
        self.healthy = healthy
        self.metrics = metrics
        self.details = details


def _handler(provider: StatusProvider) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
            logger.debug("http: " + format, *args)

        def _send(self, code: int, body: bytes, kind: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _json(self, code: int, payload: Any) -> None:
            self._send(code, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode(), "application/json")

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            url = urlsplit(self.path)
            if url.path == "/metrics":
                self._send(200, provider.metrics(), "text/plain; version=0.0.4; charset=utf-8")
            elif url.path == "/cameras":
                self._json(200, {"cameras": provider.cameras()})
            elif url.path == "/healthz":
                wanted = parse_qs(url.query).get("camera")
                if wanted:
                    found = [c for c in provider.cameras() if c["name"] == wanted[0]]
                    if not found:
                        self._json(404, {"error": f"no camera {wanted[0]!r}"})
                    else:
                        ok = found[0]["state"] == "running"
                        self._json(200 if ok else 503, {"camera": wanted[0], "state": found[0]["state"]})
                    return
                ok = provider.healthy()
                cameras = provider.cameras()
                down = sorted(c["name"] for c in cameras if c["state"] != "running")
                self._json(200 if ok else 503, {"status": "ok" if ok else "unavailable", "cameras": len(cameras),
                                                "not_running": down, **provider.details()})  # fmt: skip
            else:
                self._json(404, {"error": "not found; try /healthz, /cameras, /metrics"})

    return Handler


class StatusServer:
    """HTTP endpoint in daemon threads; :meth:`close` stops it."""

    def __init__(self, provider: StatusProvider, port: int, addr: str = DEFAULT_BIND) -> None:
        try:
            self._server = ThreadingHTTPServer((addr, port), _handler(provider))
        except OSError as exc:
            raise HttpError(f"cannot serve status on {addr}:{port}: {exc.strerror or exc}") from exc
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.addr = addr
        self._thread = threading.Thread(target=self._server.serve_forever, name="serve-http", daemon=True)
        self._thread.start()
        logger.info("status at http://%s:%d/cameras, /healthz, /metrics", addr, self.port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()
