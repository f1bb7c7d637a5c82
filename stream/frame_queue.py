"""Bounded hand-off between a decoder thread and the consumer.

Two policies: lossless (the producer waits: backpressure, for files) and keep-latest (the oldest frame
is dropped and counted, so latency never grows: live sources). End markers are never dropped. Audio
packets of a dropped frame move to the next frame, so audio is never lost.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from typing import Any

from stream.records import Frame

POLL_S = 0.05  # how often a blocked producer rechecks its stop flag


class FrameQueue:
    """Thread-safe bounded queue of ``Frame`` plus terminal items."""

    def __init__(self, maxsize: int, *, drop_oldest: bool) -> None:
        if maxsize < 1:
            raise ValueError(f"queue size must be >= 1, got {maxsize}")
        self._maxsize = maxsize
        self._drop_oldest = drop_oldest
        self._items: collections.deque[Any] = collections.deque()
        self._cond = threading.Condition()
        self.drops = 0  # frames discarded by keep-latest
        self._orphans: tuple[Any, ...] = ()  # audio of a dropped frame that had no successor yet

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def _frames(self) -> int:
        return sum(1 for item in self._items if isinstance(item, Frame))

    def put(self, frame: Frame, *, alive: threading.Event | None = None, heartbeat: Any = None) -> bool:
        """Add a frame.

        Args:
            frame: The frame.
            alive: While set, a lossless put keeps waiting; once cleared the put gives up.
            heartbeat: Called while waiting, so a blocked producer is not mistaken for a stalled source.

        Returns:
            False when the put gave up because ``alive`` was cleared.
        """
        with self._cond:
            while self._frames() >= self._maxsize:
                if self._drop_oldest:
                    self._drop_one()
                    break
                if alive is not None and not alive.is_set():
                    return False
                if heartbeat is not None:
                    heartbeat()
                self._cond.wait(POLL_S)
            self._items.append(frame)
            self._cond.notify_all()
            return True

    def _drop_one(self) -> None:
        for i, item in enumerate(self._items):
            if isinstance(item, Frame):
                del self._items[i]
                self.drops += 1
                if item.packets:
                    self._carry(item.packets, i)
                return

    def _carry(self, packets: tuple[Any, ...], at: int) -> None:
        """Prepend audio packets of a dropped frame to the item now at position ``at``."""
        if at < len(self._items):
            nxt = self._items[at]
            self._items[at] = dataclasses.replace(nxt, packets=packets + tuple(nxt.packets))
        else:
            self._orphans = self._orphans + packets

    def take_orphans(self) -> tuple[Any, ...]:
        """Audio packets of a dropped frame that had no successor yet (prepend them to the next frame)."""
        with self._cond:
            orphans = self._orphans
            self._orphans = ()
            return orphans

    def put_end(self, item: Any) -> None:
        """Add a terminal item; never blocks, never dropped."""
        with self._cond:
            self._items.append(item)
            self._cond.notify_all()

    def get(self, timeout_s: float | None) -> Any:
        """Next item, or None when ``timeout_s`` passes first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while not self._items:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return None
                self._cond.wait(remaining)
            item = self._items.popleft()
            self._cond.notify_all()
            return item

    def clear(self) -> None:
        """Drop everything (on close), waking a blocked producer."""
        with self._cond:
            self._items.clear()
            self._cond.notify_all()
