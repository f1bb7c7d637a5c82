"""Where the serving actors of ``cliphaze serve --ray`` go, and which cameras each one runs: pure logic, no Ray.

- **Slots.** A node holds one serving actor per GPU, or one in all when it has CPUs but no GPU; a dead node,
  or one with neither (a head started with ``ray start --head --num-cpus 0`` to keep work off it), holds none.
- **Scale-out.** Unless ``--ray-actors`` fixed the count, a node that is alive and has fewer actors planned
  on it than it has slots (it joined after the start, or came back: a restarted raylet is a new node id) gets
  actors for the difference. An actor keeps the node it was planned on even when Ray restarted it elsewhere,
  so such a move is not counted twice.
- **Spread by load.** Each camera costs its model's weight; a new camera goes to the least-loaded actor (a new,
  empty one first), and a camera stays on its actor across reloads and restarts: moving it would cut its output.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from pipelines.serve.config import CameraConfig, ServeConfigError

MODEL_WEIGHT = {"none": 0.2, "dcp": 1.0, "cliphaze": 4.0}  # relative cost of one camera, for spreading


class NoServingNodes(ServeConfigError):
    """The cluster has no alive node that can hold a serving actor (one line, exit code 2)."""


@dataclass(frozen=True)
class Slot:
    """Where one serving actor is planned."""

    node: str  # Ray node id (hex) the actor is softly pinned to
    gpu: bool  # the actor takes one GPU of that node (else it runs on the node's CPUs)


@dataclass
class ActorRecord:
    """The head's record of one serving actor."""

    index: int  # 0, 1, ... in creation order; never reused
    slot: Slot  # where it was planned (Ray may have restarted it elsewhere since)
    handle: Any  # the Ray actor handle (None in tests)
    cameras: dict[str, CameraConfig]  # assigned to it
    incarnation: str = ""  # of the instance that got ``cameras``; a new one gets them again
    status: dict[str, Any] | None = None  # last answer (None: away, or not started yet)

    @property
    def load(self) -> float:
        return sum(MODEL_WEIGHT.get(c.model, 1.0) for c in self.cameras.values())


def node_slots(node: dict[str, Any]) -> list[Slot]:
    """The serving actors one ``ray.nodes()`` entry (``Alive``, ``NodeID``, ``Resources``) can hold."""
    if not node.get("Alive"):
        return []
    resources = node.get("Resources", {})
    gpus = int(resources.get("GPU", 0))
    if gpus:
        return [Slot(node["NodeID"], True)] * gpus
    return [Slot(node["NodeID"], False)] if resources.get("CPU", 0) > 0 else []


def plan_actors(nodes: list[dict[str, Any]], requested: int | None) -> list[Slot]:
    """One slot per actor to create at start: one per GPU, else one per CPU node.

    Args:
        nodes: ``ray.nodes()`` entries.
        requested: actor count from ``--ray-actors`` (spread round-robin over the slots found).

    Raises:
        NoServingNodes: no alive node has a CPU or a GPU.
    """
    slots = [slot for node in nodes for slot in node_slots(node)]
    if not slots:
        raise NoServingNodes("the Ray cluster has no alive node with a CPU or a GPU to serve on")
    if requested is None:
        return slots
    return [slots[i % len(slots)] for i in range(requested)]


def plan_new_actors(nodes: list[dict[str, Any]], planned: list[Slot], requested: int | None) -> list[Slot]:
    """Slots of alive nodes beyond the actors already planned on them (see module docstring).

    Args:
        nodes: ``ray.nodes()`` entries now.
        planned: the slot of every actor the head has (alive, restarting or moved).
        requested: ``--ray-actors``; a count given there is kept (no new actors).
    """
    if requested is not None:
        return []
    have = Counter(slot.node for slot in planned)
    new: list[Slot] = []
    for node in nodes:
        slots = node_slots(node)
        new += slots[have[node["NodeID"]] :]
    return new


def spread(cameras: tuple[CameraConfig, ...], actors: list[ActorRecord]) -> None:
    """Assign cameras that no actor has yet to the least-loaded actors; drop cameras no longer wanted."""
    wanted = {c.name: c for c in cameras}
    for actor in actors:
        actor.cameras = {n: wanted[n] for n in actor.cameras if n in wanted}  # changed settings follow the name
    placed = {n for a in actors for n in a.cameras}
    new = sorted((c for c in cameras if c.name not in placed), key=lambda c: -MODEL_WEIGHT.get(c.model, 1.0))
    for camera in new:
        min(actors, key=lambda a: (a.load, a.index)).cameras[camera.name] = camera
