"""``cliphaze serve --ray``: placement and spreading (fast), and a local Ray cluster running the 4-camera
config on 2 actors, one of which is killed (its cameras come back), then SIGHUP removes a camera."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest
from serve_helpers import (
    assert_monotonic,
    cameras,
    frame_pts_s,
    free_port,
    get_json,
    get_text,
    start_serve,
    stop_serve,
    wait_for,
    write_config,
)

from pipelines.serve.config import CameraConfig
from pipelines.serve.ray_plan import ActorRecord, NoServingNodes, Slot, plan_actors, plan_new_actors, spread

RAY_START_S = 120.0  # Ray's own processes plus two actors importing torch, on 2 shared cores


def test_one_actor_per_gpu_else_per_node() -> None:
    nodes = [{"Alive": True, "NodeID": "gpu-node", "Resources": {"CPU": 32, "GPU": 2}},
             {"Alive": True, "NodeID": "cpu-node", "Resources": {"CPU": 16}},
             {"Alive": True, "NodeID": "head", "Resources": {"memory": 1e9}},  # ray start --head --num-cpus 0
             {"Alive": False, "NodeID": "dead-node", "Resources": {"CPU": 16, "GPU": 8}}]  # fmt: skip
    gpu, cpu = Slot("gpu-node", True), Slot("cpu-node", False)
    assert plan_actors(nodes, None) == [gpu, gpu, cpu]
    assert plan_actors(nodes[1:2], 2) == [cpu, cpu]
    with pytest.raises(NoServingNodes, match="no alive node"):
        plan_actors(nodes[2:], None)


def test_cameras_are_spread_by_load_and_stay_on_their_actor() -> None:
    actors = [ActorRecord(0, Slot("n0", False), None, {}), ActorRecord(1, Slot("n1", False), None, {})]
    cams = tuple(CameraConfig(f"c{i}", f"rtsp://cam/{i}", f"{i}.mkv") for i in range(4))
    heavy = CameraConfig("big", "rtsp://cam/big", "big.mkv", model="cliphaze")
    spread((heavy, *cams), actors)
    loads = sorted(a.load for a in actors)
    assert loads == [4.0, 4.0]  # the CLIPHaze camera weighs as much as four dcp cameras
    where = {name: a.index for a in actors for name in a.cameras}
    spread(cams + (CameraConfig("c9", "rtsp://cam/9", "9.mkv"),), actors)  # big removed, c9 added
    assert all(where[n] == a.index for a in actors for n in a.cameras if n in where)  # nobody moved
    assert "big" not in {n for a in actors for n in a.cameras}
    # c9 went to the actor that big left empty; running cameras are not moved to rebalance (that would cut them)
    assert [sorted(a.cameras) for a in actors] == [["c9"], ["c0", "c1", "c2", "c3"]]


def test_nodes_that_join_get_their_actors_unless_the_count_was_given() -> None:
    a, b, c = (Slot(n, False) for n in "abc")
    gpu = Slot("g", True)
    alive = {n: {"Alive": True, "NodeID": n, "Resources": {"CPU": 8}} for n in "abc"}
    gpu_node = {"Alive": True, "NodeID": "g", "Resources": {"CPU": 8, "GPU": 2}}
    assert plan_new_actors([alive["a"], alive["b"]], [a], None) == [b]  # b joined after the start
    assert plan_new_actors([alive["a"], alive["b"]], [a], 1) == []  # --ray-actors 1: the count stays
    assert plan_new_actors([alive["a"], alive["b"]], [a, b], None) == []  # nothing new
    # b is gone (its actor was restarted on a by Ray and keeps b as its planned node); b came back as c:
    # c gets an actor, a does not get a second one for the actor that moved onto it
    gone = {"Alive": False, "NodeID": "b", "Resources": {"CPU": 8}}
    assert plan_new_actors([alive["a"], gone, alive["c"]], [a, b], None) == [c]
    assert plan_new_actors([gpu_node], [gpu], None) == [gpu]  # one actor per GPU: the second GPU gets one


def test_new_cameras_go_to_a_new_actor_and_running_ones_stay() -> None:
    cams = tuple(CameraConfig(f"c{i}", f"rtsp://cam/{i}", f"{i}.mkv") for i in range(4))
    actors = [ActorRecord(0, Slot("a", False), None, {}), ActorRecord(1, Slot("b", False), None, {})]
    spread(cams, actors)
    where = {name: a.index for a in actors for name in a.cameras}
    # node b is gone: Ray restarted actor 1 on a (its record, cameras included, is unchanged); node c joined
    actors.append(ActorRecord(2, Slot("c", False), None, {}))
    spread(cams + (CameraConfig("c4", "rtsp://cam/4", "4.mkv"),), actors)  # a reload adds c4
    assert {name: a.index for a in actors for name in a.cameras if name != "c4"} == where  # nobody moved
    assert list(actors[2].cameras) == ["c4"]


@pytest.mark.rtsp
@pytest.mark.slow
def test_local_ray_cluster_two_actors_one_killed_cameras_come_back(four_cameras: list[Any], tmp_path: Path) -> None:
    pytest.importorskip("ray", reason="the [ray] extra is not installed")
    outputs = {f"c{i}": tmp_path / f"c{i}.mkv" for i in range(4)}
    config = write_config(tmp_path / "cams.yaml", {n: (four_cameras[i].url, outputs[n]) for i, n in
                                                   enumerate(outputs)})  # fmt: skip
    port, log = free_port(), tmp_path / "serve.log"
    # --ray local is a private instance: an address in the environment (nothing listens there) is not joined
    proc = start_serve(config, port, log, "--ray", "local", "--ray-actors", "2", env={"RAY_ADDRESS": "127.0.0.1:9"})
    try:
        wait_for(proc, log, lambda: len(c := cameras(port)) == 4 and all(x["frames_out"] > 25 for x in c.values()),
                 "4 cameras on 2 actors", RAY_START_S)  # fmt: skip
        before = cameras(port)
        assert sorted({c["actor"] for c in before.values()}) == [0, 1]
        assert sorted(sum(c["actor"] == a for c in before.values()) for a in (0, 1)) == [2, 2]  # spread
        health = get_json(port, "/healthz")[1]  # the head lists its actors: both on this node, 2 cameras each
        assert [(a["actor"], a["up"], len(a["cameras"])) for a in health["actors"]] == [(0, True, 2), (1, True, 2)]
        victim = before["c0"]
        moved = [n for n, c in before.items() if c["actor"] == victim["actor"]]
        os.kill(victim["pid"], signal.SIGKILL)  # the actor's process dies
        wait_for(proc, log, lambda: all((c := cameras(port))[n]["pid"] not in (None, victim["pid"]) and
                 c[n]["state"] == "running" and c[n]["frames_out"] > 25 for n in moved),
                 "the killed actor's cameras back", RAY_START_S)  # fmt: skip
        after = cameras(port)
        for name, camera in after.items():
            if name not in moved:  # the other actor's cameras were never interrupted
                assert camera["pid"] == before[name]["pid"] and camera["frames_out"] > before[name]["frames_out"]
        metrics = get_text(port, "/metrics")  # the head's view of the whole cluster
        assert all(f'cliphaze_camera_frames_out_total{{camera="{n}"}}' in metrics for n in outputs)
        assert all(f'cliphaze_camera_latency_ms_bucket{{camera="{n}",le="+Inf"}}' in metrics for n in outputs)
        # SIGHUP on the head: c3 removed; its actor stops it, every other camera goes on in its process
        write_config(config, {n: (four_cameras[i].url, outputs[n]) for i, n in enumerate(outputs) if n != "c3"})
        proc.send_signal(signal.SIGHUP)
        wait_for(proc, log, lambda: "c3" not in cameras(port), "c3 removed on the cluster", 60)
        assert outputs["c3"].exists() and not Path(str(outputs["c3"]) + ".part").exists()  # finalized
        assert all(c["pid"] == after[n]["pid"] for n, c in cameras(port).items())
    finally:
        code = stop_serve(proc, 120)
    assert code == 0, log.read_text()[-3000:]
    for name, path in outputs.items():
        assert path.exists() and not Path(str(path) + ".part").exists(), name
        assert_monotonic(frame_pts_s(path), path)
    for name in moved:  # what the killed actor had written is kept next to the new output, not overwritten
        assert (tmp_path / f"{name}.crash1.mkv").exists(), name
