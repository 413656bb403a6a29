"""Flow2Seg's multi-task loss (``L = L_image + L_fusion + alpha * L_flow + beta * L_aux``) and a
temporal-consistency term for steadier labels over time (ETC, Liu et al., ECCV 2020).

Flow convention (:mod:`flow2seg_ros.flow`): ``flow[:, :, y, x]`` is the offset (dx, dy) from pixel
(x, y) of frame t to where it was in frame t-1, so frame t-1 seen on frame t's grid is frame t-1
sampled at ``(x + dx, y + dy)`` (:func:`warp_to_current`).
"""
from __future__ import annotations

from typing import Mapping, Optional, Sequence

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ['Flow2SegLoss', 'TemporalConsistencyLoss', 'flow_consistency_mask', 'warp_to_current']


class Flow2SegLoss(nn.Module):
    """The paper's multi-task loss over the model's heads.

    ``L = CE(image) + CE(fused) + alpha * CE(flow) + beta * CE(aux)``, each a pixel-wise
    cross-entropy averaged over the pixels that are not ``ignore_index``. A head missing from the
    outputs contributes nothing: ``aux`` is absent in eval mode, ``flow`` without flow input or
    for the image-only model. Without a ``flow`` head the model did no fusion and ``fused`` *is*
    the image logits, so the fusion term is left out rather than counting the image loss twice:
    the image-only baseline then trains with PSPNet's own loss, ``CE(image) + beta * CE(aux)``,
    at the same scale as the image term of the full model.

    The paper does not publish alpha and beta. Defaults:

    - ``beta = 0.4``: PSPNet's weight of its layer3 auxiliary loss (Zhao et al., 2017), which the
      image path here copies.
    - ``alpha = 0.5``: the flow path is a weak auxiliary learner (39.6 vs 77.8 mIoU in the
      paper); its own loss keeps its logits discriminative, so the fusion receives a meaningful
      motion map, but at half weight it does not dominate the two full-weight terms that train
      the image path and the fusion.

    Optionally, pixels of independently moving objects count more in some heads' cross-entropy
    (``moving_weight``, ``moving_heads``; the generator's ``_moving.png`` masks): there a pixel
    weighs ``1 + moving_weight``, elsewhere 1, and the head's loss is the weighted mean,
    ``sum_x w(x) CE(x) / sum_x w(x)`` over the pixels that count. Motion is what the flow path
    sees and the image path does not, so weighting its loss there asks it to spend its capacity
    on what moves on its own rather than on the static scene, which the image path labels well.

    Args:
        alpha: weight of the flow path's loss.
        beta: weight of the auxiliary (layer3) head's loss.
        ignore_index: target value of pixels that do not count.
        moving_weight: extra weight of a moving pixel in ``moving_heads``; 0 = plain means.
        moving_heads: the heads weighted so (of ``image``, ``fused``, ``flow``, ``aux``).
    """

    HEADS = ('image', 'fused', 'flow', 'aux')

    def __init__(self, alpha: float = 0.5, beta: float = 0.4, ignore_index: int = 255, *,
                 moving_weight: float = 0.0, moving_heads: Sequence[str] = ('flow',)) -> None:
        super().__init__()
        if alpha < 0 or beta < 0:
            raise ValueError(f'alpha and beta must be non-negative, got {alpha} and {beta}')
        if moving_weight < 0:
            raise ValueError(f'moving_weight must be non-negative, got {moving_weight}')
        unknown = sorted(set(moving_heads) - set(self.HEADS))
        if unknown:
            raise ValueError(f'moving_heads {unknown} unknown; heads are {list(self.HEADS)}')
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.ignore_index = int(ignore_index)
        self.moving_weight = float(moving_weight)
        self.moving_heads = tuple(moving_heads)

    def _ce(self, logits: torch.Tensor, target: torch.Tensor, name: str,
            weight: Optional[torch.Tensor] = None) -> torch.Tensor:
        if logits.dim() != 4 or logits.shape[0] != target.shape[0] \
                or logits.shape[-2:] != target.shape[-2:]:
            raise ValueError(f'{name} logits {tuple(logits.shape)} should be (N, C, H, W) '
                             f'matching the target {tuple(target.shape)}')
        if not (target != self.ignore_index).any():
            # Every pixel ignored: cross-entropy's mean would be 0/0; contribute zero.
            return logits.sum() * 0.0
        if weight is None:
            return F.cross_entropy(logits, target, ignore_index=self.ignore_index)
        ce = F.cross_entropy(logits, target, ignore_index=self.ignore_index, reduction='none')
        weight = weight * (target != self.ignore_index).to(weight.dtype)
        return (ce * weight).sum() / weight.sum()

    def forward(self, outputs: Mapping[str, torch.Tensor], target: torch.Tensor,
                moving: Optional[torch.Tensor] = None
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Compute the loss.

        Args:
            outputs: the model's dict: ``fused`` (required), ``image``, ``flow``, ``aux``, each
                (N, C, H, W) logits.
            target: (N, H, W) integer train ids, ``ignore_index`` for pixels that do not count.
            moving: (N, H, W) bool, pixels of independently moving objects; needed when
                ``moving_weight > 0``.

        Returns:
            ``(total, parts)``: the scalar loss to back-propagate, and the unweighted loss of
            each head that contributed (``image``, ``fused``, ``flow``, ``aux``), detached.
        """
        if 'fused' not in outputs:
            raise ValueError(f'the model outputs need a "fused" head, got {sorted(outputs)}')
        if target.dim() != 3:
            raise ValueError(f'target should be (N, H, W), got {tuple(target.shape)}')
        if target.is_floating_point() or target.dtype == torch.bool:
            raise ValueError(f'target should hold integer class ids, got {target.dtype}')
        target = target.long()
        pixel_weight = None
        if self.moving_weight > 0:
            if moving is None or moving.shape != target.shape:
                got = None if moving is None else tuple(moving.shape)
                raise ValueError(f"moving_weight > 0 needs a moving mask of the target's shape "
                                 f'{tuple(target.shape)}, got {got}')
            pixel_weight = 1.0 + self.moving_weight * moving.float()
        weights = {'image': 1.0, 'fused': 1.0, 'flow': self.alpha, 'aux': self.beta}
        if outputs.get('image') is outputs['fused']:
            # No fusion happened: fused is the image logits (count them once).
            del weights['fused']
        total = None
        parts: dict[str, torch.Tensor] = {}
        for name, weight in weights.items():
            if name not in outputs:
                continue
            loss = self._ce(outputs[name], target, name,
                            pixel_weight if name in self.moving_heads else None)
            parts[name] = loss.detach()
            total = weight * loss if total is None else total + weight * loss
        return total, parts


def warp_to_current(prev: torch.Tensor, flow: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Frame t-1's values on frame t's grid: ``prev`` sampled (bilinear) at ``x + flow(x)``.

    Args:
        prev: (N, C, H, W) values of frame t-1 (probabilities, images, flow).
        flow: (N, 2, H, W) flow in pixels from frame t to frame t-1 (dx, dy).

    Returns:
        ``(warped, inside)``: (N, C, H, W) warped values (0 outside frame t-1) and (N, H, W) bool,
        True where ``x + flow(x)`` lies within frame t-1.
    """
    if prev.dim() != 4 or flow.dim() != 4 or flow.shape[1] != 2 \
            or flow.shape[0] != prev.shape[0] or flow.shape[-2:] != prev.shape[-2:]:
        raise ValueError(f'prev {tuple(prev.shape)} should be (N, C, H, W) and flow '
                         f'{tuple(flow.shape)} (N, 2, H, W) of the same N, H, W')
    n, _, h, w = prev.shape
    if h < 2 or w < 2:
        raise ValueError(f'frames must be at least 2x2 to warp, got {w}x{h}')
    ys = torch.arange(h, device=flow.device, dtype=flow.dtype).view(1, h, 1)
    xs = torch.arange(w, device=flow.device, dtype=flow.dtype).view(1, 1, w)
    px = xs + flow[:, 0]
    py = ys + flow[:, 1]
    inside = (px >= 0) & (px <= w - 1) & (py >= 0) & (py <= h - 1)
    grid = torch.stack([px * (2.0 / (w - 1)) - 1.0, py * (2.0 / (h - 1)) - 1.0], dim=-1)
    warped = F.grid_sample(prev, grid.to(prev.dtype), mode='bilinear', padding_mode='zeros',
                           align_corners=True)
    return warped, inside


def flow_consistency_mask(forward: torch.Tensor, backward: torch.Tensor, *,
                          rel: float = 0.01, abs_px: float = 0.5) -> torch.Tensor:
    """Pixels of frame t whose flow is reliable: the forward-backward check (Sundaram et al.,
    ECCV 2010), the usual occlusion test for an estimator's flow.

    A pixel passes where going to frame t-1 and back lands where it started,
    ``|f + b'|^2 < rel * (|f|^2 + |b'|^2) + abs_px``, ``b'`` being the backward flow at
    ``x + f(x)``, and ``x + f(x)`` lies within frame t-1. Occluded pixels (and those the
    estimator got wrong) fail.

    Args:
        forward: (N, 2, H, W) flow from frame t to frame t-1 in pixels.
        backward: (N, 2, H, W) flow from frame t-1 to frame t in pixels.
        rel: tolerance relative to the squared flow magnitudes.
        abs_px: absolute tolerance in squared pixels.

    Returns:
        (N, H, W) bool.
    """
    if forward.shape != backward.shape:
        raise ValueError(f'forward {tuple(forward.shape)} and backward {tuple(backward.shape)} '
                         'flow differ in shape')
    back, inside = warp_to_current(backward, forward)
    err = (forward + back).pow(2).sum(1)
    bound = rel * (forward.pow(2).sum(1) + back.pow(2).sum(1)) + abs_px
    return inside & (err < bound)


class TemporalConsistencyLoss(nn.Module):
    """ETC's temporal-consistency term (Liu et al., "Efficient Semantic Video Segmentation with
    Per-frame Inference", ECCV 2020): the class probabilities of frame t against those of frame
    t-1 warped onto frame t by the flow, on the pixels where the flow is reliable.

    ``L_tc = sum_x m(x) * || p_t(x) - p_{t-1}(x + flow(x)) ||^2 / sum_x m(x)``, ``p`` the softmax
    over classes, ``m`` the given mask (ground-truth validity, or the estimator's
    :func:`flow_consistency_mask`) and-ed with "``x + flow(x)`` inside frame t-1". Zero when no
    pixel counts. With ``detach_prev`` (default) frame t-1's prediction is a fixed target, so
    training needs it without gradient (a forward pass under ``torch.no_grad``).

    Args:
        detach_prev: stop the gradient through frame t-1's probabilities.
    """

    def __init__(self, detach_prev: bool = True) -> None:
        super().__init__()
        self.detach_prev = bool(detach_prev)

    def forward(self, logits: torch.Tensor, prev_logits: torch.Tensor, flow: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        """Compute the term.

        Args:
            logits: (N, C, H, W) logits of frame t.
            prev_logits: (N, C, H, W) logits of frame t-1.
            flow: (N, 2, H, W) flow from frame t to frame t-1 in pixels.
            mask: (N, H, W) bool, pixels of frame t whose flow is reliable.

        Returns:
            The scalar loss.
        """
        if logits.shape != prev_logits.shape:
            raise ValueError(f'logits {tuple(logits.shape)} and prev_logits '
                             f'{tuple(prev_logits.shape)} differ in shape')
        if mask.shape != (logits.shape[0],) + tuple(logits.shape[-2:]):
            raise ValueError(f'mask {tuple(mask.shape)} should be (N, H, W) of the logits '
                             f'{tuple(logits.shape)}')
        dtype = torch.promote_types(logits.dtype, torch.float32)     # fp16 under autocast
        p = torch.softmax(logits.to(dtype), dim=1)
        q = torch.softmax(prev_logits.to(dtype), dim=1)
        if self.detach_prev:
            q = q.detach()
        q_on_t, inside = warp_to_current(q, flow.to(dtype))
        m = (mask.bool() & inside).to(p.dtype)
        count = m.sum()
        if count == 0:
            return logits.sum() * 0.0
        return ((p - q_on_t).pow(2).sum(1) * m).sum() / count
