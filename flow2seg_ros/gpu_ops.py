"""The pipeline's per-frame picture work in torch, so that it can stay on a GPU.

Each function here is the device twin of a CPU step of :class:`~flow2seg_ros.pipeline.
FramePipeline` (OpenCV/numpy), written to give the same pixels: labels identical, pictures
within one level (OpenCV rounds in fixed point, torch in float). They run on any torch device,
so the CPU tests compare them with the OpenCV path directly; on CUDA they run inside the
pipeline's device path (:mod:`flow2seg_ros.device_path`), where every shape is fixed by the
camera and network sizes and nothing synchronises with the host, so they can be captured in a
CUDA graph.

Shapes: frames are (H, W, 3) uint8 as they come from the camera; network-side images are
(N, 3, h, w) float holding 0..255 values; labels are (h, w) or (N, h, w) integers.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

__all__ = ['frame_to_nchw', 'resize_to_network', 'normalise', 'nearest_indices',
           'resize_nearest', 'resize_linear_u8', 'colorize', 'blend', 'full_size',
           'labels_and_confidence',
           'fast_atan2_deg', 'flow_picture', 'round_half_up', 'fold_batchnorm', 'inference_copy',
           'faster_memory_format']


def round_half_up(x: torch.Tensor) -> torch.Tensor:
    """``floor(x + 0.5)``: OpenCV's fixed-point resizes round halves up, torch.round to even."""
    return torch.floor(x + 0.5)


def frame_to_nchw(frame: torch.Tensor, *, bgr: bool = False) -> torch.Tensor:
    """(H, W, 3) uint8 camera frame -> (1, 3, H, W) float32 RGB holding 0..255.

    Args:
        frame: the frame as the camera sent it.
        bgr: the frame's channels are blue, green, red (``bgr8``); they are swapped here.
    """
    if frame.dim() != 3 or frame.shape[2] != 3 or frame.dtype != torch.uint8:
        raise ValueError(f'frame must be an (H, W, 3) uint8 tensor, got {tuple(frame.shape)} '
                         f'{frame.dtype}')
    x = frame.permute(2, 0, 1).unsqueeze(0)
    if bgr:
        x = x.flip(1)
    return x.float()


_AXES: dict[tuple[int, int, str], tuple[torch.Tensor, ...]] = {}


def _axis(src: int, dst: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    # source pixels and weights of OpenCV's INTER_LINEAR along one axis (pixel centres, edges
    # clamped), made on the host once per size and device (before any graph capture: the
    # runner's eager warm-up calls come first)
    key = (src, dst, str(device))
    if key not in _AXES:
        pos = np.maximum((np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5, 0.0)
        i0 = np.minimum(np.floor(pos), src - 1).astype(np.int64)
        i1 = np.minimum(i0 + 1, src - 1)
        w1 = (pos - i0).astype(np.float32)
        _AXES[key] = tuple(torch.from_numpy(a).to(device) for a in (i0, i1, 1 - w1, w1))
    return _AXES[key]


def _linear(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    # bilinear with pixel-centre alignment and no anti-aliasing: OpenCV's INTER_LINEAR, as
    # separate gathers, products and sums: each is exactly rounded on any device, so the CPU and
    # CUDA give the same bits (one fused interpolation kernel contracts to FMAs on CUDA, which
    # moves a few values across a rounding boundary)
    for dim, (src, dst) in ((3, (x.shape[3], int(size[1]))), (2, (x.shape[2], int(size[0])))):
        if src != dst:
            i0, i1, w0, w1 = _axis(src, dst, x.device)
            if dim == 2:
                w0, w1 = w0.view(-1, 1), w1.view(-1, 1)
            x = x.index_select(dim, i0) * w0 + x.index_select(dim, i1) * w1
    return x


def resize_to_network(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """The CPU path's downscale to the network size, in torch (within one level of it).

    As ``FramePipeline`` does it on the CPU: with k = the whole number of times the network size
    fits in the frame, k >= 2 resizes bilinearly to k times the network size and then averages
    k x k blocks (OpenCV's area resize at an integer factor: the anti-aliased downscale); k < 2
    resizes bilinearly. Each step rounds to whole levels as OpenCV's uint8 resize does.

    Args:
        x: (N, 3, H, W) float image holding 0..255.
        size: (h, w) of the network input.

    Returns:
        (N, 3, h, w) float holding whole numbers 0..255.
    """
    h, w = int(size[0]), int(size[1])
    big_h, big_w = x.shape[-2:]
    if (big_h, big_w) == (h, w):
        return x
    k = int(min(big_w / w, big_h / h))
    if k < 2:
        return round_half_up(_linear(x, (h, w))).clamp_(0, 255)
    if (big_h, big_w) != (k * h, k * w):
        x = round_half_up(_linear(x, (k * h, k * w))).clamp_(0, 255)
    return round_half_up(F.avg_pool2d(x, k))


def normalise(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """The network input: ``x * scale + shift`` (/255, mean and std folded into one step).

    Args:
        x: (N, 3, h, w) float holding 0..255.
        scale: (1, 3, 1, 1) ``1 / (255 std)``.
        shift: (1, 3, 1, 1) ``-mean / std``.
    """
    return torch.addcmul(shift, x, scale)


def nearest_indices(src: int, dst: int) -> np.ndarray:
    """Source index of each destination pixel as OpenCV's INTER_NEAREST picks it.

    OpenCV takes ``floor(x / fx)`` with ``fx = dst / src`` in double precision (not pixel
    centres); computing the indices the same way on the host keeps labels identical to the CPU
    path at every size, where a float32 scale on the device could round across a boundary.

    Args:
        src: source length in pixels.
        dst: destination length in pixels.
    """
    ifx = 1.0 / (float(dst) / float(src))
    return np.minimum(np.floor(np.arange(dst, dtype=np.float64) * ifx), src - 1).astype(np.int64)


def resize_nearest(img: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """Nearest resize by index tensors from :func:`nearest_indices` (labels stay labels).

    Args:
        img: (h, w) or (h, w, C) tensor.
        rows: (H,) int64 source row of each output row.
        cols: (W,) int64 source column of each output column.
    """
    return img.index_select(0, rows).index_select(1, cols)


def resize_linear_u8(img: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """OpenCV INTER_LINEAR of a uint8 picture, in torch (within one level).

    Args:
        img: (h, w) or (h, w, C) uint8.
        size: (H, W) wanted.

    Returns:
        uint8 tensor of the new size, same layout.
    """
    if tuple(img.shape[:2]) == tuple(size):
        return img
    x = img.unsqueeze(-1) if img.dim() == 2 else img
    x = x.permute(2, 0, 1).unsqueeze(0).float()
    y = round_half_up(_linear(x, size)).clamp_(0, 255).to(torch.uint8)
    y = y[0].permute(1, 2, 0)
    return y[..., 0].contiguous() if img.dim() == 2 else y.contiguous()


def colorize(labels: torch.Tensor, palette: torch.Tensor) -> torch.Tensor:
    """Labels -> RGB through a (256, 3) uint8 palette (as :func:`visualize.colorize`).

    Args:
        labels: (h, w) integer labels 0..255.
        palette: (256, 3) uint8 on the labels' device.
    """
    return palette.index_select(0, labels.reshape(-1).long()).view(*labels.shape, 3)


def blend(rgb: torch.Tensor, mask: torch.Tensor, alpha: float) -> torch.Tensor:
    """``(1 - alpha) * rgb + alpha * mask`` rounded to uint8 (as :func:`visualize.overlay`).

    Args:
        rgb: (H, W, 3) uint8 RGB frame.
        mask: (H, W, 3) uint8 colour mask.
        alpha: weight of the mask, 0..1.
    """
    mixed = rgb.float() * (1.0 - alpha) + mask.float() * alpha
    return mixed.round_().clamp_(0, 255).to(torch.uint8)


def full_size(logits: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Logits at a network stride upsampled (bilinear) to the network's input size, as the
    pipeline does before its argmax; logits already at that size are returned as they are.

    Args:
        logits: (N, C, h', w') logits.
        size: (h, w) of the network input.
    """
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return _linear(logits.float(), size)


def labels_and_confidence(logits: torch.Tensor, confidence: bool
                          ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Argmax labels and, when asked, the softmax probability of the winner as 0..255.

    Same operations as the CPU path, so the labels are identical on the same logits.

    Args:
        logits: (N, C, h, w) logits.
        confidence: also return the confidence.

    Returns:
        ``(labels (N, h, w) uint8, confidence (N, h, w) uint8 or None)``.
    """
    if confidence:
        conf, labels = torch.softmax(logits.float(), 1).max(1)
        return labels.to(torch.uint8), (conf * 255).round().to(torch.uint8)
    return logits.max(1).indices.to(torch.uint8), None


# OpenCV's atan2 polynomial (fastAtan32f, in degrees), used by cv2.cartToPolar.
_ATAN_P = [c * (180.0 / np.pi) for c in (0.9997878412794807, -0.3258083974640975,
                                         0.1555786518463281, -0.04432655554792128)]
_EPS = float(np.float32(np.finfo(np.float64).eps))


def fast_atan2_deg(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Angle of (x, y) in degrees, 0..360, as OpenCV's cartToPolar computes it (float32)."""
    ax, ay = x.abs(), y.abs()
    steep = ay > ax
    c = torch.where(steep, ax / (ay + _EPS), ay / (ax + _EPS))
    c2 = c * c
    p1, p3, p5, p7 = _ATAN_P
    a = (((p7 * c2 + p5) * c2 + p3) * c2 + p1) * c
    a = torch.where(steep, 90.0 - a, a)
    a = torch.where(x < 0, 180.0 - a, a)
    return torch.where(y < 0, 360.0 - a, a)


_HSV_TABLES: dict[str, torch.Tensor] = {}


def _hsv_table(device: torch.device) -> torch.Tensor:
    # (hue, value) -> RGB at full saturation, from OpenCV's own 8-bit HSV2RGB (whose rounding
    # differs between OpenCV versions): (256 * 256, 3) uint8, made once per device, before any
    # graph capture (the runner's eager warm-up calls come first)
    key = str(device)
    if key not in _HSV_TABLES:
        hue, val = np.meshgrid(np.arange(256), np.arange(256), indexing='ij')
        hsv = np.stack([hue, np.full_like(hue, 255), val], -1).astype(np.uint8)
        rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB).reshape(-1, 3)
        _HSV_TABLES[key] = torch.from_numpy(rgb).to(device)
    return _HSV_TABLES[key]


def flow_picture(flow: torch.Tensor, max_magnitude: float) -> torch.Tensor:
    """(2, h, w) flow in pixels -> (h, w, 3) uint8 RGB picture (as :func:`visualize.flow_to_rgb`).

    Hue is the direction (half degrees, truncated), saturation full, value the magnitude scaled
    by ``255 / max_magnitude`` (truncated), converted to RGB through a table of OpenCV's own
    8-bit HSV2RGB: the same bits as the CPU path's picture.

    Args:
        flow: (2, h, w) float flow (dx, dy).
        max_magnitude: the magnitude shown at full brightness.
    """
    fx, fy = flow[0].float(), flow[1].float()
    mag = torch.sqrt(fx * fx + fy * fy)
    hue = torch.floor(fast_atan2_deg(fy, fx) / 2).clamp_(0, 255)
    val = torch.floor((mag * (255.0 / float(max_magnitude))).clamp_(0, 255))
    index = (hue * 256 + val).long().reshape(-1)
    return _hsv_table(flow.device).index_select(0, index).view(*fx.shape, 3)


_NORMS = (torch.nn.modules.batchnorm._NormBase, torch.nn.GroupNorm, torch.nn.LayerNorm)


def fold_batchnorm(model: torch.nn.Module) -> int:
    """Fold every BatchNorm that directly follows a convolution into it, in place (eval only).

    The pairs are a ``Conv2d`` followed by a ``BatchNorm2d`` in an ``nn.Sequential`` (stems,
    downsamples, heads, pyramid pooling bins) and torchvision's residual blocks' ``convN`` /
    ``bnN``; each becomes one convolution (``torch.nn.utils.fusion.fuse_conv_bn_eval``) and an
    ``Identity``: one kernel fewer per pair, and none of the norm kernels that reduced types
    dispatch differently. Call it on an inference copy: training needs the norms.

    Returns:
        How many norms were folded.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval
    from torchvision.models.resnet import BasicBlock, Bottleneck

    def foldable(conv: Any, bn: Any) -> bool:
        return (isinstance(conv, torch.nn.Conv2d) and isinstance(bn, torch.nn.BatchNorm2d)
                and bn.running_mean is not None and conv.out_channels == bn.num_features)

    folded = 0
    for module in list(model.modules()):
        if isinstance(module, torch.nn.Sequential):
            names = list(module._modules)
            pairs = list(zip(names, names[1:]))
        elif isinstance(module, (BasicBlock, Bottleneck)):
            pairs = [(f'conv{i}', f'bn{i}') for i in (1, 2, 3) if hasattr(module, f'bn{i}')]
        else:
            continue
        for a, b in pairs:
            conv, bn = getattr(module, a), getattr(module, b)
            if foldable(conv, bn):
                setattr(module, a, fuse_conv_bn_eval(conv.eval(), bn.eval()))
                setattr(module, b, torch.nn.Identity())
                folded += 1
    return folded


def inference_copy(model: torch.nn.Module, dtype: torch.dtype | None = None, *,
                   fold: bool = True) -> torch.nn.Module:
    """An inference copy of ``model``: norms folded into their convolutions, weights in ``dtype``.

    Under autocast, every convolution casts its fp32 weight to fp16/bf16 on every call: on a
    small, launch-bound network those cast kernels make fp16 slower than fp32. A copy that holds
    the weights in the reduced type has nothing to cast. Norms that follow a convolution are
    folded into it (:func:`fold_batchnorm`, in fp32 before any cast); any other norm layer keeps
    fp32 statistics (and takes reduced-type inputs, as under autocast). The copy does not follow
    later changes to ``model``'s weights.

    Args:
        model: the network (left as it is).
        dtype: ``torch.float16`` or ``torch.bfloat16``; None keeps fp32.
        fold: fold the norms (False: only cast; for comparison).
    """
    copy_ = copy.deepcopy(model).eval()
    if fold:
        fold_batchnorm(copy_)
    if dtype is None:
        return copy_
    copy_ = copy_.to(dtype)
    for module in copy_.modules():
        if isinstance(module, _NORMS):
            module.float()
    return copy_


def faster_memory_format(model: torch.nn.Module, x: torch.Tensor, *, graphs: Any,
                         replays: int = 10, margin: float = 0.97) -> dict[str, Any]:
    """Time ``model`` on ``x`` in NCHW and in channels-last and say which is faster.

    Which format is faster depends on the network and the precision (on an H100 channels-last
    made the lite network in bf16 faster and the paper preset 2-3x slower), so it is measured,
    once, as the path runs it: replayed as a graph by ``graphs`` (a ``GraphRunner`` class;
    eagerly where graphs are off or on the CPU).

    Args:
        model: the network as it will run (weights cast already).
        x: (N, 3, h, w) input of the network's size and type.
        graphs: the graph runner class.
        replays: timed calls per format after two untimed ones.
        margin: channels-last must take under ``margin`` times NCHW's time to be chosen.

    Returns:
        ``{'format': 'nchw' | 'channels_last', 'ms': {format: ms per call}}``.
    """
    cuda = x.device.type == 'cuda'
    flow = None
    if getattr(model, 'has_flow', True):
        flow = torch.zeros((x.shape[0], 2, *x.shape[-2:]), dtype=x.dtype, device=x.device)
    times = {}
    for name, fmt in (('nchw', torch.contiguous_format), ('channels_last', torch.channels_last)):
        net = model if name == 'nchw' else copy.deepcopy(model).to(memory_format=fmt)
        inputs = [x.contiguous(memory_format=fmt)]
        if flow is not None:
            inputs.append(flow.contiguous(memory_format=fmt))

        def call(*args: torch.Tensor, net: torch.nn.Module = net) -> tuple[torch.Tensor, ...]:
            return tuple(net(args[0], args[1] if len(args) > 1 else None,
                             heads=('fused',)).values())

        runner = graphs()
        with torch.inference_mode():
            for _ in range(2):
                runner('probe', call, inputs)
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(replays):
                runner('probe', call, inputs)
            if cuda:
                torch.cuda.synchronize()
        times[name] = 1e3 * (time.perf_counter() - t0) / replays
        runner.clear()
        del net
    best = 'channels_last' if times['channels_last'] < margin * times['nchw'] else 'nchw'
    return {'format': best, 'ms': {k: round(v, 3) for k, v in times.items()}}
