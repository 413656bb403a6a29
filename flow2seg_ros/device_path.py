"""The frame pipeline's device path: on a GPU, a frame goes up once and its outputs come down once.

:class:`~flow2seg_ros.pipeline.FramePipeline` uses a :class:`DevicePath` on CUDA. The camera frame
is uploaded as it arrived (uint8, camera size, RGB or BGR) through a reused page-locked buffer;
the resize to the network size, normalisation, network, argmax, labels at camera size, colour
mask, overlay, confidence and flow picture all run on the device (:mod:`flow2seg_ros.gpu_ops`);
what is published comes back with one synchronisation, into page-locked memory: new blocks, or
the node's reused message buffers, page-locked in place (:mod:`flow2seg_ros.transfers`), so
the pixels are not copied again on the host.

Every shape in that work is fixed by the camera and network sizes, so each stage (``pre``:
resize and normalisation; ``image``: the image path; ``flow``: a device flow network; ``fuse``:
flow path and fusion; ``argmax``; ``post``: labels and pictures at camera size) is captured as a
CUDA graph at the first frame of a size and replayed after that (:class:`GraphRunner`); a new
camera or network size captures again, and ``graphs=False`` runs the same functions eagerly.
The image path is queued before the flow is computed, so a flow method on the host (DIS) runs
while the device works. On the CPU the same code runs eagerly (the tests use that); the
pipeline keeps its own CPU path there, which is faster on a CPU.
"""
from __future__ import annotations

from dataclasses import dataclass
import functools
import logging
import time
from typing import Any, Callable, Iterable, Optional, Sequence

import numpy as np
import torch

from flow2seg_ros import gpu_ops
from flow2seg_ros.flow import scale_flow
from flow2seg_ros.transfers import PinnedDownload, PinnedUpload

__all__ = ['AUTOCAST_DTYPES', 'DeviceFrame', 'DevicePath', 'GraphRunner', 'MESSAGE_OUTPUTS',
           'PinnedUpload', 'PinnedDownload', 'autocast_dtype']

log = logging.getLogger(__name__)

#: Precision -> the network's dtype on CUDA (None: fp32).
AUTOCAST_DTYPES = {'fp32': None, 'fp16': torch.float16, 'bf16': torch.bfloat16}


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for a precision on a device; None = fp32 (always on the CPU).

    Args:
        precision: ``fp32``, ``fp16`` or ``bf16``.
        device: where the network runs.
    """
    if precision not in AUTOCAST_DTYPES:
        raise ValueError(f'precision must be one of {tuple(AUTOCAST_DTYPES)}, got {precision!r}')
    return AUTOCAST_DTYPES[precision] if device.type == 'cuda' else None


@dataclass
class _Captured:
    graph: Any
    inputs: list[torch.Tensor]
    outputs: tuple[torch.Tensor, ...]


class GraphRunner:
    """Runs a stage function as a CUDA graph: captured on its first call per input shape, replayed
    after that; eager where graphs are off, on the CPU, or where capture failed.

    A stage is named; its key is the shapes and dtypes of its inputs plus a static key (what the
    function computes, e.g. the heads). A call whose first input has a new shape (a new camera
    or network size) drops that stage's graphs of the old size and captures again.

    Args:
        enabled: capture graphs (CUDA only).
        warmup: eager runs on a side stream before capture (cudnn picks its algorithms there).
    """

    def __init__(self, enabled: bool = True, warmup: int = 2) -> None:
        self.enabled = enabled
        self.warmup = warmup
        self._graphs: dict[str, dict[tuple, _Captured]] = {}
        self.failed: dict[str, str] = {}
        self.captures = 0
        self.replays = 0
        self.max_graphs = 16  # per stage and size

    def clear(self) -> None:
        """Drop every captured graph (their memory goes back to torch)."""
        self._graphs.clear()

    def graphs(self, name: Optional[str] = None) -> int:
        """Number of graphs held (of one stage, or all)."""
        if name is not None:
            return len(self._graphs.get(name, {}))
        return sum(len(v) for v in self._graphs.values())

    def sizes(self, name: str) -> set[Any]:
        """The sizes (see ``size`` of :meth:`__call__`) a stage holds graphs for."""
        return {key[0] for key in self._graphs.get(name, {})}

    def __call__(self, name: str, fn: Callable[..., Sequence[torch.Tensor]],
                 inputs: Sequence[torch.Tensor], static_key: Any = (), *,
                 size: Any = None, clone: bool = True) -> tuple[torch.Tensor, ...]:
        """``fn(*inputs)`` as a tuple of tensors, replayed from a graph where possible.

        Args:
            name: the stage.
            fn: a function of the inputs only (no host synchronisation, fixed shapes).
            inputs: device tensors.
            static_key: anything else that decides what ``fn`` computes.
            size: the camera or network size the call works at (default the first input's
                shape); a call at a new size drops the stage's graphs of other sizes, while
                variants at one size (batch sizes, with or without flow) are kept.
            clone: return copies of the graph's outputs (which the next replay overwrites);
                False for outputs consumed before the stage runs again.
        """
        inputs = list(inputs)
        if not self._uses_graphs(name, inputs):
            return tuple(fn(*inputs))
        size = tuple(inputs[0].shape) if size is None else size
        key = (size, tuple((tuple(x.shape), x.dtype) for x in inputs), static_key)
        stage = self._graphs.setdefault(name, {})
        entry = stage.get(key)
        if entry is None:
            for old in [k for k in stage if k[0] != size]:
                del stage[old]  # a new size: the old size's graphs go
            while len(stage) >= self.max_graphs:
                del stage[next(iter(stage))]  # bounded: the oldest variant goes
            try:
                entry = self._capture(fn, inputs)
            except Exception as exc:  # capture is an optimisation: run eagerly instead
                self.failed[name] = f'{type(exc).__name__}: {exc}'
                log.warning('CUDA graph capture of stage %r failed, running it eagerly: %s',
                            name, self.failed[name])
                if torch.cuda.is_available():
                    torch.cuda.synchronize()
                return tuple(fn(*inputs))
            stage[key] = entry
            self.captures += 1
        else:
            for static, x in zip(entry.inputs, inputs):
                static.copy_(x)
        entry.graph.replay()
        self.replays += 1
        return tuple(o.clone() for o in entry.outputs) if clone else entry.outputs

    def _uses_graphs(self, name: str, inputs: list[torch.Tensor]) -> bool:
        return self.enabled and name not in self.failed and bool(inputs) and \
            inputs[0].device.type == 'cuda'

    def _capture(self, fn: Callable[..., Sequence[torch.Tensor]],
                 inputs: list[torch.Tensor]) -> _Captured:
        static = [x.clone() for x in inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                fn(*static)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        # thread-local: CUDA calls of other threads (a node's executor) do not break capture
        with torch.cuda.graph(graph, capture_error_mode='thread_local'):
            outputs = tuple(fn(*static))
        return _Captured(graph, static, outputs)


@dataclass
class DeviceFrame:
    """A frame on the device after :meth:`DevicePath.prepare`.

    Attributes:
        frame: (H, W, 3) uint8 as the camera sent it.
        bgr: whether ``frame`` is blue, green, red.
        small: (1, 3, h, w) float RGB 0..255 at the network size.
        x: (1, 3, h, w) normalised network input.
        prev_small: the previous frame's ``small`` when flow is to be computed on the device.
    """

    frame: torch.Tensor
    bgr: bool
    small: torch.Tensor
    x: torch.Tensor
    prev_small: Optional[torch.Tensor] = None


class DevicePath:
    """Pre- and post-processing on the device, network calls through CUDA graphs.

    Args:
        device: the torch device (the pipeline uses this on CUDA only).
        input_size: network input (h, w).
        mean: normalisation mean (RGB, 0..1).
        std: normalisation std.
        palette: (256, 3) uint8 colour of each label.
        overlay_alpha: weight of the colour mask in the overlay.
        precision: ``fp32``, ``fp16`` or ``bf16`` (on CUDA the network runs as a copy cast to
            that type, norm layers folded or in fp32: :func:`gpu_ops.inference_copy`).
        graphs: capture CUDA graphs (CUDA only; False runs eagerly).
    """

    def __init__(self, device: torch.device, *, input_size: Sequence[int],
                 mean: Sequence[float], std: Sequence[float], palette: np.ndarray,
                 overlay_alpha: float = 0.5, precision: str = 'fp32',
                 graphs: bool = True) -> None:
        self.device = device
        self.input_size = (int(input_size[0]), int(input_size[1]))
        self.amp_dtype = autocast_dtype(precision, device)
        self.overlay_alpha = float(overlay_alpha)
        std_t, mean_t = torch.tensor(std, dtype=torch.float32), torch.tensor(mean)
        self.scale = (1.0 / (255.0 * std_t)).view(1, 3, 1, 1).to(device)
        self.shift = (-mean_t / std_t).view(1, 3, 1, 1).float().to(device)
        self.palette = torch.from_numpy(np.ascontiguousarray(palette, np.uint8)).to(device)
        self.runner = GraphRunner(enabled=graphs and device.type == 'cuda')
        self.upload = PinnedUpload(device)
        self.download = PinnedDownload(device)
        #: where published outputs go on the host: None (page-locked blocks, never reused), or
        #: an object whose ``buffer(name, shape)`` gives a uint8 host array to fill, for names
        #: in :data:`MESSAGE_OUTPUTS` (a node's reused message buffers: rewritten next frame)
        self.host_buffers: Any = None
        self._indices: dict[tuple[int, int, int, int], tuple[torch.Tensor, torch.Tensor]] = {}
        self._net_names: dict[tuple, list[str]] = {}
        self._cast: dict[int, tuple[torch.nn.Module, torch.nn.Module]] = {}
        #: fp16/bf16 on CUDA: time NCHW and channels-last once, keep the faster
        self.choose_format = True
        self.format_choice: dict[str, Any] = {}
        if device.type == 'cuda':
            # fixed shapes: let cudnn time its algorithms once per shape (graph warm-up does it)
            torch.backends.cudnn.benchmark = True

    @classmethod
    def for_pipeline(cls, pipeline: Any, *, device: Optional[torch.device] = None,
                     graphs: Optional[bool] = None) -> 'DevicePath':
        """The device path of a :class:`~flow2seg_ros.pipeline.FramePipeline` (its sizes,
        normalisation, palette, overlay weight, precision and graph setting).

        Args:
            pipeline: the FramePipeline.
            device: default the pipeline's device (the CPU runs the same code eagerly).
            graphs: default the pipeline's ``cuda_graphs`` setting.
        """
        mean, std = pipeline.normalization
        config = pipeline.config
        return cls(device or pipeline.device, input_size=pipeline.input_size, mean=mean,
                   std=std, palette=pipeline.palette, overlay_alpha=config.overlay_alpha,
                   precision=config.precision,
                   graphs=config.cuda_graphs if graphs is None else graphs)

    # ---- pre: camera frame -> network input ----------------------------------------------

    def _pre(self, bgr: bool) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        def pre(frame: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            small = gpu_ops.resize_to_network(gpu_ops.frame_to_nchw(frame, bgr=bgr),
                                              self.input_size)
            return small, gpu_ops.normalise(small, self.scale, self.shift)
        return pre

    @torch.inference_mode()
    def prepare(self, rgb: np.ndarray, *, bgr: bool = False) -> DeviceFrame:
        """Upload a camera frame and make the network input from it, on the device.

        Args:
            rgb: (H, W, 3) uint8 frame at the camera's size.
            bgr: its channels are blue, green, red.
        """
        frame = self.upload(rgb)
        small, x = self.runner('pre', self._pre(bgr), (frame,), bgr, size=tuple(frame.shape[:2]))
        return DeviceFrame(frame, bgr, small, x)

    @torch.inference_mode()
    def small_host(self, frame: DeviceFrame) -> np.ndarray:
        """The network-size frame as (h, w, 3) uint8 RGB on the host (for host flow methods)."""
        small = frame.small[0].permute(1, 2, 0).to(torch.uint8).contiguous()
        return self.download(small.reshape(-1)).reshape(small.shape)

    # ---- flow and the network ------------------------------------------------------------

    @torch.inference_mode()
    def flow(self, estimator: Any, prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        """A device flow estimator's ``estimate_batch(prev, cur)``, replayed as a graph.

        Args:
            estimator: a flow estimator with ``estimate_batch`` (the learned flow network).
            prev: (N, 3, h, w) previous frames on the device, RGB 0..255.
            cur: (N, 3, h, w) current frames.

        Returns:
            (N, 2, h, w) float32 flow in pixels, current -> previous.
        """
        def flow(p: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor]:
            return (estimator.estimate_batch(p, c),)
        return self.runner('flow', flow, (prev, cur), id(estimator),
                           size=tuple(prev.shape[-2:]))[0]

    def _model(self, model: torch.nn.Module, x: torch.Tensor) -> torch.nn.Module:
        # on CUDA an inference copy (norms folded into the convolutions; fp16/bf16: weights
        # already in that type, no per-call casts, in the memory format measured faster)
        if self.amp_dtype is None and x.device.type != 'cuda':  # the CPU: the model itself
            return model
        hit = self._cast.get(id(model))
        if hit is None or hit[0] is not model:
            cast = gpu_ops.inference_copy(model, self.amp_dtype)
            if self.amp_dtype is not None and self.choose_format and x.device.type == 'cuda':
                # timed as it will run: replayed as a graph, or eagerly with graphs off
                self.format_choice = gpu_ops.faster_memory_format(
                    cast, x.to(self.amp_dtype),
                    graphs=functools.partial(GraphRunner, enabled=self.runner.enabled))
                if self.format_choice['format'] == 'channels_last':
                    cast = cast.to(memory_format=torch.channels_last)
            hit = self._cast[id(model)] = (model, cast)
        return hit[1]

    def _in(self, t: torch.Tensor) -> torch.Tensor:
        # network inputs in the cast model's type and format (no autocast: its per-op dispatch
        # is what an eager, launch-bound network pays for; the cast copy leaves nothing to cast)
        if self.amp_dtype is None:
            return t
        t = t.to(self.amp_dtype)
        if self.format_choice.get('format') == 'channels_last' and t.dim() == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    @torch.inference_mode()
    def infer(self, model: torch.nn.Module, frames: Sequence[Any], *,
              flow_scale: float) -> list[dict[str, torch.Tensor]]:
        """The network on a batch of prepared frames, logits at their native stride.

        The image path is queued on the device first; the flow is computed while it runs (a host
        method such as DIS overlaps with it; the learned flow runs on the device frames); then
        the flow path and the fusion. Each frame gets ``frame.flow`` and the stages ``flow``
        (the flow's wall time, image path queued) and ``network`` (what was left to wait for).

        Args:
            model: the Flow2Seg network.
            frames: :class:`~flow2seg_ros.pipeline.PreparedFrame` s with ``device`` set, of one
                network size (``prev_small`` set where flow is wanted).
            flow_scale: the model card's flow scale.

        Returns:
            Per frame ``{'fused', 'image'[, 'flow']: (1, C, h, w) logits}``.
        """
        size = tuple(frames[0].device.x.shape[-2:])
        key = (id(model), str(self.amp_dtype))
        t0 = time.perf_counter()
        x = torch.cat([f.device.x for f in frames])
        model = self._model(model, x)

        def image_path(x: torch.Tensor) -> tuple[torch.Tensor]:
            # logits leave the network in NCHW whatever its format (small at their stride)
            return (model.image_logits(self._in(x))[0].contiguous(),)

        image = self.runner('image', image_path, (x,), key, size=size)[0]
        idx = [i for i, f in enumerate(frames)
               if f.prev_small is not None and f.pipeline.flow_estimator is not None]
        for i in idx:
            f = frames[i]
            estimator = f.pipeline.flow_estimator
            if hasattr(estimator, 'estimate_batch') and f.device.prev_small is not None:
                f.flow = self.flow(estimator, f.device.prev_small, f.device.small)[0]
            else:  # on the host, while the device runs the image path
                f.flow = estimator(f.prev_small, f.small)
        t1 = time.perf_counter()
        joined: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        if idx:
            flow_in = scale_flow(torch.stack([frames[i].flow for i in idx]).to(self.device),
                                 flow_scale)

            def flow_path(image: torch.Tensor, flow_in: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
                flow_logits = model.flow_logits(self._in(flow_in)).contiguous()
                return model.fuse(image, flow_logits).contiguous(), flow_logits

            picked = image if len(idx) == len(frames) else image[idx]
            fused, flow_logits = self.runner('fuse', flow_path, (picked, flow_in), key,
                                             size=size)
            joined = {i: (fused[j:j + 1], flow_logits[j:j + 1]) for j, i in enumerate(idx)}
        outs = []
        for i in range(len(frames)):
            img = image[i:i + 1]
            if i in joined:
                outs.append({'fused': joined[i][0], 'image': img, 'flow': joined[i][1]})
            else:
                outs.append({'fused': img, 'image': img})
        if self.device.type == 'cuda':
            torch.cuda.synchronize()
        t2 = time.perf_counter()
        for f in frames:
            f.timings['flow'] = f.timings.get('flow', 0.0) + 1000.0 * (t1 - t0)
            f.timings['network'] = f.timings.get('network', 0.0) + 1000.0 * (t2 - t1)
        return outs

    @torch.inference_mode()
    def network(self, model: torch.nn.Module, x: torch.Tensor, flow: Optional[torch.Tensor],
                heads: Sequence[str]) -> dict[str, torch.Tensor]:
        """``model(x, flow, heads=heads)`` under the path's precision, replayed as a graph.

        Args:
            model: the Flow2Seg network.
            x: (N, 3, h, w) normalised input on the device.
            flow: (N, 2, h, w) scaled flow or None.
            heads: heads wanted.
        """
        heads = tuple(heads)
        names: list[str] = []
        dtype = self.amp_dtype

        key = (heads, id(model), str(dtype))
        model = self._model(model, x)

        def net(*args: torch.Tensor) -> tuple[torch.Tensor, ...]:
            out = model(self._in(args[0]), self._in(args[1]) if len(args) > 1 else None,
                        heads=heads)
            names[:] = list(out)
            return tuple(v.contiguous() for v in out.values())

        inputs = (x,) if flow is None else (x, flow)
        values = self.runner('net', net, inputs, key, size=tuple(x.shape[-2:]))
        if not names:  # replayed: the heads are those of the captured call
            names[:] = self._net_names.get(key, [])
        self._net_names[key] = list(names)
        return dict(zip(names, values))

    # ---- post: logits -> published outputs on the host -----------------------------------

    def _index(self, h: int, w: int, big_h: int, big_w: int
               ) -> tuple[torch.Tensor, torch.Tensor]:
        key = (h, w, big_h, big_w)
        if key not in self._indices:
            self._indices[key] = (
                torch.from_numpy(gpu_ops.nearest_indices(h, big_h)).to(self.device),
                torch.from_numpy(gpu_ops.nearest_indices(w, big_w)).to(self.device))
        return self._indices[key]

    @torch.inference_mode()
    def finish(self, frame: DeviceFrame, out: dict[str, torch.Tensor],
               flow: Optional[torch.Tensor], *, outputs: Iterable[str],
               heads: Iterable[str], lap: Optional[Callable[[str], None]] = None
               ) -> dict[str, Any]:
        """Labels, head labels and pictures at the camera's size, downloaded in one copy.

        Args:
            frame: the frame from :meth:`prepare`.
            out: ``{head: (1, C, h, w) logits}`` from the network.
            flow: (2, h, w) flow in pixels or None.
            outputs: pictures wanted (``color_mask``, ``overlay``, ``confidence``, ``flow_rgb``).
            heads: heads whose labels are wanted (``fused`` always is).
            lap: called with a stage name after ``argmax`` and after the rest (timing).

        Returns:
            ``labels``, ``head_labels`` {head: labels or None}, ``confidence``, ``color_mask``,
            ``overlay``, ``flow_rgb`` (None where not asked) and ``flow`` ((2, h, w) float32 or
            None), numpy arrays on the host.
        """
        outputs = set(outputs)
        head_list = [h for h in heads if h != 'fused' and h in out]
        want_conf = 'confidence' in outputs
        logits = [out['fused']] + [out[h] for h in head_list]

        size = self.input_size

        def argmax(*ls: torch.Tensor) -> tuple[torch.Tensor, ...]:
            ls = tuple(gpu_ops.full_size(x, size) for x in ls)
            labels, conf = gpu_ops.labels_and_confidence(ls[0], want_conf)
            rest = [gpu_ops.labels_and_confidence(x, False)[0][0] for x in ls[1:]]
            return (labels[0],) + tuple(rest) + ((conf[0],) if want_conf else ())

        small = self.runner('argmax', argmax, logits, (want_conf, len(logits)),
                            size=tuple(logits[0].shape[-2:]))
        if lap is not None:
            lap('argmax')
        big_h, big_w = frame.frame.shape[:2]
        h, w = self.input_size
        rows, cols = self._index(h, w, big_h, big_w)
        want_color = bool(outputs & {'color_mask', 'overlay'})
        want_overlay, want_flow_rgb = 'overlay' in outputs, 'flow_rgb' in outputs
        has_flow = flow is not None
        alpha, max_mag, bgr = self.overlay_alpha, 0.05 * w, frame.bgr
        layout: list[tuple[str, tuple[int, ...]]] = []
        if has_flow:
            layout.append(('flow', (2, h, w)))  # float32 first: 4-byte aligned on the host
        layout.append(('labels', (big_h, big_w)))
        layout += [(f'head:{hd}', (big_h, big_w)) for hd in head_list]
        if want_conf:
            layout.append(('confidence', (big_h, big_w)))
        if want_color:
            layout.append(('color_mask', (big_h, big_w, 3)))
        if want_overlay:
            layout.append(('overlay', (big_h, big_w, 3)))
        if want_flow_rgb:
            layout.append(('flow_rgb', (big_h, big_w, 3)))

        def post(cam: torch.Tensor, *args: torch.Tensor) -> tuple[torch.Tensor]:
            args = list(args)
            flow_px = args.pop() if has_flow else None
            parts = [] if flow_px is None else [flow_px.float().contiguous().view(torch.uint8)
                                                .reshape(-1)]
            labels_small = args[0]
            for lab in args[:1 + len(head_list)]:
                parts.append(gpu_ops.resize_nearest(lab, rows, cols).reshape(-1))
            if want_conf:
                conf = gpu_ops.resize_linear_u8(args[1 + len(head_list)], (big_h, big_w))
                parts.append(conf.reshape(-1))
            if want_color:
                color = gpu_ops.resize_nearest(gpu_ops.colorize(labels_small, self.palette),
                                               rows, cols)
                parts.append(color.reshape(-1))
                if want_overlay:
                    rgb = cam.flip(-1) if bgr else cam
                    parts.append(gpu_ops.blend(rgb, color, alpha).reshape(-1))
            if want_flow_rgb:
                pic = (torch.zeros((h, w, 3), dtype=torch.uint8, device=cam.device)
                       if flow_px is None else gpu_ops.flow_picture(flow_px, max_mag))
                parts.append(gpu_ops.resize_linear_u8(pic, (big_h, big_w)).reshape(-1))
            return (torch.cat(parts),)

        inputs = [frame.frame, *small] + ([flow.to(self.device)] if has_flow else [])
        key = (tuple(layout), bgr, alpha)
        packed = self.runner('post', post, inputs, key, size=(big_h, big_w), clone=False)[0]
        sizes = [(4 if name == 'flow' else 1) * int(np.prod(shape)) for name, shape in layout]
        into = [self.host_buffers.buffer(name, shape)
                if self.host_buffers is not None and name in MESSAGE_OUTPUTS else None
                for name, shape in layout]
        host = self.download.parts(packed, sizes, into)
        if lap is not None:
            lap('resize_back')
        return _unpack(host, layout, heads)


#: Outputs that :attr:`DevicePath.host_buffers` may take (what a node publishes).
MESSAGE_OUTPUTS = ('labels', 'confidence', 'color_mask', 'overlay', 'flow_rgb')


def _unpack(host: list[np.ndarray], layout: list[tuple[str, tuple[int, ...]]],
            heads: Iterable[str]) -> dict[str, Any]:
    arrays: dict[str, Any] = {}
    for part, (name, shape) in zip(host, layout):
        arrays[name] = (part.view(np.float32) if name == 'flow' else part).reshape(shape)
    result: dict[str, Any] = {k: arrays.get(k) for k in
                              ('labels', 'confidence', 'color_mask', 'overlay', 'flow_rgb',
                               'flow')}
    result['head_labels'] = {h: result['labels'] if h == 'fused' else arrays.get(f'head:{h}')
                             for h in heads}
    return result
