"""The serving engine: cameras, their shared dehazers, reload, drain; and ``serve``, the command's main loop.

One :class:`ServeEngine` per process (or per Ray actor). It keeps one shared dehazer and one
:class:`~pipelines.serve.batcher.CrossCameraBatcher` per (model, weights) on its device, and one
:class:`~pipelines.serve.camera.CameraWorker` per camera. :meth:`ServeEngine.apply` moves from the running
set of cameras to a new configuration: cameras that were removed or whose settings changed stop (drain and
finalize), new or changed ones start, the others are not touched. :meth:`ServeEngine.stop` drains every
camera in parallel, then stops the batchers.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.serve.batcher import BatchConfig, CrossCameraBatcher
from pipelines.serve.camera import CameraWorker, OutputWatch
from pipelines.serve.config import CameraConfig, ServeConfig, load_config
from pipelines.stats import FrameDone
from stream.uri import redact

logger = logging.getLogger(__name__)

STOP_JOIN_S = 30.0  # longest wait for one camera to drain and finalize on shutdown
LOOP_POLL_S = 0.2  # how often the main loop checks stop, reload and "every camera finished"
WATCH_S = 1.0  # how often the main loop looks for cameras whose output stopped (logged once, see OutputWatch)


@dataclass(frozen=True)
class ServeOptions:
    """Process-wide settings (from the command line; a reload does not change them)."""

    batch: BatchConfig = field(default_factory=BatchConfig)  # cross-camera batching
    device: str = "auto"  # auto | cpu | cuda | cuda:N: where the shared dehazers run
    precision: str = "fp32"  # CLIPHaze network precision
    scan_backend: str = "auto"  # selective-scan backend of CLIPHaze
    threads: int = 0  # torch CPU threads (0 = half the cores: decode and encode need the rest)
    http_port: int | None = 9110  # /healthz, /cameras, /metrics; None = no endpoint
    http_addr: str = "127.0.0.1"  # bind address of the endpoint (loopback unless told otherwise)
    exit_when_done: bool = True  # leave once every camera has finished (file sources); live ones never do


class ServeEngine:
    """Cameras and shared dehazers of one process (see module docstring). Thread-safe: ``apply`` and ``stop``
    take turns; the status readers never wait for them."""

    def __init__(self, options: ServeOptions) -> None:
        from pipelines.serve.metrics import ServeMetrics

        self.options = options
        self._lock = threading.RLock()
        self._batchers: dict[tuple[str, str], CrossCameraBatcher] = {}
        self._workers: dict[str, CameraWorker] = {}
        self._stopping = False
        self._device: Any = None
        self.final: dict[str, dict[str, Any]] = {}  # last status of each camera that stopped
        self.metrics = ServeMetrics(self.cameras, self.batchers)

    # --- status -----------------------------------------------------------------------------------------

    # Readers copy the dicts without the lock (one C-level copy under the GIL): a reload or a drain, which holds
    # the lock for seconds, must not stall /cameras and /healthz.

    def cameras(self) -> list[dict[str, Any]]:
        return [w.status.snapshot() for w in list(self._workers.values())]

    def batchers(self) -> list[dict[str, Any]]:
        items = list(self._batchers.items())
        out = []
        for (model, weights), batcher in items:
            c = batcher.counters
            out.append({"model": model + (f":{Path(weights).name}" if weights else ""), "calls": c.calls,
                        "frames": c.frames, "largest": c.largest, "failures": c.failures,
                        "cameras": batcher.cameras})  # fmt: skip
        return out

    def healthy(self) -> bool:
        return not self._stopping and all(b.is_alive() for b in list(self._batchers.values()))

    def all_finished(self) -> bool:
        workers = list(self._workers.values())
        return bool(workers) and all(not w.is_alive() for w in workers)

    # --- shared dehazers --------------------------------------------------------------------------------

    def _batcher(self, camera: CameraConfig) -> CrossCameraBatcher:
        key = camera.model_key
        batcher = self._batchers.get(key)
        if batcher is None:
            import torch

            from pipelines.dehazers import choose_dehazer, create_dehazer, resolve_device

            if self._device is None:
                self._device = resolve_device(self.options.device)
                if self._device.type == "cpu":
                    torch.set_num_threads(self.options.threads or max(1, (os.cpu_count() or 1) // 2))
            choice = choose_dehazer(camera.model, camera.weights)
            dehazer = create_dehazer(choice, self._device, precision=self.options.precision,
                                     scan_backend=self.options.scan_backend)  # fmt: skip
            logger.info("shared dehazer %s on %s (%s)", dehazer.name, self._device, choice.note)
            batcher = CrossCameraBatcher(dehazer, self.options.batch, name=camera.model)
            self._batchers[key] = batcher
        return batcher

    # --- cameras ----------------------------------------------------------------------------------------

    def _on_frame(self, camera: str, event: FrameDone) -> None:
        self.metrics.frame(camera, event)

    def _start(self, camera: CameraConfig) -> None:
        worker = CameraWorker(camera, self._batcher(camera), on_frame=self._on_frame)
        self._workers[camera.name] = worker
        worker.start()

    def _stop_all(self, names: list[str]) -> None:
        workers = [self._workers.pop(name) for name in names]
        for worker in workers:
            worker.request_stop()
        for worker in workers:
            if not worker.join(STOP_JOIN_S):
                logger.warning("camera %s did not stop within %.0f s; leaving it", worker.name, STOP_JOIN_S)
            self.final[worker.name] = worker.status.snapshot()
            self.metrics.forget(worker.name)

    def apply(self, config: ServeConfig) -> dict[str, list[str]]:
        """Move to ``config``: stop removed and changed cameras, start new and changed ones.

        Returns:
            Camera names by what happened: ``added``, ``removed``, ``changed``, ``unchanged``.
        """
        with self._lock:
            if self._stopping:
                return {"added": [], "removed": [], "changed": [], "unchanged": []}
            wanted = config.by_name()
            running = {name: w.camera for name, w in self._workers.items()}
            removed = [n for n in running if n not in wanted]
            changed = [n for n in running if n in wanted and wanted[n] != running[n]]
            added = [n for n in wanted if n not in running]
            unchanged = [n for n in running if n in wanted and n not in changed]
            # create every shared dehazer first: a model that cannot load leaves the running cameras alone
            for name in added + changed:
                self._batcher(wanted[name])
            self._stop_all(removed + changed)
            for name in changed + added:
                self._start(wanted[name])
            for key in [k for k, b in self._batchers.items() if b.cameras == 0 and
                        all(w.camera.model_key != k for w in self._workers.values())]:  # fmt: skip
                self._batchers.pop(key).close()
        return {"added": added, "removed": removed, "changed": changed, "unchanged": unchanged}

    def stop(self) -> None:
        """Drain and finalize every camera (in parallel), then stop the shared dehazers."""
        with self._lock:
            self._stopping = True
            self._stop_all(list(self._workers))
            for batcher in self._batchers.values():
                batcher.close()
            self._batchers.clear()


def reload_config(engine: ServeEngine, path: Path, load: Any) -> None:
    """SIGHUP: read the file again and apply it; a bad file keeps the running cameras (one error line)."""
    try:
        config = load(path)
        changes = engine.apply(config)  # builds any new shared dehazer before it stops or starts a camera
    except Exception as exc:  # reload boundary: a bad file or a model that cannot load must not end the server
        logger.error("reload: %s; keeping the running cameras", redact(str(exc).strip().splitlines()[0] if
                     str(exc).strip() else type(exc).__name__))  # fmt: skip
        logger.debug("reload failure", exc_info=True)
        return
    logger.warning("reload: %d added, %d removed, %d changed, %d unchanged",
                   *(len(changes[k]) for k in ("added", "removed", "changed", "unchanged")))  # fmt: skip


def serve(path: Path, options: ServeOptions, stop: threading.Event, reload: threading.Event, *,
          rtsp_user: str | None = None, rtsp_password: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Run ``cliphaze serve`` on this machine until ``stop`` is set (or every camera finished).

    ``reload`` is set by SIGHUP. Returns the cameras' final status.

    Raises:
        ServeConfigError: the file is unusable at start.
        HttpError: the status endpoint cannot bind.
    """
    from pipelines.serve.http import StatusProvider, StatusServer

    def load(p: Path) -> ServeConfig:
        return load_config(p, rtsp_user=rtsp_user, rtsp_password=rtsp_password)

    config = load(path)
    engine = ServeEngine(options)
    http = None
    try:
        if options.http_port is not None:
            provider = StatusProvider(engine.cameras, engine.healthy, engine.metrics.text)
            http = StatusServer(provider, options.http_port, options.http_addr)
        engine.apply(config)
        logger.warning("serving %d camera(s)%s", len(config.cameras),
                       f"; status at http://{http.addr}:{http.port}/cameras" if http else "")  # fmt: skip
        watch, last_watch = OutputWatch(), time.monotonic()
        while not stop.wait(LOOP_POLL_S):
            if reload.is_set():
                reload.clear()
                reload_config(engine, path, load)
            if time.monotonic() - last_watch >= WATCH_S:
                watch.check(engine.cameras())
                last_watch = time.monotonic()
            if options.exit_when_done and engine.all_finished():
                logger.info("every camera finished")
                break
    finally:
        engine.stop()
        if http is not None:
            http.close()
    return list(engine.final.values())


def wait_until(predicate: Any, timeout_s: float, poll_s: float = 0.1) -> bool:
    """Poll ``predicate`` until it is true or ``timeout_s`` passes (tests and the Ray head)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return bool(predicate())
