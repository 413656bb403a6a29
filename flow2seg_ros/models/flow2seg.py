"""The Flow2Seg model: Image2Seg (PSPNet) + Flow2Seg (flow FCN) + residual fusion.

``Flow2Seg.forward(image, flow=None)`` returns a dict of named logits at the input size:
``"fused"``, ``"image"``, ``"flow"`` (only with flow and a flow path) and ``"aux"`` (training
only). Fusion runs at the image logits' native stride; every head is upsampled once (bilinear).
"""
from __future__ import annotations

from collections import OrderedDict
import os
from typing import Any, Callable, Optional, Sequence, Union

import torch
from torch import nn
import torch.nn.functional as F

from flow2seg_ros.models.backbones import resnet_backbone, slim_resnet_backbone
from flow2seg_ros.models.heads import FCNHead, PPMHead, ResidualFusion

__all__ = ['AUX_HEAD', 'HEADS', 'PRESETS', 'Flow2Seg', 'build_model', 'flow2seg_lite',
           'flow2seg_paper']

#: The heads a trained model is read and scored by: the fused output, the image path alone and
#: the flow path alone. The pipeline, the metrics and training all use this one tuple.
HEADS = ('fused', 'image', 'flow')

#: The auxiliary head on layer3, returned by ``Flow2Seg.forward`` in training only.
AUX_HEAD = 'aux'

#: The smallest input height/width accepted (one cell at output stride 32).
MIN_INPUT_SIZE = 32


class Flow2Seg(nn.Module):
    """Motion-aided segmentation: image path, optional flow path, residual fusion.

    Submodules are injected, so tests can build tiny models; the factories
    :func:`flow2seg_paper` and :func:`flow2seg_lite` build the real ones.

    Args:
        image_backbone: image trunk returning a dict with ``"out"`` and ``"aux"`` features.
        image_head: maps ``"out"`` features to (N, C, h, w) logits.
        num_classes: number of classes C.
        aux_head: optional head on the ``"aux"`` features, evaluated only in training.
        skip_head: optional 1x1 classifier on the stride-8 ``"low"`` features whose logits are
            added to the (2x upsampled) image head's logits, FCN-8s style, so an image path at
            output stride 16 still gives stride-8 logits.
        flow_backbone: optional flow trunk (2-channel input) returning a dict with ``"out"``.
        flow_head: maps the flow trunk's ``"out"`` to (N, C, h', w') logits.
        fusion: :class:`ResidualFusion` (image logits, flow logits) -> residual.
        flow_input_stride: the flow path reads the flow average-pooled by this factor (1 = at
            the input size): flow is smooth, and at 2 the flow trunk costs about a quarter.
        preset: name of the preset that built the model (recorded in model cards).
        model_kwargs: keyword arguments that rebuild the model with
            ``build_model(preset, num_classes=..., **model_kwargs)``.
    """

    def __init__(self, image_backbone: nn.Module, image_head: nn.Module, *, num_classes: int,
                 aux_head: Optional[nn.Module] = None, skip_head: Optional[nn.Module] = None,
                 flow_backbone: Optional[nn.Module] = None,
                 flow_head: Optional[nn.Module] = None, fusion: Optional[nn.Module] = None,
                 flow_input_stride: int = 1, preset: str = 'custom',
                 model_kwargs: Optional[dict[str, Any]] = None) -> None:
        super().__init__()
        flow_parts = (flow_backbone, flow_head, fusion)
        if any(p is None for p in flow_parts) and any(p is not None for p in flow_parts):
            raise ValueError('flow_backbone, flow_head and fusion must be given together '
                             '(or none of them, for the image-only model)')
        if num_classes < 1:
            raise ValueError(f'num_classes must be positive, got {num_classes}')
        if flow_input_stride not in (1, 2, 4):
            raise ValueError(f'flow_input_stride must be 1, 2 or 4, got {flow_input_stride}')
        self.image_backbone = image_backbone
        self.image_head = image_head
        self.aux_head = aux_head
        self.skip_head = skip_head
        self.flow_backbone = flow_backbone
        self.flow_head = flow_head
        self.fusion = fusion
        self.flow_input_stride = flow_input_stride
        self.num_classes = num_classes
        self.preset = preset
        self.model_kwargs = dict(model_kwargs or {})

    @property
    def has_flow(self) -> bool:
        """Whether the model has a flow path and fusion (False for the image-only baseline)."""
        return self.fusion is not None

    def _check_inputs(self, image: torch.Tensor, flow: Optional[torch.Tensor]) -> None:
        if not isinstance(image, torch.Tensor) or image.dim() != 4 or image.shape[1] != 3:
            shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image)
            raise ValueError(f'image should be a (N, 3, H, W) tensor, got {shape}')
        if not image.is_floating_point():
            raise ValueError(f'image should be a normalised float tensor, got {image.dtype}')
        h, w = image.shape[-2:]
        if h < MIN_INPUT_SIZE or w < MIN_INPUT_SIZE:
            raise ValueError(f'input H and W should be at least {MIN_INPUT_SIZE}, '
                             f'got {h} and {w}')
        if flow is None:
            return
        if not isinstance(flow, torch.Tensor) or flow.dim() != 4 or flow.shape[1] != 2:
            shape = tuple(flow.shape) if isinstance(flow, torch.Tensor) else type(flow)
            raise ValueError(f'flow should be a (N, 2, H, W) tensor, got {shape}')
        if flow.shape[0] != image.shape[0] or flow.shape[-2:] != image.shape[-2:]:
            raise ValueError(f'flow {tuple(flow.shape)} should match the image '
                             f'{tuple(image.shape)} in N, H and W')
        if not flow.is_floating_point():
            raise ValueError(f'flow should be a float tensor, got {flow.dtype}')

    def forward(self, image: torch.Tensor, flow: Optional[torch.Tensor] = None, *,
                heads: Optional[Sequence[str]] = None) -> 'OrderedDict[str, torch.Tensor]':
        """Segment one batch.

        Args:
            image: (N, 3, H, W) image normalised with the model card's mean/std.
            flow: (N, 2, H, W) optical flow already scaled (``flow_px * scale / W``), or None.
            heads: heads to upsample and return (default all); ``"fused"`` is always returned.
                Asking for fewer saves the upsampling of the others at inference.

        Returns:
            OrderedDict of (N, C, H, W) logits: ``"fused"``, ``"image"``, ``"flow"`` (only when
            flow was given and the model has a flow path) and ``"aux"`` (training only). Without
            flow, ``"fused"`` is the image logits.
        """
        self._check_inputs(image, flow)
        known = HEADS + (AUX_HEAD,)
        if heads is not None:
            unknown = set(heads) - set(known)
            if unknown:
                raise ValueError(f'unknown heads {sorted(unknown)}; expected some of {known}')
        wanted = set(known if heads is None else heads) | {'fused'}
        size = image.shape[-2:]

        image_logits, features = self.image_logits(image)
        fused_logits = image_logits
        flow_logits = None
        if flow is not None and self.has_flow:
            flow_logits = self.flow_logits(flow)
            fused_logits = self.fuse(image_logits, flow_logits)

        # result: {"fused", "image", "flow", "aux"} logits at the input size
        result: 'OrderedDict[str, torch.Tensor]' = OrderedDict()
        result['fused'] = _upsample(fused_logits, size)
        if 'image' in wanted:
            result['image'] = (result['fused'] if fused_logits is image_logits
                               else _upsample(image_logits, size))
        if flow_logits is not None and 'flow' in wanted:
            result['flow'] = _upsample(flow_logits, size)
        if self.training and self.aux_head is not None and AUX_HEAD in wanted:
            result[AUX_HEAD] = _upsample(self.aux_head(features['aux']), size)
        return result

    def image_logits(self, image: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The image path: (N, C, h, w) logits at its native stride, and the trunk's features.

        Args:
            image: (N, 3, H, W) normalised image.
        """
        features = self.image_backbone(image)
        logits = self.image_head(features['out'])
        if self.skip_head is not None:
            low = features['low']
            logits = _upsample(logits, low.shape[-2:]) + self.skip_head(low)
        return logits, features

    def flow_logits(self, flow: torch.Tensor) -> torch.Tensor:
        """The flow path: (N, C, h', w') logits at its native stride from scaled flow.

        Args:
            flow: (N, 2, H, W) flow already scaled (``flow_px * scale / W``).
        """
        if not self.has_flow:
            raise ValueError('this model has no flow path (an image-only model)')
        if self.flow_input_stride > 1:
            flow = F.avg_pool2d(flow, self.flow_input_stride)
        return self.flow_head(self.flow_backbone(flow)['out'])

    def fuse(self, image_logits: torch.Tensor, flow_logits: torch.Tensor) -> torch.Tensor:
        """Residual fusion: ``image_logits + fusion(image_logits, flow_logits)``, at the image
        logits' stride (the fusion upsamples the flow logits to it)."""
        return image_logits + self.fusion(image_logits, flow_logits)


def _upsample(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode='bilinear', align_corners=False)


def _listify(value: Any) -> Any:
    return [_listify(v) for v in value] if isinstance(value, (tuple, list)) else value


def flow2seg_paper(*, num_classes: int, use_flow: bool = True, image_backbone: str = 'resnet101',
                   output_stride: int = 8, ppm_bins: Sequence[int] = (1, 2, 3, 6),
                   ppm_channels: int = 512, aux: bool = True, flow_backbone: str = 'resnet18',
                   flow_output_stride: int = 8, fusion_channels: int = 64,
                   backbone_weights: Optional[Union[str, os.PathLike]] = None,
                   flow_backbone_weights: Optional[Union[str, os.PathLike]] = None) -> Flow2Seg:
    """Flow2Seg as published: PSPNet on a dilated ResNet101 (OS 8) + ResNet18 FCN on flow.

    Args:
        num_classes: number of classes C.
        use_flow: False builds the image-only PSPNet baseline (no flow path, no fusion).
        image_backbone: torchvision ResNet of the image path (``resnet18`` ... ``resnet101``).
        output_stride: image path output stride (8 as PSPNet; 16 is cheaper).
        ppm_bins: pyramid pooling bin sizes.
        ppm_channels: channels of the PSP bottleneck convolution.
        aux: whether to add the auxiliary FCN head on layer3 (training only).
        flow_backbone: torchvision ResNet of the flow path (the paper: ``resnet18``).
        flow_output_stride: flow path output stride (dilated like the image path by default).
        fusion_channels: channels of the two residual fusion blocks.
        backbone_weights: optional ImageNet weights of the image trunk: a local ``.safetensors``
            file or ``"imagenet"`` (``<torch hub dir>/checkpoints/<arch>.safetensors``). Not
            recorded in ``model_kwargs`` (the trained weights replace them).
        flow_backbone_weights: same for the flow trunk (its 2-channel input conv stays random).
    """
    model_kwargs = dict(use_flow=use_flow, image_backbone=image_backbone,
                        output_stride=output_stride, ppm_bins=_listify(ppm_bins),
                        ppm_channels=ppm_channels, aux=aux, flow_backbone=flow_backbone,
                        flow_output_stride=flow_output_stride, fusion_channels=fusion_channels)
    backbone = resnet_backbone(image_backbone, output_stride=output_stride,
                               weights=backbone_weights)
    head = PPMHead(backbone.out_channels, num_classes, bins=ppm_bins, channels=ppm_channels)
    aux_head = FCNHead(backbone.aux_channels, num_classes, channels=256) if aux else None
    flow_parts: dict[str, nn.Module] = {}
    if use_flow:
        flow_trunk = resnet_backbone(flow_backbone, in_channels=2,
                                     output_stride=flow_output_stride,
                                     weights=flow_backbone_weights)
        flow_parts = dict(flow_backbone=flow_trunk,
                          flow_head=FCNHead(flow_trunk.out_channels, num_classes),
                          fusion=ResidualFusion(num_classes, channels=fusion_channels))
    return Flow2Seg(backbone, head, num_classes=num_classes, aux_head=aux_head,
                    preset='paper', model_kwargs=model_kwargs, **flow_parts)


def flow2seg_lite(*, num_classes: int, use_flow: bool = True,
                  widths: Sequence[int] = (16, 32, 64, 128), blocks: Sequence[int] = (1, 1, 1, 1),
                  output_stride: int = 16, skip: bool = True, stem: str = 'conv',
                  ppm_bins: Sequence[int] = (1, 2, 3, 6), ppm_channels: int = 64, aux: bool = True,
                  flow_widths: Sequence[int] = (8, 16, 32, 64),
                  flow_blocks: Sequence[int] = (1, 1, 1, 1), flow_output_stride: int = 16,
                  flow_input_stride: int = 1, fusion_channels: int = 32) -> Flow2Seg:
    """A real-time Flow2Seg for CPUs: the paper's components at reduced width.

    Image path: a width-reduced ResNet (torchvision ``BasicBlock`` s, ~1/4 of ResNet18's widths)
    dilated to output stride 16, a small PSP pyramid pooling head and an FCN-8s-style skip (a
    1x1 classifier on layer2) that brings the logits to stride 8: on a 2-core CPU this is about
    1.5x faster than dilating to stride 8, and keeps stride-8 detail. Flow path: a narrower
    ResNet FCN at output stride 16 (flow is smooth; its logits are upsampled to the image
    logits' stride for the fusion). Fusion: the paper's residual fusion. About 0.6 M parameters
    for 19 classes (2.4 MB of float32 weights).

    Args:
        num_classes: number of classes C.
        use_flow: False builds the image-only baseline (no flow path, no fusion).
        widths: image trunk stage widths.
        blocks: image trunk ``BasicBlock`` s per stage.
        output_stride: image path output stride (8, 16 or 32).
        skip: add the stride-8 skip (1x1 classifier on layer2, FCN-8s style) so that the logits
            and the fusion are at stride 8 even when ``output_stride`` is 16.
        stem: trunk stem, ``"conv"`` (two 3x3 stride-2 convs) or ``"resnet"`` (7x7 + max-pool).
        ppm_bins: pyramid pooling bin sizes.
        ppm_channels: channels of the PSP bottleneck convolution.
        aux: whether to add the auxiliary FCN head on layer3 (training only).
        flow_widths: flow trunk stage widths.
        flow_blocks: flow trunk ``BasicBlock`` s per stage.
        flow_output_stride: flow path output stride, relative to the flow trunk's input.
        flow_input_stride: the flow trunk reads the flow average-pooled by this factor
            (:class:`Flow2Seg`); 2 with ``flow_output_stride`` 8 keeps the flow logits on the
            stride-16 grid at about half the flow path's cost.
        fusion_channels: channels of the two residual fusion blocks.
    """
    model_kwargs = dict(use_flow=use_flow, widths=_listify(widths), blocks=_listify(blocks),
                        output_stride=output_stride, skip=skip, stem=stem,
                        ppm_bins=_listify(ppm_bins), ppm_channels=ppm_channels, aux=aux,
                        flow_widths=_listify(flow_widths),
                        flow_blocks=_listify(flow_blocks), flow_output_stride=flow_output_stride,
                        flow_input_stride=flow_input_stride, fusion_channels=fusion_channels)
    backbone = slim_resnet_backbone(widths=widths, blocks=blocks, output_stride=output_stride,
                                    stem=stem)
    head = PPMHead(backbone.out_channels, num_classes, bins=ppm_bins, channels=ppm_channels)
    aux_head = FCNHead(backbone.aux_channels, num_classes) if aux else None
    skip_head = nn.Conv2d(backbone.low_channels, num_classes, kernel_size=1) if skip else None
    flow_parts: dict[str, nn.Module] = {}
    if use_flow:
        flow_trunk = slim_resnet_backbone(widths=flow_widths, blocks=flow_blocks, in_channels=2,
                                          output_stride=flow_output_stride, stem=stem)
        flow_parts = dict(flow_backbone=flow_trunk,
                          flow_head=FCNHead(flow_trunk.out_channels, num_classes),
                          fusion=ResidualFusion(num_classes, channels=fusion_channels))
    return Flow2Seg(backbone, head, num_classes=num_classes, aux_head=aux_head,
                    skip_head=skip_head, flow_input_stride=flow_input_stride, preset='lite',
                    model_kwargs=model_kwargs, **flow_parts)


#: Preset name -> factory.
PRESETS: dict[str, Callable[..., Flow2Seg]] = {
    'paper': flow2seg_paper,
    'lite': flow2seg_lite,
}


def build_model(preset: str, *, num_classes: int, **kwargs: Any) -> Flow2Seg:
    """Build a Flow2Seg model from a preset name.

    ``build_model(model.preset, num_classes=model.num_classes, **model.model_kwargs)`` rebuilds
    a model with the same architecture.

    Args:
        preset: ``"paper"`` or ``"lite"``.
        num_classes: number of classes C.
        **kwargs: keyword arguments of the preset's factory.
    """
    if preset not in PRESETS:
        raise ValueError(f'unknown model preset {preset!r}; expected one of {sorted(PRESETS)}')
    factory = PRESETS[preset]
    try:
        return factory(num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise TypeError(f'preset {preset!r}: {exc}') from exc
