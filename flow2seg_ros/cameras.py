"""Frames of several cameras waiting for one worker: latest-wins slots, round robin, batches.

No ROS here (the node hands in headers as opaque ``meta``), so the scheduling is tested alone.
:func:`run_batch` runs a taken batch through the cameras' pipelines (one network call).

* Each camera has one slot. A new frame replaces a frame still waiting there (counted as
  dropped: the newest frame wins) and is paired with the frame *received* just before it, so
  flow is always computed between consecutive received frames, dropped or not.
* :meth:`FrameScheduler.take` hands a worker a batch: the waiting frames of several cameras
  that share a batching key (the network input size), in round-robin order starting after the
  camera served last, so a flooding camera cannot starve a slow one.
* Several workers may take batches; a camera whose frame is in work is not served again until
  :meth:`FrameScheduler.done`, so each camera's frames go through its pipeline one at a time
  and in order. With two workers a slow camera's frame starts at once even while a flooding
  camera keeps the other worker busy, instead of waiting for that frame to finish.
* When the first frame of a batch is found and other cameras that are streaming (and not in
  work) have no frame waiting yet, ``take`` waits at most ``batch_wait_s`` for them (0 = never
  wait); it stops waiting as soon as each of them has a frame waiting. Other workers do not
  take frames meanwhile.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
import threading
import time
from typing import Any, Callable, Hashable, Iterable, Mapping, Optional, Sequence

import numpy as np

__all__ = ['CameraSlot', 'CameraStats', 'FrameScheduler', 'PendingFrame', 'run_batch']

#: A camera counts as streaming (worth waiting for) when its last frame came this recently.
STREAMING_WINDOW_S = 1.0


@dataclass
class PendingFrame:
    """One camera frame for the worker: the frame, its metadata and the frame received before.

    Attributes:
        camera: the camera's name.
        rgb: (H, W, 3) uint8 RGB.
        stamp: its time in seconds.
        meta: what the caller keeps with the frame (the node: the message header).
        prev: ``(rgb, stamp)`` of the frame received just before it on this camera, or None.
        received_at: ``time.monotonic()`` when it arrived.
        bgr: ``rgb`` and ``prev`` are in blue, green, red order (a bgr8 camera on the device
            path, which swaps them there).
    """

    camera: str
    rgb: np.ndarray
    stamp: float
    meta: Any
    prev: Optional[tuple[np.ndarray, float]]
    received_at: float
    bgr: bool = False


@dataclass
class CameraStats:
    """Counters of one camera (read by diagnostics and tests)."""

    received: int = 0
    processed: int = 0
    dropped: int = 0
    bad_input: int = 0
    failed: int = 0
    resets: int = 0
    last_reset_reason: Optional[str] = None
    last_warning: str = ''
    last_processing_ms: float = float('nan')
    last_latency_ms: float = float('nan')
    last_batch_size: int = 0


@dataclass
class CameraSlot:
    """One camera's latest-wins slot and counters."""

    name: str
    pending: Optional[PendingFrame] = None
    last_received: Optional[tuple[np.ndarray, float]] = None
    last_bgr: bool = False
    last_received_at: float = -1e9
    stats: CameraStats = field(default_factory=CameraStats)


class FrameScheduler:
    """Latest-wins slots for named cameras and the batches workers take from them.

    Args:
        cameras: camera names, in round-robin order.
        batch_wait_s: longest wait for other streaming cameras' frames once a batch has its
            first frame (0 = never wait).
        max_batch: most frames in one batch (0 = one per camera).
        key: the batching key of a frame (frames of one batch share it); None = one key.
        clock: monotonic time source (tests).
    """

    def __init__(self, cameras: Iterable[str], *, batch_wait_s: float = 0.0, max_batch: int = 0,
                 key: Optional[Callable[[PendingFrame], Hashable]] = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        names = list(cameras)
        if not names or len(set(names)) != len(names):
            raise ValueError(f'camera names must be given and unique, got {names}')
        if batch_wait_s < 0 or max_batch < 0:
            raise ValueError(f'batch_wait_s and max_batch must be >= 0, got {batch_wait_s}, '
                             f'{max_batch}')
        self.slots = {name: CameraSlot(name) for name in names}
        self._order = names
        self.batch_wait_s = float(batch_wait_s)
        self.max_batch = int(max_batch) or len(names)
        self._key = key or (lambda frame: None)
        self._clock = clock
        self._cond = threading.Condition()
        self._cursor = 0
        self._in_work: set[str] = set()
        self._gathering = False
        self._stopped = False
        #: how many batches of each size were taken
        self.batch_sizes: Counter[int] = Counter()

    # ------------------------------------------------------------------ producer side
    def put(self, camera: str, rgb: np.ndarray, stamp: float, meta: Any = None,
            received_at: Optional[float] = None, bgr: bool = False) -> bool:
        """Leave a camera's newest frame in its slot; True when it replaced a waiting frame.

        Args:
            camera: the camera's name.
            rgb: the frame, (H, W, 3) uint8 RGB.
            stamp: its time in seconds.
            meta: kept with the frame (a header).
            received_at: arrival time (default now).
            bgr: the frame is in blue, green, red order.
        """
        slot = self.slots[camera]
        now = self._clock() if received_at is None else received_at
        prev = slot.last_received
        if prev is not None and slot.last_bgr != bgr:  # the camera changed its encoding
            prev = (np.ascontiguousarray(prev[0][..., ::-1]), prev[1])
        frame = PendingFrame(camera, rgb, float(stamp), meta, prev, now, bgr)
        with self._cond:
            slot.last_received, slot.last_bgr = (rgb, float(stamp)), bgr
            slot.last_received_at = now
            replaced = slot.pending is not None
            if replaced:
                slot.stats.dropped += 1
            slot.pending = frame
            self._cond.notify_all()
        return replaced

    def drop_pending(self) -> int:
        """Forget every waiting frame (and what each camera received last); return how many."""
        with self._cond:
            dropped = 0
            for slot in self.slots.values():
                if slot.pending is not None:
                    dropped += 1
                    slot.stats.dropped += 1
                slot.pending = None
                slot.last_received = None
            self._cond.notify_all()
        return dropped

    # ------------------------------------------------------------------ worker side
    def _waiting(self) -> list[CameraSlot]:
        """Slots with a frame waiting and none in work, in round-robin order from the cursor."""
        n = len(self._order)
        order = (self._order[(self._cursor + i) % n] for i in range(n))
        return [self.slots[name] for name in order
                if self.slots[name].pending is not None and name not in self._in_work]

    def _expected(self, now: float) -> int:
        """Streaming cameras (a frame within STREAMING_WINDOW_S), not in work, without a frame
        waiting."""
        return sum(1 for s in self.slots.values() if s.pending is None
                   and s.name not in self._in_work
                   and now - s.last_received_at <= STREAMING_WINDOW_S)

    def take(self, timeout: Optional[float] = None) -> Optional[list[PendingFrame]]:
        """Wait for frames and take a batch (its cameras are in work until :meth:`done`).

        Args:
            timeout: seconds to wait for a first frame (None = until one comes or stop).

        Returns:
            The batch, in round-robin order (at least one frame), or None when stopped or
            timed out.
        """
        deadline = None if timeout is None else self._clock() + timeout
        with self._cond:
            while True:
                while not self._stopped and (self._gathering or not self._waiting()):
                    left = None if deadline is None else deadline - self._clock()
                    if left is not None and left <= 0:
                        return None
                    self._cond.wait(left)
                if self._stopped:
                    return None
                if self.batch_wait_s > 0 and self.max_batch > 1:
                    self._gathering = True
                    try:
                        until = self._clock() + self.batch_wait_s
                        while (not self._stopped and len(self._waiting()) < self.max_batch
                               and self._expected(self._clock()) > 0):
                            left = until - self._clock()
                            if left <= 0:
                                break
                            self._cond.wait(left)
                    finally:
                        self._gathering = False
                        self._cond.notify_all()
                    if self._stopped:
                        return None
                waiting = self._waiting()
                if waiting:
                    break  # else dropped while gathering: wait again
            key = self._key(waiting[0].pending)
            batch: list[PendingFrame] = []
            last = waiting[0]
            for slot in waiting:
                if len(batch) == self.max_batch:
                    break
                if self._key(slot.pending) != key:
                    continue
                batch.append(slot.pending)
                slot.pending = None
                last = slot
            self._cursor = (self._order.index(last.name) + 1) % len(self._order)
            self._in_work.update(frame.camera for frame in batch)
            self.batch_sizes[len(batch)] += 1
            for frame in batch:
                self.slots[frame.camera].stats.last_batch_size = len(batch)
            return batch

    def done(self, batch: Iterable[PendingFrame]) -> None:
        """A worker finished a batch it took: its cameras may be served again.

        Args:
            batch: the batch, as :meth:`take` returned it.
        """
        with self._cond:
            self._in_work.difference_update(frame.camera for frame in batch)
            self._cond.notify_all()

    def stop(self) -> None:
        """Wake every waiter; :meth:`take` returns None from now on."""
        with self._cond:
            self._stopped = True
            self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Block until no frame waits and no batch is in work; False on timeout.

        Args:
            timeout: seconds to wait at most.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while self._in_work or any(s.pending is not None for s in self.slots.values()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
        return True


Outcome = tuple[PendingFrame, Any, Optional[Exception]]


def _order(frame: PendingFrame) -> dict[str, bool]:
    # only bgr frames say so (they reach only pipelines with a device path)
    return {'bgr': True} if frame.bgr else {}


def run_batch(batch: Sequence[PendingFrame], pipelines: Mapping[str, Any],
              outputs: Mapping[str, Iterable[str]]) -> list[Outcome]:
    """Segment a batch taken from :meth:`FrameScheduler.take`.

    One frame goes through its camera's ``pipeline.process``; several are prepared on their own
    cameras' pipelines (each camera's previous frame and resets), run through the network in
    one ``infer`` call (the pipelines share one model) and finished on their own pipelines.

    Args:
        batch: the frames, at most one per camera.
        pipelines: camera name -> its :class:`~flow2seg_ros.pipeline.FramePipeline`.
        outputs: camera name -> the pictures wanted for it (labels are always made).

    Returns:
        Per frame, in batch order, ``(frame, FrameResult or None, exception or None)``: a frame
        that fails does not stop the others (unless the network call itself fails).
    """
    if len(batch) == 1:
        frame = batch[0]
        try:
            return [(frame, pipelines[frame.camera].process(
                frame.rgb, frame.stamp, outputs=tuple(outputs[frame.camera]), prev=frame.prev,
                **_order(frame)), None)]
        except Exception as exc:  # reported per frame; the caller goes on
            return [(frame, None, exc)]
    done: list[Outcome] = []
    prepared = []
    for frame in batch:
        try:
            prepared.append((frame, pipelines[frame.camera].prepare(
                frame.rgb, frame.stamp, prev=frame.prev, **_order(frame))))
        except Exception as exc:
            done.append((frame, None, exc))
    if prepared:
        try:  # one network call for the frames of every camera in the batch
            outs = pipelines[prepared[0][0].camera].infer([p for _, p in prepared])
        except Exception as exc:
            done.extend((frame, None, exc) for frame, _ in prepared)
            outs = []
        for (frame, prep), out in zip(prepared, outs):
            try:
                done.append((frame, pipelines[frame.camera].finish(
                    prep, out, outputs=tuple(outputs[frame.camera])), None))
            except Exception as exc:
                done.append((frame, None, exc))
    order = {id(f): i for i, f in enumerate(batch)}
    return sorted(done, key=lambda item: order[id(item[0])])
