"""Segmentation heads: PSPNet's pyramid pooling head, an FCN head and the residual fusion."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import nn
import torch.nn.functional as F
from torchvision.ops import Conv2dNormActivation

__all__ = ['FCNHead', 'PPMHead', 'ResidualFusion']


class PPMHead(nn.Module):
    """PSPNet's pyramid pooling module followed by a classifier.

    The feature map is average-pooled to each bin size, reduced by a 1x1 conv+BN+ReLU, upsampled
    back (bilinear) and concatenated with the input; a 3x3 conv+BN+ReLU, dropout and a 1x1
    convolution give the class logits at the feature map's stride. As in PSPNet, the bin-1
    branch's batch norm sees one value per channel and image, so training needs batches of 2+.

    Args:
        in_channels: channels of the input feature map.
        num_classes: number of output classes C.
        bins: pooled grid sizes (PSPNet: 1, 2, 3, 6).
        reduction_channels: channels of each pooled branch; default ``in_channels // len(bins)``.
        channels: channels of the 3x3 bottleneck convolution (PSPNet: 512).
        dropout: dropout before the classifier (PSPNet: 0.1).
    """

    def __init__(self, in_channels: int, num_classes: int, *,
                 bins: Sequence[int] = (1, 2, 3, 6), reduction_channels: Optional[int] = None,
                 channels: int = 512, dropout: float = 0.1) -> None:
        super().__init__()
        if not bins or min(bins) < 1:
            raise ValueError(f'bins must be positive sizes, got {list(bins)}')
        reduction = reduction_channels or max(1, in_channels // len(bins))
        self.bins = tuple(int(b) for b in bins)
        self.branches = nn.ModuleList(
            nn.Sequential(nn.AdaptiveAvgPool2d(b),
                          Conv2dNormActivation(in_channels, reduction, kernel_size=1))
            for b in self.bins)
        self.bottleneck = Conv2dNormActivation(in_channels + reduction * len(self.bins), channels,
                                               kernel_size=3)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        pooled = [F.interpolate(branch(x), size=size, mode='bilinear', align_corners=False)
                  for branch in self.branches]
        x = self.bottleneck(torch.cat([x] + pooled, dim=1))
        return self.classifier(self.dropout(x))


class FCNHead(nn.Sequential):
    """FCN head (torchvision's layout): 3x3 conv+BN+ReLU, dropout, 1x1 conv to the classes.

    Args:
        in_channels: channels of the input feature map.
        num_classes: number of output classes C.
        channels: hidden channels; default ``in_channels // 4`` as torchvision's FCNHead.
        dropout: dropout before the classifier.
    """

    def __init__(self, in_channels: int, num_classes: int, *, channels: Optional[int] = None,
                 dropout: float = 0.1) -> None:
        hidden = channels or max(1, in_channels // 4)
        super().__init__(
            Conv2dNormActivation(in_channels, hidden, kernel_size=3),
            nn.Dropout(dropout),
            nn.Conv2d(hidden, num_classes, kernel_size=1),
        )


class ResidualFusion(nn.Module):
    """Flow2Seg's residual fusion: ``residual = conv1x1(block(block(cat(image, flow))))``.

    The image and flow logits (C channels each) are concatenated (2C), passed through two
    3x3 conv+BN+ReLU blocks and a 1x1 convolution to C channels. The model adds the result to the
    image logits. The last convolution starts at zero, so a fresh fusion leaves the image path's
    prediction unchanged and learns only what the (much weaker) flow path adds; the paper notes
    that plain adding or concatenating the two maps does not help for that reason.

    Args:
        num_classes: number of classes C.
        channels: channels of the two hidden blocks.
    """

    def __init__(self, num_classes: int, *, channels: int = 64) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            Conv2dNormActivation(2 * num_classes, channels, kernel_size=3),
            Conv2dNormActivation(channels, channels, kernel_size=3),
        )
        self.out = nn.Conv2d(channels, num_classes, kernel_size=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, image_logits: torch.Tensor, flow_logits: torch.Tensor) -> torch.Tensor:
        """The residual to add to ``image_logits``.

        Args:
            image_logits: (N, C, h, w) image-path logits at their native stride.
            flow_logits: (N, C, h', w') flow-path logits; resized (bilinear) to (h, w) if needed.

        Returns:
            (N, C, h, w) residual.
        """
        if image_logits.shape[:2] != flow_logits.shape[:2]:
            raise ValueError(f'image and flow logits need the same batch and class count, got '
                             f'{tuple(image_logits.shape)} and {tuple(flow_logits.shape)}')
        if flow_logits.shape[-2:] != image_logits.shape[-2:]:
            flow_logits = F.interpolate(flow_logits, size=image_logits.shape[-2:],
                                        mode='bilinear', align_corners=False)
        return self.out(self.blocks(torch.cat([image_logits, flow_logits], dim=1)))
