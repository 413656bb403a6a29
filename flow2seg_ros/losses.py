"""Flow2Seg's multi-task loss: ``L = L_image + L_fusion + alpha * L_flow + beta * L_aux``."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn
import torch.nn.functional as F

__all__ = ['Flow2SegLoss']


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

    Args:
        alpha: weight of the flow path's loss.
        beta: weight of the auxiliary (layer3) head's loss.
        ignore_index: target value of pixels that do not count.
    """

    def __init__(self, alpha: float = 0.5, beta: float = 0.4, ignore_index: int = 255) -> None:
        super().__init__()
        if alpha < 0 or beta < 0:
            raise ValueError(f'alpha and beta must be non-negative, got {alpha} and {beta}')
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.ignore_index = int(ignore_index)

    def _ce(self, logits: torch.Tensor, target: torch.Tensor, name: str) -> torch.Tensor:
        if logits.dim() != 4 or logits.shape[0] != target.shape[0] \
                or logits.shape[-2:] != target.shape[-2:]:
            raise ValueError(f'{name} logits {tuple(logits.shape)} should be (N, C, H, W) '
                             f'matching the target {tuple(target.shape)}')
        if not (target != self.ignore_index).any():
            # Every pixel ignored: cross-entropy's mean would be 0/0; contribute zero.
            return logits.sum() * 0.0
        return F.cross_entropy(logits, target, ignore_index=self.ignore_index)

    def forward(self, outputs: Mapping[str, torch.Tensor],
                target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Compute the loss.

        Args:
            outputs: the model's dict: ``fused`` (required), ``image``, ``flow``, ``aux``, each
                (N, C, H, W) logits.
            target: (N, H, W) integer train ids, ``ignore_index`` for pixels that do not count.

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
        weights = {'image': 1.0, 'fused': 1.0, 'flow': self.alpha, 'aux': self.beta}
        if outputs.get('image') is outputs['fused']:
            # No fusion happened: fused is the image logits (count them once).
            del weights['fused']
        total = None
        parts: dict[str, torch.Tensor] = {}
        for name, weight in weights.items():
            if name not in outputs:
                continue
            loss = self._ce(outputs[name], target, name)
            parts[name] = loss.detach()
            total = weight * loss if total is None else total + weight * loss
        return total, parts
