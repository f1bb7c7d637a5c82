"""``cliphaze serve CONFIG --ray ADDRESS``: the same serving engine in Ray actors across a cluster.

Ray (``pip install 'cliphaze[ray]'``) does the cluster work: processes on every node, placement, and
restarting an actor that dies. We add only the serving policy:

- **Placement.** One serving actor per GPU (``num_gpus=1``), or one per node on CPU-only nodes, each
  pinned softly to its node (it may move when the node is gone). ``--ray-actors N`` overrides the count.
  The actors reserve a token ``ACTOR_CPUS`` of a CPU, not a whole one: a CPU actor uses its node's cores
  anyway (decode, encode, dehaze), and a whole CPU would keep an actor whose node is gone from being
  restarted on a node that already serves. The rules are in :mod:`pipelines.serve.ray_plan`.
- **Scale-out.** Without ``--ray-actors``, the head checks the nodes every few seconds; a node that joined
  (or came back) gets its actors, and new cameras (a reload) go to the least-loaded actor, so to them.
  Running cameras are not moved: that would cut their output.
- **Spread by load.** Each camera costs its model's weight (a CLIPHaze camera costs more than a dcp one);
  a new camera goes to the least-loaded actor, and a camera stays on its actor across reloads.
- **Restart.** Actors are created with ``max_restarts=-1``: Ray restarts a dead actor (on the same node, or
  on another one when its node is gone). Every actor has an incarnation id; the head polls the actors,
  and when one answers with a new incarnation it hands it its cameras again, which resume. An actor Ray
  moved off a node that is gone keeps its cameras (and its planned node: no second actor is made for it).
- **One view.** The head (the process that ran the command) serves ``/healthz`` (with every actor, its
  node and pid), ``/cameras`` (every camera, with its actor, node and pid) and ``/metrics`` (the latency
  histograms included) for the whole cluster, from the actors' snapshots.

``--ray local`` starts a private Ray instance on this machine (tests, trying it out); ``auto`` or an
address joins a running cluster (``ray start --head`` on the head node).
"""

from __future__ import annotations

import logging
import signal
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from pipelines.serve.camera import OutputWatch
from pipelines.serve.config import CameraConfig, ServeConfig, ServeConfigError, load_config
from pipelines.serve.engine import LOOP_POLL_S, ServeEngine, ServeOptions
from pipelines.serve.metrics import LatencyCounts
from pipelines.serve.ray_plan import ActorRecord, Slot, plan_actors, plan_new_actors, spread

logger = logging.getLogger(__name__)

INSTALL_HINT = "--ray needs Ray, which is not installed: pip install 'cliphaze[ray]'"
POLL_S = 1.0  # how often the head asks every actor for its status
POLL_WAIT_S = 1.0  # longest a poll waits for the answers; a slower actor's answer is picked up by a later poll
CALL_TIMEOUT_S = 10.0  # a status call unanswered this long counts the actor as away (and it is asked again)
NODE_CHECK_S = 5.0  # how often the head looks for nodes that have no actor yet (scale-out)
JOIN_TIMEOUT_S = 5.0  # a cluster address that does not answer a TCP connect within this is reported at once
STOP_TIMEOUT_S = 60.0  # longest wait for the actors to drain and finalize on shutdown
# CPU an actor reserves: not 0 (with Ray 2.60 an actor that asks for no resource ignored its soft node affinity
# and landed on any node); not 1 (an actor whose node is gone stays pending on survivors whose CPUs are taken)
ACTOR_CPUS = 0.01


class RayUnavailable(ServeConfigError):
    """``--ray`` without Ray installed, or a cluster that cannot be reached (one line, exit code 2)."""


def _one_line(error: BaseException) -> str:
    from stream.uri import redact

    text = str(error).strip()
    return redact(text.splitlines()[0]) if text else type(error).__name__


def check_reachable(address: str) -> None:
    """Fail fast on an address nothing listens at (``ray.init`` would retry it for minutes).

    Raises:
        RayUnavailable: malformed address, or no TCP answer within ``JOIN_TIMEOUT_S``.
    """
    if address in ("auto", "local"):
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise RayUnavailable(f"--ray wants auto, local or HOST:PORT, got {address!r}")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=JOIN_TIMEOUT_S).close()
    except OSError as exc:
        raise RayUnavailable(f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}") from exc


def import_ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailable(INSTALL_HINT) from exc
    return ray


class ServeActorImpl:
    """The body of a serving actor: a :class:`ServeEngine` without its own HTTP endpoint."""

    def __init__(self, options: ServeOptions, index: int) -> None:
        import logging as _logging
        import os

        _logging.basicConfig(level=_logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        self.index = index
        self.incarnation = uuid.uuid4().hex
        self.pid = os.getpid()
        self.engine = ServeEngine(options)

    def apply(self, cameras: list[CameraConfig]) -> dict[str, list[str]]:
        return self.engine.apply(ServeConfig(tuple(cameras)))

    def status(self) -> dict[str, Any]:
        import ray

        return {"incarnation": self.incarnation, "pid": self.pid, "node": ray.get_runtime_context().get_node_id(),
                "healthy": self.engine.healthy(), "cameras": self.engine.cameras(),
                "batchers": self.engine.batchers(), "latency": self.engine.metrics.latency.snapshot()}  # fmt: skip

    def stop(self) -> list[dict[str, Any]]:
        self.engine.stop()
        return list(self.engine.final.values())


class RayServe:
    """The head: creates the actors, hands out cameras, watches incarnations, aggregates status."""

    def __init__(self, options: ServeOptions, *, address: str, actors: int | None) -> None:
        ray = import_ray()

        self._ray = ray
        check_reachable(address)
        # ray.init installs its own SIGTERM/SIGINT handlers in this process (they abort it); ours drain first
        ours = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            # "local" said explicitly: without an address ray.init joins any Ray it finds on this machine
            # (RAY_ADDRESS, or the last `ray start`), which is not the private instance --ray local promises
            ray.init(address=address, include_dashboard=False, configure_logging=False, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise RayUnavailable(f"cannot join the Ray cluster at {address}: {str(exc).splitlines()[0]}") from exc
        finally:
            if threading.current_thread() is threading.main_thread():
                for sig, handler in ours.items():
                    if callable(handler):
                        signal.signal(sig, handler)
        self._actor_options = ServeOptions(batch=options.batch, device=options.device, precision=options.precision,
                                           scan_backend=options.scan_backend, threads=options.threads,
                                           http_port=None, exit_when_done=False)  # fmt: skip
        self._remote = ray.remote(max_restarts=-1, max_task_retries=0)(ServeActorImpl)
        self._lock = threading.Lock()
        self._asking: dict[int, tuple[Any, float]] = {}  # actor index -> (status call not answered yet, asked at)
        self._requested = actors  # --ray-actors N fixes the count: no actors for nodes that join
        self._nodes_checked_s = time.monotonic()
        self.actors: list[ActorRecord] = []
        for slot in plan_actors(ray.nodes(), actors):
            self._create(slot)
        logger.warning("Ray: %d serving actor(s) on %d node(s)", len(self.actors),
                       len({a.slot.node for a in self.actors}))  # fmt: skip

    def _create(self, slot: Slot) -> ActorRecord:
        """Start one serving actor, softly pinned to ``slot.node``."""
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        index = len(self.actors)
        handle = self._remote.options(name=f"cliphaze-serve-{index}-{uuid.uuid4().hex[:6]}", num_cpus=ACTOR_CPUS,
                                      num_gpus=1 if slot.gpu else 0,
                                      scheduling_strategy=NodeAffinitySchedulingStrategy(slot.node, soft=True)
                                      ).remote(self._actor_options, index)  # fmt: skip
        actor = ActorRecord(index, slot, handle, {})
        with self._lock:
            self.actors.append(actor)
        return actor

    def _scale_to_new_nodes(self) -> None:
        """Actors for alive nodes that have none planned yet (joined, or came back under a new node id)."""
        slots = plan_new_actors(self._ray.nodes(), [a.slot for a in self.actors], self._requested)
        if slots:
            created = [self._create(slot) for slot in slots]
            logger.warning("Ray: %d node(s) joined; serving actor(s) %s added (%d in all); new cameras go to the "
                           "least-loaded actor, running ones stay", len({s.node for s in slots}),
                           ", ".join(str(a.index) for a in created), len(self.actors))  # fmt: skip

    def apply(self, config: ServeConfig) -> None:
        with self._lock:
            spread(config.cameras, self.actors)
            for actor in self.actors:
                actor.incarnation = ""  # hand every actor its (possibly changed) list at the next poll
        self.poll()

    def poll(self) -> None:
        """Ask every actor for its status (without waiting long for any one: an actor being created or restarted
        answers a later poll); give an actor with a new incarnation its cameras; give new nodes their actors."""
        ray = self._ray
        if self._requested is None and time.monotonic() - self._nodes_checked_s >= NODE_CHECK_S:
            self._nodes_checked_s = time.monotonic()
            self._scale_to_new_nodes()
        with self._lock:
            actors = list(self.actors)
        for actor in actors:
            if actor.index not in self._asking:
                self._asking[actor.index] = (actor.handle.status.remote(), time.monotonic())
        refs = [self._asking[a.index][0] for a in actors]
        ready = set(ray.wait(refs, num_returns=len(refs), timeout=POLL_WAIT_S)[0])
        for actor in actors:
            ref, asked_s = self._asking[actor.index]
            if ref not in ready:
                if time.monotonic() - asked_s > CALL_TIMEOUT_S:
                    self._away(actor, f"no answer in {CALL_TIMEOUT_S:.0f} s")
                    del self._asking[actor.index]  # ask again next time
                continue
            del self._asking[actor.index]
            try:
                status = ray.get(ref)
            except ray.exceptions.RayActorError as exc:
                self._away(actor, type(exc).__name__)
                continue
            self._update(actor, status)

    def _away(self, actor: ActorRecord, why: str) -> None:
        if actor.status is not None:
            logger.warning("Ray actor %d is away (%s); Ray restarts it", actor.index, why)
        actor.status = None

    def _update(self, actor: ActorRecord, status: dict[str, Any]) -> None:
        """Record an answer; an instance that has not got the actor's cameras yet (new, restarted) gets them."""
        ray = self._ray
        if status["incarnation"] != actor.incarnation:
            if actor.incarnation:
                logger.warning("Ray actor %d restarted (pid %d): resuming %d camera(s)", actor.index,
                               status["pid"], len(actor.cameras))  # fmt: skip
            try:
                ray.get(actor.handle.apply.remote(list(actor.cameras.values())), timeout=CALL_TIMEOUT_S * 6)
                status = ray.get(actor.handle.status.remote(), timeout=CALL_TIMEOUT_S)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
                self._away(actor, type(exc).__name__)
                return
            except ray.exceptions.RayTaskError as exc:  # e.g. a model that cannot load there: keep what runs
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                logger.error("Ray actor %d could not take its cameras: %s", actor.index, _one_line(cause))
            actor.incarnation = status["incarnation"]
        actor.status = status

    def cameras(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        with self._lock:
            actors = list(self.actors)
        for actor in actors:
            status = actor.status
            seen = {c["name"]: c for c in status["cameras"]} if status else {}
            # assigned cameras, and those the actor still runs (a removed camera is listed until it has drained)
            for name in sorted(set(actor.cameras) | set(seen)):
                entry = seen.get(name) or {"name": name, "state": "moving", "frames_out": 0, "drops": 0,
                                           "reconnects": 0, "restarts": 0}  # fmt: skip
                out.append({**entry, "actor": actor.index, "pid": status["pid"] if status else None,
                            "node": status["node"] if status else None})  # fmt: skip
        return out

    def batchers(self) -> list[dict[str, Any]]:
        return [{**b, "model": f"{b['model']}@{a.index}"} for a in self.actors if a.status
                for b in a.status["batchers"]]  # fmt: skip

    def latency(self) -> dict[str, LatencyCounts]:
        """Every camera's latency histogram, from the actors' last answers."""
        return {name: counts for a in self.actors if a.status for name, counts in a.status["latency"].items()}

    def healthy(self) -> bool:
        """Every actor with cameras answers and is healthy (an empty one still starting does not count)."""
        actors = list(self.actors)
        return any(a.status for a in actors) and all(
            a.status is not None and a.status["healthy"] for a in actors if a.cameras
        )

    def actor_table(self) -> dict[str, Any]:
        """``/healthz``'s ``actors``: each actor's planned node, where it runs now, and its cameras."""
        return {"actors": [{"actor": a.index, "planned_node": a.slot.node, "gpu": a.slot.gpu,
                            "node": a.status["node"] if a.status else None,
                            "pid": a.status["pid"] if a.status else None, "up": a.status is not None,
                            "cameras": sorted(a.cameras)} for a in list(self.actors)]}  # fmt: skip

    def stop(self) -> list[dict[str, Any]]:
        """Drain every actor (outputs finalized), then leave the cluster."""
        ray = self._ray
        final: list[dict[str, Any]] = []
        refs = [a.handle.stop.remote() for a in self.actors]
        # one deadline for all: each actor that cannot drain (its node gone, no GPU free for it) must not add one
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for actor, ref in zip(self.actors, refs):
            try:
                final += ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError) as exc:
                logger.error("Ray actor %d did not drain: %s", actor.index, type(exc).__name__)
            ray.kill(actor.handle, no_restart=True)
        ray.shutdown()
        return final


def serve_on_ray(path: Path, options: ServeOptions, stop: threading.Event, reload: threading.Event, *,
                 address: str, actors: int | None = None, rtsp_user: str | None = None,
                 rtsp_password: str | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """``cliphaze serve --ray``: like ``engine.serve``, with the cameras in Ray actors. Returns final status.

    Raises:
        RayUnavailable: Ray is not installed or the cluster cannot be joined.
        ServeConfigError: the file is unusable at start.
    """
    from pipelines.serve.http import StatusProvider, StatusServer
    from pipelines.serve.metrics import ServeMetrics

    def load(p: Path) -> ServeConfig:
        return load_config(p, rtsp_user=rtsp_user, rtsp_password=rtsp_password)

    config = load(path)
    import_ray()  # the install hint before anything starts
    head = RayServe(options, address=address, actors=actors)
    http = None
    try:
        metrics = ServeMetrics(head.cameras, head.batchers, head.latency)
        if options.http_port is not None:
            http = StatusServer(StatusProvider(head.cameras, head.healthy, metrics.text, head.actor_table),
                                options.http_port, options.http_addr)  # fmt: skip
        head.apply(config)
        logger.warning("serving %d camera(s) on Ray%s", len(config.cameras),
                       f"; status at http://{http.addr}:{http.port}/cameras" if http else "")  # fmt: skip
        last_poll, watch = time.monotonic(), OutputWatch()
        while not stop.wait(LOOP_POLL_S):
            if reload.is_set():
                reload.clear()
                try:
                    head.apply(load(path))
                    logger.warning("reload: cameras re-spread over %d actor(s)", len(head.actors))
                except Exception as exc:  # reload boundary: a bad file must not end the server
                    logger.error("reload: %s; keeping the running cameras", _one_line(exc))
            if time.monotonic() - last_poll >= POLL_S:
                head.poll()
                watch.check(head.cameras())  # every camera of the cluster, logged once here on the head
                last_poll = time.monotonic()
    finally:
        final = head.stop()
        if http is not None:
            http.close()
    return final
