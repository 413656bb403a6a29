"""Segmenters a user would pick instead, timed beside the pipeline by ``flow2seg-bench --peers``.

torchvision's LRASPP-MobileNetV3-Large and DeepLabV3-MobileNetV3-Large as a user runs them:
eager PyTorch, 19 classes, random weights (``weights=None, weights_backbone=None``: the timing
does not depend on the values and nothing downloads), the network alone (no flow, no pre- or
post-processing), on the same (1, 3, H, W) input size as the pipeline.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn
from torchvision.models.segmentation import (deeplabv3_mobilenet_v3_large,
                                             lraspp_mobilenet_v3_large)

__all__ = ['PEERS', 'build_peers', 'time_peers']

#: Peer name -> torchvision factory.
PEERS: dict[str, Callable[..., nn.Module]] = {
    'lraspp_mobilenet_v3_large': lraspp_mobilenet_v3_large,
    'deeplabv3_mobilenet_v3_large': deeplabv3_mobilenet_v3_large,
}


def build_peers(num_classes: int = 19, device: torch.device = torch.device('cpu'),
                seed: int = 0) -> dict[str, nn.Module]:
    """Every peer with random weights, in eval mode on ``device``.

    Args:
        num_classes: output classes.
        device: torch device.
        seed: torch seed of the random weights.
    """
    torch.manual_seed(seed)
    return {name: factory(weights=None, weights_backbone=None, num_classes=num_classes)
            .eval().to(device) for name, factory in PEERS.items()}


def time_peers(peers: dict[str, nn.Module], x: torch.Tensor,
               clock: Callable[[], float]) -> dict[str, float]:
    """One forward pass of each peer on ``x``, in ms.

    Args:
        peers: what :func:`build_peers` returned.
        x: (N, 3, H, W) normalised image.
        clock: returns seconds (synchronising CUDA).
    """
    times = {}
    with torch.inference_mode():
        for name, net in peers.items():
            t0 = clock()
            net(x)
            times[name] = 1e3 * (clock() - t0)
    return times
