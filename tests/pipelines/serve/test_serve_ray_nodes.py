"""``cliphaze serve --ray ADDRESS`` on a Ray cluster of two nodes (both on this machine, started by the test):
one actor per node, 2 cameras each; the worker node is lost (its raylet killed), its cameras resume on the
surviving node while the other node's cameras go on untouched; a node that joins gets a new actor, and a
camera added on reload goes to it."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import (
    assert_monotonic,
    cameras,
    frame_pts_s,
    free_port,
    get_json,
    rtsp_server_class,
    start_serve,
    stop_serve,
    wait_for,
    write_config,
)

RAY_START_S = 120.0  # Ray's processes on two nodes plus two actors importing torch, on 2 shared cores
# A lost node is declared dead after 5 missed 1 s health checks (Ray's default is 5 x 3 s); tighter than this
# risks a false death on this shared machine.
FAST_NODE_DEATH = {"health_check_period_ms": 1000, "health_check_timeout_ms": 1000,
                   "health_check_failure_threshold": 5}  # fmt: skip


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture
def two_nodes(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, Any]]:
    """(cluster, worker node): a head node and a worker node with 1 CPU each, in a private Ray temp dir."""
    cluster_utils = pytest.importorskip("ray.cluster_utils", reason="the [ray] extra is not installed")
    # a short private dir: Ray's socket paths must fit in 107 characters, and nothing else on the machine
    # may find this cluster (Ray records the last cluster started in its temp dir)
    root = tempfile.mkdtemp(prefix="chray", dir="/tmp")
    os.makedirs(os.path.join(root, "ray"))
    monkeypatch.setenv("RAY_TMPDIR", root)
    cluster = None
    try:
        cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "include_dashboard": False, "_system_config": FAST_NODE_DEATH})  # fmt: skip
        worker = cluster.add_node(num_cpus=1, include_dashboard=False)
        yield cluster, worker
    finally:
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.rtsp
@pytest.mark.slow
def test_two_nodes_one_lost_its_cameras_resume_on_the_other(four_cameras: list[Any], two_nodes: tuple[Any, Any],
                                                             tmp_path: Path) -> None:  # fmt: skip
    started = time.monotonic()
    cluster, worker = two_nodes
    head_node, lost_node = cluster.head_node.node_id, worker.node_id
    outputs = {f"c{i}": tmp_path / f"c{i}.mkv" for i in range(4)}
    sources = {n: four_cameras[i].url for i, n in enumerate(outputs)}
    config = write_config(tmp_path / "cams.yaml", {n: (sources[n], outputs[n]) for n in outputs})
    port, log = free_port(), tmp_path / "serve.log"
    proc = start_serve(config, port, log, "--ray", cluster.address)
    fifth = None
    try:
        wait_for(proc, log, lambda: len(c := cameras(port)) == 4 and all(x["frames_out"] > 25 for x in c.values()),
                 "4 cameras on 2 nodes", RAY_START_S)  # fmt: skip
        before = cameras(port)
        actors = get_json(port, "/healthz")[1]["actors"]  # plan_actors: one actor per (CPU) node
        assert sorted(a["planned_node"] for a in actors) == sorted([head_node, lost_node])
        assert all(a["node"] == a["planned_node"] for a in actors), (actors, head_node, lost_node)
        assert sorted(c["node"] for c in before.values()) == sorted([head_node, lost_node] * 2)  # 2 per node
        moved = sorted(n for n, c in before.items() if c["node"] == lost_node)
        lost_pid = before[moved[0]]["pid"]
        # the node is lost: every process of it killed at once, nothing drained (both nodes have 1 CPU: the
        # actor fits on the surviving node only because the actors reserve none)
        cluster.remove_node(worker, allow_graceful=False)
        lost_s = time.monotonic()
        wait_for(proc, log, lambda: all((c := cameras(port))[n]["node"] == head_node and c[n]["pid"] not in
                                        (None, lost_pid) and c[n]["state"] == "running" and
                                        c[n]["frames_out"] > 25 for n in moved),
                 "the lost node's cameras back on the other node", RAY_START_S)  # fmt: skip
        resumed_s = time.monotonic() - lost_s
        after = cameras(port)
        assert not _alive(lost_pid)  # no second writer of the same outputs
        for name, camera in after.items():
            if name not in moved:  # the surviving node's cameras were never interrupted
                assert camera["pid"] == before[name]["pid"] and camera["state"] == "running"
                assert camera["restarts"] == before[name]["restarts"]
                assert camera["frames_out"] > before[name]["frames_out"]
        wait_for(proc, log, lambda: all(cameras(port)[n]["frames_out"] > after[n]["frames_out"] for n in moved),
                 "the resumed cameras' frames growing", 30)  # fmt: skip

        # a node joins: it gets an actor of its own, and a camera added on reload goes to it (the least loaded)
        joined = cluster.add_node(num_cpus=1, include_dashboard=False).node_id
        wait_for(proc, log, lambda: any(a["planned_node"] == joined and a["up"] for a in
                                        get_json(port, "/healthz")[1]["actors"]), "an actor on the new node",
                 90)  # fmt: skip
        # a camera of its own: a second client's PLAY seeks a shared GStreamer test camera back to 0, so the first
        # client's picture would jump back (its PTS keep advancing since the re-basing fix, docs/reliability.md)
        _, server_class, free_port_pair = rtsp_server_class()
        fifth = server_class(free_port_pair())
        fifth.start()
        outputs["c4"], sources["c4"] = tmp_path / "c4.mkv", fifth.url
        write_config(config, {n: (sources[n], outputs[n]) for n in outputs})
        proc.send_signal(signal.SIGHUP)
        wait_for(proc, log, lambda: (c := cameras(port).get("c4")) is not None and c["node"] == joined and
                 c["state"] == "running" and c["frames_out"] > 25, "c4 on the new node", 60)  # fmt: skip
        assert all(c["pid"] == after[n]["pid"] for n, c in cameras(port).items() if n != "c4")  # nobody moved
        assert "joined" in log.read_text()
    finally:
        code = stop_serve(proc, 120)
        if fifth is not None:
            fifth.stop()
    assert code == 0, log.read_text()[-3000:]
    for name, path in outputs.items():
        assert path.exists() and not Path(str(path) + ".part").exists(), name
        assert_monotonic(frame_pts_s(path), path)
    for name in moved:  # what the lost node's actor had written is kept next to the new output
        assert (tmp_path / f"{name}.crash1.mkv").exists(), name
    print(f"wall {time.monotonic() - started:.1f} s, lost node's cameras resumed {resumed_s:.1f} s after the loss")
