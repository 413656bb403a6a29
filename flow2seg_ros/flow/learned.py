"""A small learned optical flow network in plain PyTorch, and its estimator.

The network (:class:`FlowLiteNet`) is a coarse-to-fine design in the spirit of PWC-Net, cut down
for a CPU budget of a few milliseconds at the node's 512x256 input:

* a 4x4 patch convolution of stride 4 (``stem_stride``) reads the full-size frames (pyramid
  level 0), then one shared feature pyramid (a stride-2 convolution and one more convolution per
  level) runs on both frames as one batch;
* from the coarsest level down to ``out_level``, the previous frame's features are warped by the
  flow so far, a local correlation of radius ``r`` is computed from plain tensor ops (no custom
  kernel), and a three-layer estimator predicts the residual flow;
* a dilated context network refines the flow at ``out_level``; two convolutions on the level-0
  features of the current frame correct it at level 0 (stride 4), from where it is scaled to
  input pixels and upsampled bilinearly to the input size.

Every shape follows from the input size alone (no data-dependent shapes and no host
synchronisation inside ``forward``), so a forward pass can be captured in a CUDA graph. The flow
follows :mod:`flow2seg_ros.flow`'s convention: from the current frame to the previous one.

Weights are a safetensors file with a JSON card beside it (``<name>.json``), format
``flow2seg-flow-card/1``, holding ``architecture``, ``model_kwargs``, ``training`` and
``metrics``. The bundled weights are :func:`bundled_flow_weights_path`; nothing downloads.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from flow2seg_ros.flow.base import FlowEstimator
from flow2seg_ros.tensorfile import read_with_card, WeightsError, write_with_card

__all__ = ['ARCHITECTURE', 'BUNDLED_FLOW_WEIGHTS', 'FLOW_CARD_FORMAT', 'FlowLiteNet',
           'LearnedFlow', 'bundled_flow_weights_path', 'correlation', 'correlation_shifted',
           'correlation_unfold', 'load_flow_model', 'resolve_flow_weights', 'save_flow_model',
           'warp']

#: Value of the flow weights card's ``format`` key.
FLOW_CARD_FORMAT = 'flow2seg-flow-card/1'
#: Value of the card's ``architecture`` key for :class:`FlowLiteNet`.
ARCHITECTURE = 'flowlite'

PathLike = Union[str, os.PathLike]


#: Name of the bundled default flow weights in ``flow2seg_ros/bundled/``.
BUNDLED_FLOW_WEIGHTS = 'flowlite_synthetic'


def bundled_flow_weights_path(name: str = BUNDLED_FLOW_WEIGHTS) -> Path:
    """Path of bundled flow weights (``flow2seg_ros/bundled/<name>.safetensors``)."""
    return Path(__file__).resolve().parent.parent / 'bundled' / f'{name}.safetensors'


def resolve_flow_weights(preset: Optional[str]) -> Path:
    """The weights file a flow preset names: ``''``/None = the bundled default, a bare name
    = that bundled file, anything with a ``/`` or ending in ``.safetensors`` = that path."""
    if not preset:
        return bundled_flow_weights_path()
    text = str(preset)
    if '/' in text or os.sep in text or text.endswith('.safetensors'):
        return Path(text).expanduser()
    return bundled_flow_weights_path(text)


def _conv(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, padding=dilation, dilation=dilation),
                         nn.LeakyReLU(0.1, inplace=True))


def warp(features: torch.Tensor, flow: torch.Tensor) -> torch.Tensor:
    """Sample ``features`` at ``x + flow(x)`` (bilinear, border values outside).

    Args:
        features: (N, C, H, W).
        flow: (N, 2, H, W) in pixels of this grid (dx, dy).
    """
    n, _, h, w = flow.shape
    ys = torch.arange(h, device=flow.device, dtype=flow.dtype)
    xs = torch.arange(w, device=flow.device, dtype=flow.dtype)
    # Pixel centres in align_corners=False normalised coordinates: (2x + 1) / W - 1.
    gx = (2.0 * (xs.view(1, 1, w) + flow[:, 0]) + 1.0) / w - 1.0
    gy = (2.0 * (ys.view(1, h, 1) + flow[:, 1]) + 1.0) / h - 1.0
    grid = torch.stack((gx, gy), dim=-1)
    return F.grid_sample(features, grid, mode='bilinear', padding_mode='border',
                         align_corners=False)


def correlation(f1: torch.Tensor, f2: torch.Tensor, radius: int) -> torch.Tensor:
    """Local correlation: channel sums of products of f1(x) and f2(x + d), |d| <= radius.

    Two tensor-op forms of one sum, picked by device: on a GPU one ``unfold`` and a product
    (three kernels whatever the radius); on a CPU one shifted product per displacement, which
    there is several times faster than ``unfold``'s im2col. Zero padding at the border.

    Args:
        f1: (N, C, H, W) features of the current frame.
        f2: (N, C, H, W) (warped) features of the previous frame.
        radius: the largest displacement in each direction.

    Returns:
        (N, (2r+1)**2, H, W); displacement d = (dy, dx) is channel (dy + r) * (2r + 1) + dx + r.
    """
    if f1.is_cuda:
        return correlation_unfold(f1, f2, radius)
    return correlation_shifted(f1, f2, radius)


def correlation_unfold(f1: torch.Tensor, f2: torch.Tensor, radius: int) -> torch.Tensor:
    """:func:`correlation` as one ``unfold`` and one product (the GPU form)."""
    n, c, h, w = f1.shape
    k = 2 * radius + 1
    patches = F.unfold(f2, kernel_size=k, padding=radius).view(n, c, k * k, h, w)
    return (patches * f1.unsqueeze(2)).sum(dim=1)


def correlation_shifted(f1: torch.Tensor, f2: torch.Tensor, radius: int) -> torch.Tensor:
    """:func:`correlation` as one shifted product per displacement (the CPU form)."""
    h, w = f1.shape[-2:]
    k = 2 * radius + 1
    padded = F.pad(f2, (radius, radius, radius, radius))
    return torch.stack([(f1 * padded[:, :, dy:dy + h, dx:dx + w]).sum(dim=1)
                        for dy in range(k) for dx in range(k)], dim=1)


class FlowLiteNet(nn.Module):
    """Coarse-to-fine flow network; ``forward(prev, cur)`` -> (N, 2, H, W) flow cur->prev.

    Args:
        stem_stride: the first convolution is a ``stem_stride`` x ``stem_stride`` patch embedding
            with that stride (2 or 4): level 0 of the pyramid has this stride.
        widths: feature channels of the pyramid levels; level i has stride
            ``stem_stride * 2**i``; the flow starts at the last (coarsest) level.
        radii: correlation radius at each estimated level, coarsest first; their count fixes how
            many levels are estimated, down to ``out_level = len(widths) - len(radii)``.
        est_width: channels of the per-level flow estimators.
        context_width: channels of the dilated context network at the output level (0 = none).
        refine_width: channels of the refinement at level 0 (0 = none): from the current
            frame's level-0 features and the flow so far, two convolutions correct the flow at
            level 0, which sharpens motion edges; the flow is upsampled bilinearly from there.

    Inputs are (N, 3, H, W) frames in [0, 255] (uint8 or float); H and W are padded (replicated)
    to a multiple of ``stem_stride * 2**(len(widths) - 1)`` inside, and the flow is cropped
    back. The output is float32, in input pixels, at the input size.
    """

    def __init__(self, *, stem_stride: int = 4, widths: Sequence[int] = (16, 24, 32, 48),
                 radii: Sequence[int] = (3, 2, 1), est_width: int = 32,
                 context_width: int = 24, refine_width: int = 16) -> None:
        super().__init__()
        if stem_stride not in (2, 4):
            raise ValueError(f'stem_stride must be 2 or 4, got {stem_stride}')
        if not 1 <= len(radii) <= len(widths):
            raise ValueError(f'need 1 to {len(widths)} correlation radii (one per estimated '
                             f'level), got {list(radii)}')
        if any(r < 1 for r in radii):
            raise ValueError(f'correlation radii must be >= 1, got {list(radii)}')
        self.model_kwargs = {'stem_stride': int(stem_stride), 'widths': [int(v) for v in widths],
                             'radii': [int(v) for v in radii], 'est_width': int(est_width),
                             'context_width': int(context_width),
                             'refine_width': int(refine_width)}
        self.stem_stride = int(stem_stride)
        self.levels = len(widths)
        self.radii = [int(r) for r in radii]
        self.out_level = self.levels - len(radii)
        self.stem = nn.Conv2d(3, widths[0], stem_stride, stride=stem_stride)
        self.encoder = nn.ModuleList([nn.Identity()])
        for i in range(1, self.levels):
            self.encoder.append(nn.Sequential(_conv(widths[i - 1], widths[i], stride=2),
                                              _conv(widths[i], widths[i])))
        self.estimators = nn.ModuleList()
        for j, r in enumerate(self.radii):
            level = self.levels - 1 - j
            cin = (2 * r + 1) ** 2 + widths[level] + (2 if j else 0)
            self.estimators.append(nn.ModuleDict({
                'body': nn.Sequential(_conv(cin, est_width), _conv(est_width, est_width)),
                'flow': nn.Conv2d(est_width, 2, 3, padding=1),
            }))
        self.context = None
        if context_width:
            self.context = nn.Sequential(
                _conv(est_width + 2, context_width, dilation=1),
                _conv(context_width, context_width, dilation=2),
                _conv(context_width, context_width, dilation=4),
                nn.Conv2d(context_width, 2, 3, padding=1))
        self.refine = None
        if refine_width and self.out_level > 0:
            self.refine = nn.Sequential(_conv(widths[0] + 2, refine_width),
                                        nn.Conv2d(refine_width, 2, 3, padding=1))

        # Every flow output starts at zero: the first estimate is "no motion", not noise that
        # the coarse-to-fine upsampling would multiply.
        for head in [e['flow'] for e in self.estimators] + [
                m[-1] for m in (self.context, self.refine) if m is not None]:
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)

    @property
    def prediction_strides(self) -> list[int]:
        """The grid stride (input pixels) of each item of :meth:`predictions`."""
        out = [self.stem_stride * 2 ** (self.levels - 1 - j) for j in range(len(self.radii))]
        if self.context is not None:
            out.append(out[-1])
        if self.refine is not None:
            out.append(self.stem_stride)
        return out + [1]

    @property
    def multiple(self) -> int:
        """Input sizes are padded to a multiple of this."""
        return self.stem_stride * 2 ** (self.levels - 1)

    def _stem(self, prev: torch.Tensor, cur: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        if prev.shape != cur.shape or prev.dim() != 4 or prev.shape[1] != 3:
            raise ValueError(f'flow needs two (N, 3, H, W) frames of one shape, got '
                             f'{tuple(prev.shape)} and {tuple(cur.shape)}')
        h, w = cur.shape[-2:]
        x = torch.cat((cur, prev), dim=0).float()
        m = self.multiple
        ph, pw = (-h) % m, (-w) % m
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode='replicate')
        # The input scaling (x / 127.5 - 1) folded into the stem's weights: one pass less over
        # the full-size frames.
        weight = self.stem.weight * (1.0 / 127.5)
        bias = self.stem.bias - self.stem.weight.sum(dim=(1, 2, 3))
        x = F.leaky_relu(F.conv2d(x, weight, bias, stride=self.stem_stride), 0.1)
        return x, h, w

    def predictions(self, prev: torch.Tensor, cur: torch.Tensor) -> list[torch.Tensor]:
        """Every flow estimate, coarsest first, each in pixels of its own level's grid; the last
        item is the final flow at the input size in input pixels (what ``forward`` returns)."""
        x, h, w = self._stem(prev, cur)
        n = cur.shape[0]
        pyramid = []
        for stage in self.encoder:
            x = stage(x)
            pyramid.append(x)
        outputs: list[torch.Tensor] = []
        flow: Optional[torch.Tensor] = None
        hidden: Optional[torch.Tensor] = None
        for j, (est, r) in enumerate(zip(self.estimators, self.radii)):
            feats = pyramid[self.levels - 1 - j]
            f_cur = feats[:n]
            # Unit-length features: the correlation is a cosine similarity in [-1, 1], a strong
            # signal from the first step and insensitive to contrast.
            unit = feats * torch.rsqrt((feats * feats).sum(dim=1, keepdim=True) + 1e-6)
            u_cur, f_prev = unit[:n], unit[n:]
            if flow is None:
                corr = correlation(u_cur, f_prev, r)
                inp = torch.cat((corr, f_cur), dim=1)
            else:
                flow = 2.0 * F.interpolate(flow, scale_factor=2.0, mode='bilinear',
                                           align_corners=False)
                corr = correlation(u_cur, warp(f_prev, flow), r)
                inp = torch.cat((corr, f_cur, flow), dim=1)
            hidden = est['body'](inp)
            delta = est['flow'](hidden)
            flow = delta if flow is None else flow + delta
            outputs.append(flow)
        if self.context is not None:
            flow = flow + self.context(torch.cat((hidden, flow), dim=1))
            outputs.append(flow)
        level = self.out_level
        if self.refine is not None:
            k = float(2 ** level)
            flow = k * F.interpolate(flow, scale_factor=k, mode='bilinear', align_corners=False)
            flow = flow + self.refine(torch.cat((pyramid[0][:n], flow), dim=1))
            outputs.append(flow)
            level = 0
        factor = float(self.stem_stride * 2 ** level)
        full = F.interpolate(flow * factor, scale_factor=factor, mode='bilinear',
                             align_corners=False)
        outputs.append(full[:, :, :h, :w].float())
        return outputs

    def forward(self, prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        """(N, 2, H, W) float32 flow from ``cur`` to ``prev`` in input pixels.

        Args:
            prev: (N, 3, H, W) previous frames, RGB in [0, 255].
            cur: (N, 3, H, W) current frames, same shape.
        """
        return self.predictions(prev, cur)[-1]


def save_flow_model(model: FlowLiteNet, path: PathLike, *,
                    training: Optional[dict[str, Any]] = None,
                    metrics: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Write the weights (safetensors) and the card (``.json`` beside them); returns the card.

    Args:
        model: the network.
        path: destination ``.safetensors`` file.
        training: how it was trained (command, config, data, steps, wall time, ...).
        metrics: held-out figures.
    """
    path = Path(path)
    if path.suffix != '.safetensors':
        raise WeightsError(f'flow weights path should end with .safetensors, got {path}')
    card = {'format': FLOW_CARD_FORMAT, 'architecture': ARCHITECTURE,
            'model_kwargs': dict(model.model_kwargs), 'training': dict(training or {}),
            'metrics': dict(metrics or {})}
    write_with_card(path, model.state_dict(), card,
                    metadata={'format': FLOW_CARD_FORMAT, 'architecture': ARCHITECTURE})
    return card


def load_flow_model(path: Optional[PathLike] = None, *,
                    device: Union[str, torch.device] = 'cpu') -> tuple[FlowLiteNet, dict]:
    """Load flow weights and their card; ``None`` loads the bundled weights.

    Returns:
        ``(model, card)``, the model in eval mode on ``device``.

    Raises:
        WeightsError: a missing, corrupt or pickled weights file, a missing or invalid card, or
            tensors that do not match the card; the message names the file.
    """
    path = Path(path) if path else bundled_flow_weights_path()
    state, card, cpath = read_with_card(path, what='flow weights',
                                        card_what='flow weights card')
    if not isinstance(card, dict) or card.get('format') != FLOW_CARD_FORMAT:
        raise WeightsError(f'{cpath} is not a flow weights card (format should be '
                           f'{FLOW_CARD_FORMAT!r})')
    if card.get('architecture') != ARCHITECTURE or not isinstance(card.get('model_kwargs'), dict):
        raise WeightsError(f'flow weights card {cpath}: architecture should be '
                           f'{ARCHITECTURE!r} with a model_kwargs object, got '
                           f'{card.get("architecture")!r}')
    try:
        model = FlowLiteNet(**card['model_kwargs'])
    except (TypeError, ValueError) as exc:
        raise WeightsError(f'flow weights card {cpath} does not describe a network: {exc}'
                           ) from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f'{path} does not match its card {cpath}: {exc}') from exc
    return model.to(torch.device(device)).eval(), card


class LearnedFlow(FlowEstimator):
    """The learned flow network as a flow estimator (CPU or CUDA).

    Args:
        weights: a ``.safetensors`` file with its card beside it; None = the bundled weights.
        device: where the network runs and the flow is returned.
        model: an already built network (tests, training); skips loading weights.
    """

    name = 'learned'

    def __init__(self, weights: Optional[PathLike] = None, *,
                 device: Union[str, torch.device] = 'cpu',
                 model: Optional[FlowLiteNet] = None) -> None:
        super().__init__(device)
        self.card: dict[str, Any] = {}
        if model is None:
            model, self.card = load_flow_model(weights, device=self.device)
        self.model = model.to(self.device).eval()
        self.weights = str(weights) if weights else str(bundled_flow_weights_path())

    def _tensor(self, rgb: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(rgb)).to(self.device, non_blocking=True)
        return t.permute(2, 0, 1).unsqueeze(0)

    @torch.inference_mode()
    def estimate(self, prev_rgb: np.ndarray, cur_rgb: np.ndarray) -> torch.Tensor:
        return self.model(self._tensor(prev_rgb), self._tensor(cur_rgb))[0]

    @torch.inference_mode()
    def estimate_batch(self, prev: torch.Tensor, cur: torch.Tensor) -> torch.Tensor:
        """Flow of a batch of pairs already on the device.

        Args:
            prev: (N, 3, H, W) previous frames, uint8 or float RGB in [0, 255].
            cur: (N, 3, H, W) current frames, same shape.

        Returns:
            (N, 2, H, W) float32 flow from each current frame to its previous one, in pixels.
        """
        return self.model(prev.to(self.device), cur.to(self.device))
