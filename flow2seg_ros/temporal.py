"""Temporal smoothing: the fused head's class probabilities carried along the flow, frame to frame.

Per stream (each :class:`~flow2seg_ros.pipeline.FramePipeline`, so each camera, has its own):

    p_t = (1 - w v) softmax(fused_t) + w v warp(p_t-1, flow_t)

with ``flow_t`` the pipeline's flow of this frame (on this frame's grid, pointing into the
previous frame, in pixels at the network's input size) taken at the logits' cell centres,
``warp`` bilinear sampling at ``x + flow(x)``, ``v`` 1 where that point lies in the
previous grid (0 where it comes into view), and ``w`` the weight (``temporal_smoothing``; 0 =
off). The result goes on as the fused logits (``log p_t``), so labels, confidence and pictures all
come from it. The state restarts whenever a frame has no flow (a first frame, a reset) or its flow
points into another frame than the one the state belongs to (frames the node dropped), so nothing
is carried across a cut or a jump.

It is the motion-compensated recursive average of NetWarp-style video segmentation without any
learned part, by default at the logits' stride (a (C, 32, 64) grid for a 512x256 network: 0.18 ms
on a 2-core CPU). Measured on the held-out splits (``flow2seg-evaluate``) at weight 0.5: temporal
consistency up by 7.6 to 11.4 points and mIoU by 0.1 to 0.5 (README, "Temporal smoothing").

``temporal_smoothing_stride`` S > 0 runs it on a finer grid instead, one cell per S network
pixels (the logits upsampled bilinearly onto it first, as the labels' own upsampling does): the
probabilities then move with the flow at that resolution instead of being blurred across object
borders at every step. A stride that gives no finer grid than the logits' leaves them on theirs.

On the CPU it runs in NumPy and OpenCV (no multi-threaded torch op, which would leave OpenMP
threads spinning beside the next frame's flow thread; :mod:`flow2seg_ros.cpu_path`); on CUDA in
torch on the device, replayed as CUDA graphs (one for a restart, one for a carried frame) when
the device path's graph runner is given. Both compute the same values (tested).
"""
from __future__ import annotations

from typing import Any, Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from flow2seg_ros.cpu_path import CV_MAX_CHANNELS

__all__ = ['DEFAULT_WEIGHT', 'TemporalFilter', 'check_stride', 'check_weight']

#: The default weight of the previous frame. Of the weights measured (0.3, 0.5, 0.7) on the
#: held-out splits of the bundled model and a v2 model, it is within 0.1 mIoU of the best on each
#: split and 3 to 5 TC points steadier than 0.3; 0.7 is steadier still but loses 0.5-0.9 mIoU.
DEFAULT_WEIGHT = 0.5

#: Floor of a probability before its log (the logits handed on stay finite).
_EPS = 1e-6


def check_weight(weight: float) -> float:
    """``weight`` as a float in [0, 1); ValueError naming it otherwise."""
    try:
        value = float(weight)
    except (TypeError, ValueError):
        raise ValueError(f'temporal smoothing must be a number in [0, 1), got {weight!r}') \
            from None
    if not 0.0 <= value < 1.0:
        raise ValueError(f'temporal smoothing must be in [0, 1) (0 = off), got {weight!r}')
    return value


def check_stride(stride: int) -> int:
    """``stride`` as an int in [0, 64] (0 = the logits' own grid); ValueError naming it
    otherwise."""
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) \
            or not 0 <= int(stride) <= 64:
        raise ValueError('temporal smoothing stride must be an integer in [0, 64] network '
                         f"pixels per cell (0 = the logits' own grid), got {stride!r}")
    return int(stride)


class TemporalFilter:
    """The per-stream state and step of the smoothing.

    Args:
        weight: the previous frame's weight ``w`` in [0, 1); 0 passes the logits through.
        stride: network pixels per cell of the grid it runs on; 0 = the logits' own grid. A
            grid finer than the logits' needs ``input_size``.
        input_size: the network's input (height, width).

    Attributes:
        graphs: take a call's ``runner`` (default True; False runs torch eagerly on the
            device even then, as gpu-check does to time both).
        carried: frames that took the previous frame's probabilities along (the node's
            diagnostics report it: few against the frames processed means frequent restarts,
            for instance from dropped frames).
    """

    def __init__(self, weight: float = DEFAULT_WEIGHT, stride: int = 0,
                 input_size: Optional[tuple[int, int]] = None) -> None:
        self.weight = check_weight(weight)
        self.stride = check_stride(stride)
        self.input_size = input_size
        self.graphs = True
        self.carried = 0
        self._state: Optional[np.ndarray | torch.Tensor] = None  # p_t-1 on its grid
        self._stamp: Optional[float] = None  # the frame it belongs to
        self._work: dict[str, np.ndarray] = {}  # the CPU step's arrays, reused (_buffer)

    def reset(self) -> None:
        """Forget the state: the next frame starts afresh."""
        self._state = None
        self._stamp = None

    def grid(self, native: tuple[int, int]) -> tuple[int, int]:
        """The (h, w) grid the step runs on for logits of ``native`` size: the input size over
        the stride (rounded up) where that is finer in both directions, else ``native``."""
        if not self.stride or self.input_size is None:
            return tuple(native)
        h, w = (-(-int(n) // self.stride) for n in self.input_size)
        return (h, w) if h > native[0] and w > native[1] else tuple(native)

    def __call__(self, logits: torch.Tensor, flow: Optional[torch.Tensor], stamp: float,
                 prev_stamp: Optional[float], runner: Any = None) -> torch.Tensor:
        """One frame: the smoothed logits, and the state moves on to this frame.

        Args:
            logits: (1, C, h, w) fused logits at their native stride.
            flow: (2, H, W) this frame's flow in pixels at the network's input size (current to
                previous), or None when the frame has none.
            stamp: this frame's time.
            prev_stamp: the time of the frame the flow points into (None without flow).
            runner: the stream's :class:`~flow2seg_ros.device_path.GraphRunner` (its device
                path's), or None: with one the step runs in torch through it, as CUDA graphs
                on CUDA (eagerly elsewhere); without, NumPy/OpenCV for CPU logits and torch
                eagerly for device logits.

        Returns:
            (1, C, h, w) float32 logits (log-probabilities) on the logits' device, on
            :meth:`grid`; the input unchanged when the weight is 0.
        """
        if not self.weight:
            return logits
        grid = self.grid(tuple(logits.shape[-2:]))
        # a state of another grid (the stride changed) restarts the smoothing
        carry = (flow is not None and self._state is not None and prev_stamp is not None
                 and prev_stamp == self._stamp and tuple(self._state.shape[-2:]) == grid)
        self.carried += carry
        runner = runner if self.graphs else None
        if logits.device.type == 'cpu' and runner is None:
            out, self._state = _step_numpy(logits, flow if carry else None,
                                           self._state if carry else None, self.weight, grid,
                                           self._work)
        elif runner is None:
            out, self._state = _step_torch(logits, flow if carry else None,
                                           self._state if carry else None, self.weight, grid)
        else:
            out, self._state = self._step_graph(runner, logits, flow if carry else None, grid)
        self._stamp = stamp
        return out

    def _step_graph(self, runner: Any, logits: torch.Tensor, flow: Optional[torch.Tensor],
                    grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The torch step through the runner: a graph for a restart and one for a carried
        frame per size and grid (their outputs copied out, so several streams may share the
        runner)."""
        w = self.weight
        state = self._state
        size = tuple(logits.shape[-2:]) + grid
        if flow is None or state is None:
            def start(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
                return _step_torch(z, None, None, w, grid)
            return runner('temporal', start, (logits,), ('start', w), size=size)

        def carry(z: torch.Tensor, f: torch.Tensor, s: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
            return _step_torch(z, f, s, w, grid)
        return runner('temporal', carry, (logits, flow.to(logits.device), state),
                      ('carry', w), size=size)


_GRIDS: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _grid(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """(gy, gx) float32 cell indices of an (h, w) grid, made once per size."""
    if (h, w) not in _GRIDS:
        _GRIDS[(h, w)] = tuple(np.mgrid[0:h, 0:w].astype(np.float32))
    return _GRIDS[(h, w)]


def _buffer(work: Optional[dict], name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 array of ``shape``: the filter's own, reused frame to frame, where it keeps
    ``work``; a new one otherwise. At a fine grid the arrays are megabytes, and fresh ones
    page-fault on every frame (measured: half the step's time at stride 2)."""
    if work is None:
        return np.empty(shape, np.float32)
    buf = work.get(name)
    if buf is None or buf.shape != tuple(shape):
        buf = work[name] = np.empty(shape, np.float32)
    return buf


def _step_numpy(logits: torch.Tensor, flow: Optional[torch.Tensor], state: Optional[np.ndarray],
                weight: float, grid: Optional[tuple[int, int]] = None,
                work: Optional[dict] = None) -> tuple[torch.Tensor, np.ndarray]:
    z = logits[0].float().numpy()  # (C, h, w): the softmax reduces over whole planes
    if grid is not None and tuple(grid) != z.shape[1:]:
        z = _upsampled(z, grid, _buffer(work, 'logits', (z.shape[0],) + tuple(grid)))
    c, h, w = z.shape
    # the probabilities go where the state is not (two buffers in turn: the state is read below)
    p = _buffer(work, 'p1' if work is not None and state is work.get('p0') else 'p0', z.shape)
    np.subtract(z, z.max(0), out=p)
    cv2.exp(p.reshape(c, h * w), dst=p.reshape(c, h * w))
    p /= p.sum(0)
    if state is not None and state.shape == p.shape:
        fl = flow.cpu().numpy()  # (2, H, W): each plane contiguous, as OpenCV is fastest
        # the flow at each cell's centre (bilinear: the pixel-centre convention of the logits)
        fx, fy = (cv2.resize(fl[i], (w, h), interpolation=cv2.INTER_LINEAR) for i in (0, 1))
        gy, gx = _grid(h, w)
        map_x = gx + fx * np.float32(w / fl.shape[2])
        map_y = gy + fy * np.float32(h / fl.shape[1])
        # OpenCV remaps the channels in (h, w, C) layout, up to CV_MAX_CHANNELS in one call
        src = _buffer(work, 'src', (h, w, c))
        np.copyto(src, state.transpose(1, 2, 0))
        warped = _buffer(work, 'warped', (h, w, c))
        if c <= CV_MAX_CHANNELS:
            cv2.remap(src, map_x, map_y, cv2.INTER_LINEAR, dst=warped,
                      borderMode=cv2.BORDER_REPLICATE)
        else:
            for i in range(0, c, CV_MAX_CHANNELS):
                part = slice(i, i + CV_MAX_CHANNELS)
                warped[:, :, part] = cv2.remap(np.ascontiguousarray(src[:, :, part]), map_x,
                                               map_y, cv2.INTER_LINEAR,
                                               borderMode=cv2.BORDER_REPLICATE
                                               ).reshape(h, w, -1)
        # in view: within half a cell of the grid (its cells' extent). Not the training loss's
        # losses.warp_to_current: its test (within the outer cells' centres) and zero padding
        # drop the border cells at the slightest flow noise (measured: a quarter of the
        # pixels of a panned test scene then flickered)
        valid = ((map_x > -0.5) & (map_x < w - 0.5) & (map_y > -0.5) & (map_y < h - 0.5))
        step = _buffer(work, 'step', (c, h, w))
        np.subtract(warped.transpose(2, 0, 1), p, out=step)
        step *= np.float32(weight) * valid
        p += step
    # the logits handed on are new arrays: the caller may keep them beyond the next frame
    out = np.maximum(p, np.float32(_EPS)).reshape(1, c, h, w)
    cv2.log(out.reshape(c, h * w), dst=out.reshape(c, h * w))
    return torch.from_numpy(out), p


def _upsampled(z: np.ndarray, grid: tuple[int, int], out: Optional[np.ndarray] = None
               ) -> np.ndarray:
    """(C, h, w) logits resized bilinearly onto ``grid`` (OpenCV: the pixel-centre convention
    of torch's ``interpolate`` with ``align_corners=False``), as (C, H, W) planes, into ``out``
    where given. Plane by plane, straight into the output: 15x faster than one resize of all
    channels in (h, w, C) layout and its transposes (19 classes onto 128 x 256: 0.17 against
    2.7 ms)."""
    up = np.empty((z.shape[0],) + tuple(grid), np.float32) if out is None else out
    for plane, dst in zip(np.ascontiguousarray(z, dtype=np.float32), up):
        cv2.resize(plane, (grid[1], grid[0]), dst=dst, interpolation=cv2.INTER_LINEAR)
    return up


def _step_torch(logits: torch.Tensor, flow: Optional[torch.Tensor],
                state: Optional[torch.Tensor], weight: float,
                grid: Optional[tuple[int, int]] = None) -> tuple[torch.Tensor, torch.Tensor]:
    z = logits.float()
    if grid is not None and tuple(grid) != tuple(z.shape[-2:]):
        z = F.interpolate(z, size=tuple(grid), mode='bilinear', align_corners=False)
    p = torch.softmax(z, 1)
    h, w = p.shape[-2:]
    if state is not None and state.shape == p.shape:
        fl = flow.to(p.device, torch.float32)[None]
        small = F.interpolate(fl, size=(h, w), mode='bilinear', align_corners=False)[0]
        gy, gx = torch.meshgrid(torch.arange(h, device=p.device, dtype=torch.float32),
                                torch.arange(w, device=p.device, dtype=torch.float32),
                                indexing='ij')
        x = gx + small[0] * (w / fl.shape[-1])
        y = gy + small[1] * (h / fl.shape[-2])
        # pixel indices to grid_sample's [-1, 1] (align_corners=False: pixel centres)
        grid = torch.stack(((2 * x + 1) / w - 1, (2 * y + 1) / h - 1), -1)[None]
        warped = F.grid_sample(state, grid, mode='bilinear', padding_mode='border',
                               align_corners=False)
        valid = ((x > -0.5) & (x < w - 0.5) & (y > -0.5) & (y < h - 0.5)).float()
        p = p + weight * valid * (warped - p)
    return torch.log(p.clamp_min(_EPS)), p
