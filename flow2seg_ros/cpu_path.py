"""The pipeline's CPU path: the network through a backend, the flow overlapped with the image path,
and labels from logits at their native stride.

On the CPU the image path of a frame does not need its flow, so while it runs, a second thread
computes the flow (OpenCV DIS, or any :class:`~flow2seg_ros.flow.FlowEstimator`) and, while the
estimator is quicker than the image path, the flow path's logits too (else the flow path runs
after the image path, on every core); the fusion then joins both. Threads are split so that they
do not fight over the cores: the flow thread uses one (its torch and ONNX Runtime work
single-threaded), the image path the others (``image_logits(..., shared=True)``), and work that
runs alone (frames without flow, the fusion) all of them. Whether to overlap at all is measured
as frames run (:class:`CpuPath`): on a CPU that other processes keep busy it does not pay.

Labels (:func:`upsampled_labels`): the network's logits are at stride 8; the labels at the
network's input size are the argmax of their bilinear upsampling. Where the four stride-8 cells
around a pixel agree on their argmax, the upsampled logits (a convex combination of the four)
have the same argmax, so the argmax over classes is taken only for pixels between cells that
disagree (a tenth to a fifth), and over the classes whose largest value there reaches some
class's smallest (the others cannot win): the same labels as upsampling everything, for a
fraction of the work.
"""
from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
import statistics
import time
from typing import Any, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from flow2seg_ros.flow import scale_flow

__all__ = ['CONCURRENT_STAGES', 'CV_MAX_CHANNELS', 'network_input', 'upsampled_labels',
           'full_size', 'labels_from_logits', 'CpuPath']

#: Timings (ms) of work done in the flow thread alongside the others; not part of a total.
CONCURRENT_STAGES = ('flow_thread',)


def network_input(smalls: Sequence[np.ndarray], scale: torch.Tensor,
                  shift: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) float32 ``frame * scale + shift`` per channel from (H, W, 3) uint8 frames.

    NumPy, one channel at a time: as fast as torch on two threads and the same values, and no
    torch op on several threads, which would leave OpenMP's worker threads spin-waiting for
    milliseconds just when the flow thread starts beside the image path (measured: the flow
    thread then started 3.4 ms late; 14.1 against 10.0 ms a frame, bundled model, 640x480
    frames, 2 cores).

    Args:
        smalls: network-size RGB frames.
        scale, shift: the pipeline's per-channel factors (any shape holding 3 values).
    """
    a = scale.reshape(3).cpu().numpy()
    b = shift.reshape(3).cpu().numpy()
    x = np.empty((len(smalls), 3) + smalls[0].shape[:2], np.float32)
    for i, small in enumerate(smalls):
        for c in range(3):
            np.multiply(small[:, :, c], a[c], out=x[i, c], casting='unsafe')
            x[i, c] += b[c]
    return torch.from_numpy(x)


#: The most channels one OpenCV call takes from Python (OpenCV 5's binding: 128; ``resize``
#: refuses more and ``remap`` crashes), so wider arrays go through torch or in slices.
CV_MAX_CHANNELS = 128


def _source_index(n_out: int, n_in: int) -> tuple[np.ndarray, ...]:
    # torch's bilinear source index with align_corners=False: (i + 0.5) * in / out - 0.5, >= 0
    scale = np.float32(n_in / n_out)
    src = np.maximum((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale
                     - np.float32(0.5), np.float32(0.0))
    i0 = np.minimum(src.astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = (src - i0).astype(np.float32)
    return i0, i1, (np.float32(1.0) - w1).astype(np.float32), w1


def _bilinear_at(logits: np.ndarray, where: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """(C, n) logits upsampled bilinearly (``align_corners=False``) at the flat output pixels
    ``where`` of an (out_h, out_w) image."""
    c, h, w = logits.shape
    y0, y1, wy0, wy1 = _source_index(out_h, h)
    x0, x1, wx0, wx1 = _source_index(out_w, w)
    py, px = np.divmod(where, out_w)
    top, bottom, left, right = y0[py] * w, y1[py] * w, x0[px], x1[px]
    flat = logits.reshape(c, -1)
    return (flat[:, top + left] * (wy0[py] * wx0[px]) + flat[:, top + right] * (wy0[py] * wx1[px])
            + flat[:, bottom + left] * (wy1[py] * wx0[px])
            + flat[:, bottom + right] * (wy1[py] * wx1[px]))


def upsampled_labels(logits: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Argmax over C of the logits upsampled bilinearly (``align_corners=False``) to ``size``.

    The argmax is taken only where the four neighbouring cells disagree on theirs; elsewhere
    their class is the label. From a coarse grid (more than twice as coarse as ``size``, like
    the stride-8 logits) the upsampled logits come from OpenCV (the same pixel-centre
    convention as torch's ``interpolate``, several times faster on a CPU), over the classes that
    can win between disagreeing cells. From a finer grid (the temporal smoothing's at stride 2
    or finer) few pixels lie between disagreeing cells, and only those are interpolated, over
    every class (4x faster there than resizing).

    Args:
        logits: (C, h, w) float32.
        size: output (H, W).

    Returns:
        (H, W) uint8 labels (first maximum on ties, like ``argmax``).
    """
    c, h, w = logits.shape
    out_h, out_w = int(size[0]), int(size[1])
    native = logits.argmax(0).astype(np.uint8)
    if (h, w) == (out_h, out_w):
        return native
    y0 = _source_index(out_h, h)[0]
    x0 = _source_index(out_w, w)[0]
    down = np.minimum(np.arange(h) + 1, h - 1)
    right = np.minimum(np.arange(w) + 1, w - 1)
    agree = (native == native[:, right]) & (native == native[down]) & \
        (native == native[down][:, right])
    labels = np.ascontiguousarray(native[y0][:, x0])  # reshaped below as a view
    mixed = ~agree[y0][:, x0]
    where = np.flatnonzero(mixed)
    if not where.size:
        return labels
    if out_h <= 2 * h and out_w <= 2 * w:
        labels.reshape(-1)[where] = _bilinear_at(logits, where, out_h, out_w).argmax(0)
        return labels
    # Between four cells a class's upsampled logit lies within its four values, so a class whose
    # largest is below some class's smallest cannot win there: only the classes that can win
    # between some disagreeing cells are upsampled (a frame of ten classes: half the work).
    corners = (logits, logits[:, :, right], logits[:, down], logits[:, down][:, :, right])
    low = np.minimum(np.minimum(corners[0], corners[1]), np.minimum(corners[2], corners[3]))
    high = np.maximum(np.maximum(corners[0], corners[1]), np.maximum(corners[2], corners[3]))
    ks = np.flatnonzero(((high >= low.max(0)) & ~agree).any((1, 2)))  # ascending: ties as argmax
    if not ks.size:  # only with NaN logits (a broken model): then every class
        ks = np.arange(c)
    cells = np.ascontiguousarray(logits[ks].transpose(1, 2, 0), dtype=np.float32)  # (h, w, k)
    if len(ks) <= CV_MAX_CHANNELS:
        up = cv2.resize(cells, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    else:
        up = full_size(torch.from_numpy(logits[ks])[None], size)[0].permute(1, 2, 0).numpy()
    labels.reshape(-1)[where] = ks[up.reshape(-1, len(ks))[where].argmax(1)]
    return labels


def full_size(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """(N, C, h, w) logits upsampled (bilinear, ``align_corners=False``) to ``size``, float32."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits.float()
    return F.interpolate(logits.float(), size=tuple(size), mode='bilinear', align_corners=False)


def labels_from_logits(logits: torch.Tensor, size: Sequence[int]) -> np.ndarray:
    """(1, C, h, w) logits at any stride -> (H, W) uint8 labels at ``size``.

    On the CPU by :func:`upsampled_labels`; elsewhere the logits are upsampled on their device.
    """
    if logits.device.type == 'cpu' and tuple(logits.shape[-2:]) != tuple(size):
        return upsampled_labels(logits[0].float().numpy(), size)
    # max(1).indices equals argmax(1) (first maximum on ties) and is several times
    # faster over a (1, C, H, W) tensor on CPUs, where argmax(1) reduces along a stride
    return full_size(logits, size).max(1).indices[0].to(torch.uint8).cpu().numpy()


def _single_thread() -> None:
    # The flow thread runs torch on one thread, and its first parallel op (when torch sets up a
    # thread's OpenMP state from the process-wide count) must already see 1: an OpenMP team
    # started here would make libgomp count more threads than cores and throttle the spin-waits
    # of every other thread's OpenMP work (measured: torchvision's LRASPP 41 -> 65 ms).
    torch.set_num_threads(1)
    torch.zeros(1 << 16).add_(1)


class CpuPath:
    """Runs the network's parts for a batch of prepared frames, the flow in its own thread.

    Args:
        runner: a :mod:`flow2seg_ros.backends` runner (``image_logits``, ``flow_logits``,
            ``fuse``, ``has_flow``).
        flow_scale: the model card's ``flow.scale``.
        overlap: run the flow (estimator and flow path) alongside the image path: True, False,
            or None = measured as it runs (below).
        threads: CPU threads of the pipeline (0 = torch's setting); no overlap below 2.

    With ``overlap=None`` each way is timed on the first frames with flow (its first frame, which
    starts threads and warms caches, is not counted), the one with the lower median of its last
    :attr:`SAMPLES` timings (the network step's wall time) is kept, and every :attr:`RETRY`
    frames the other is timed once more: on an idle machine the overlap wins by the image path's
    time, on one whose cores are taken by other work, splitting the threads loses. A disturbed
    start (another process's burst on the first frames) can make the faster way lose the first
    decision; the retries put it right within a few of them.
    """

    #: With the overlap measured, frames between two timings of the slower way.
    RETRY = 10
    #: Timings kept per way (the median decides).
    SAMPLES = 5
    #: Timings per way taken before the first decision (the median of three outvotes one
    #: disturbed frame).
    FIRST = 3

    def __init__(self, runner: Any, *, flow_scale: float, overlap: Optional[bool] = None,
                 threads: int = 0) -> None:
        self.runner = runner
        self.flow_scale = flow_scale
        self.threads = threads or torch.get_num_threads()
        self.overlap = overlap if self.threads >= 2 else False
        self._pool: Optional[ThreadPoolExecutor] = None
        self._samples: dict[bool, deque[float]] = {way: deque(maxlen=self.SAMPLES)
                                                   for way in (True, False)}
        self._warm = {True: False, False: False}
        self._flow_frames = 0
        # running means (ms) that decide where the flow path runs; start in the flow thread
        self._image_ms = 1.0
        self._estimator_ms = 0.0

    def _flow_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix='flow2seg-flow',
                                            initializer=_single_thread)
            self._pool.submit(lambda: None).result()
            # the worker set its own thread count to 1; this thread keeps all of them
            torch.set_num_threads(self.threads)
        return self._pool

    def _choose_overlap(self) -> bool:
        if self.overlap is not None:
            return self.overlap
        self._flow_frames += 1
        for way in (True, False):
            if len(self._samples[way]) < self.FIRST:
                return way
        best = min((True, False), key=lambda way: statistics.median(self._samples[way]))
        return (not best) if self._flow_frames % self.RETRY == 0 else best

    def _measured(self, way: bool, ms: float) -> None:
        if self._warm[way]:
            self._samples[way].append(ms)
        self._warm[way] = True

    def close(self) -> None:
        """Stop the flow thread (a later frame starts it again)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    def _flow_job(self, frames: Sequence[Any], path: bool,
                  shared: bool) -> tuple[Optional[torch.Tensor], list[float], float]:
        # flow for each frame, from its own pipeline's estimator, then (with ``path``) the flow
        # path on the batch
        started = time.perf_counter()
        with torch.inference_mode():
            estimator_ms = []
            for f in frames:
                t0 = time.perf_counter()
                f.flow = f.pipeline.flow_estimator(f.prev_small, f.small).to('cpu')
                estimator_ms.append(1000.0 * (time.perf_counter() - t0))
            logits = self._flow_path(frames, shared) if path else None
        return logits, estimator_ms, 1000.0 * (time.perf_counter() - started)

    def _flow_path(self, frames: Sequence[Any], shared: bool) -> torch.Tensor:
        flow = scale_flow(torch.stack([f.flow for f in frames]), self.flow_scale)
        return self.runner.flow_logits(flow, shared=shared)

    def infer(self, frames: Sequence[Any], x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        """The network's native-stride logits for each frame; sets ``frame.flow`` and timings.

        Stages: ``flow`` (without overlap the estimator's time; with it, the time spent waiting
        for the flow thread), ``network`` (the rest: image path, fusion, and the flow path
        unless the flow thread ran it) and ``flow_thread`` (the flow thread's own time, when
        overlapped).

        Args:
            frames: prepared frames (``prev_small`` set where flow is wanted).
            x: their (N, 3, H, W) normalised images.

        Returns:
            Per frame ``{'fused', 'image'[, 'flow']: (1, C, h, w) logits}``.
        """
        idx = [i for i, f in enumerate(frames) if f.prev_small is not None] \
            if self.runner.has_flow else []
        flow_frames = [frames[i] for i in idx]
        started = t0 = time.perf_counter()
        flow_logits = None
        overlap = bool(idx) and self._choose_overlap()
        if overlap:
            # The flow path goes in the flow thread too while the estimator is quicker than the
            # image path (then both hide behind it); otherwise it waits for the estimator and
            # runs on every core once the image path is done.
            in_thread = self._estimator_ms < self._image_ms
            job = self._flow_pool().submit(self._flow_job, flow_frames, in_thread, True)
            try:
                t1 = time.perf_counter()
                image_logits = self.runner.image_logits(x, shared=True)
            finally:
                t2 = time.perf_counter()
                flow_logits, estimator_ms, thread_ms = job.result()
            waited = 1000.0 * (time.perf_counter() - t2)  # flow time the image path did not hide
            self._image_ms = 0.8 * self._image_ms + 0.2 * 1000.0 * (t2 - t1)
            self._estimator_ms = 0.8 * self._estimator_ms + 0.2 * sum(estimator_ms)
            if flow_logits is None:  # on every core now, counted as network like the fusion
                flow_logits = self._flow_path(flow_frames, False)
            for f in flow_frames:
                f.timings['flow'] = f.timings.get('flow', 0.0) + waited
                f.timings['flow_thread'] = thread_ms
            t0 += waited / 1000.0
        else:
            if idx:
                _, estimator_ms, _ = self._flow_job(flow_frames, False, False)
                flow_logits = self._flow_path(flow_frames, False)
                for f, ms in zip(flow_frames, estimator_ms):
                    f.timings['flow'] = f.timings.get('flow', 0.0) + ms
                t0 += sum(estimator_ms) / 1000.0
            image_logits = self.runner.image_logits(x)
        fused = image_logits
        if flow_logits is not None:
            fused = image_logits.clone() if len(idx) < len(frames) else None
            joined = self.runner.fuse(image_logits[idx], flow_logits)
            if fused is None:
                fused = joined
            else:
                fused[idx] = joined
        network_ms = 1000.0 * (time.perf_counter() - t0)
        if idx:
            self._measured(overlap, 1000.0 * (time.perf_counter() - started))
        outs = []
        where = {i: j for j, i in enumerate(idx)}
        for i, f in enumerate(frames):
            f.timings['network'] = f.timings.get('network', 0.0) + network_ms
            f.timings.setdefault('flow', 0.0)
            out = {'fused': fused[i:i + 1], 'image': image_logits[i:i + 1]}
            if i in where:
                out['flow'] = flow_logits[where[i]:where[i] + 1]
            outs.append(out)
        return outs
