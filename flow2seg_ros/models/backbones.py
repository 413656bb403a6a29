"""ResNet trunks for the image and flow paths, with output stride 8/16/32 by dilation.

torchvision's ``replace_stride_with_dilation`` is refused for ``BasicBlock`` (ResNet18/34), so the
trunks here are built with torchvision's constructors (or, for width-reduced trunks, from
torchvision's own ``BasicBlock``/``Bottleneck``) and then *converted*: the stride-2 convolutions
of layer3/layer4 become stride 1 and their 3x3 convolutions get the matching dilation and padding.
The conversion follows torchvision's dilation schedule (the first block of a dilated layer keeps
the previous layer's dilation, the following blocks use the new one) and works for both block
types, so ResNet18 and ResNet101 share one code path.

ImageNet weights are never downloaded: ``backbone_weights`` names a local ``.safetensors`` file
holding a torchvision ResNet ``state_dict`` (or ``"imagenet"`` for
``<torch.hub.get_dir()>/checkpoints/<arch>.safetensors``).
"""
from __future__ import annotations

from collections import OrderedDict
import os
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import nn
import torchvision
from torchvision.models.resnet import BasicBlock, Bottleneck
from torchvision.ops import Conv2dNormActivation

from flow2seg_ros.tensorfile import read_safetensors, WeightsError

__all__ = [
    'RESNET_ARCHS',
    'ResNetBackbone',
    'dilate_resnet_',
    'hub_backbone_weights_path',
    'load_backbone_weights',
    'resnet_backbone',
    'slim_resnet_backbone',
]

#: torchvision ResNet architectures accepted as backbones.
RESNET_ARCHS = ('resnet18', 'resnet34', 'resnet50', 'resnet101')

_DILATION_BY_STRIDE = {32: (False, False), 16: (False, True), 8: (True, True)}


class ResNetBackbone(nn.Module):
    """A ResNet trunk without pooling/classifier that returns named feature maps.

    ``forward(x)`` returns an ``OrderedDict`` with ``"low"`` (layer2, stride 8), ``"aux"`` (layer3)
    and ``"out"`` (layer4), like torchvision's ``IntermediateLayerGetter`` output.

    Args:
        stem: the input convolution block (conv, BN, ReLU, max-pool), stride 4.
        layer1: ResNet stage 1.
        layer2: ResNet stage 2.
        layer3: ResNet stage 3.
        layer4: ResNet stage 4.
        output_stride: stride of ``"out"`` relative to the input (8, 16 or 32).
    """

    def __init__(self, stem: nn.Module, layer1: nn.Module, layer2: nn.Module, layer3: nn.Module,
                 layer4: nn.Module, *, output_stride: int) -> None:
        super().__init__()
        self.stem = stem
        self.layer1 = layer1
        self.layer2 = layer2
        self.layer3 = layer3
        self.layer4 = layer4
        self.output_stride = output_stride
        self.low_channels = _layer_out_channels(layer2)
        self.aux_channels = _layer_out_channels(layer3)
        self.out_channels = _layer_out_channels(layer4)

    def forward(self, x: torch.Tensor) -> 'OrderedDict[str, torch.Tensor]':
        x = self.stem(x)
        x = self.layer1(x)
        low = self.layer2(x)
        aux = self.layer3(low)
        out = self.layer4(aux)
        return OrderedDict([('low', low), ('aux', aux), ('out', out)])


def _layer_out_channels(layer: nn.Module) -> int:
    last = list(layer.children())[-1]
    if isinstance(last, Bottleneck):
        return last.bn3.num_features
    if isinstance(last, BasicBlock):
        return last.bn2.num_features
    raise TypeError(f'expected a ResNet layer of BasicBlock/Bottleneck, got {type(last).__name__}')


def dilate_resnet_(layers: Sequence[nn.Sequential], dilate: Sequence[bool]) -> None:
    """Turn the stride of ResNet layers into dilation, in place.

    For each layer with ``dilate[i]`` true, the first block's stride-2 3x3 convolution and its
    1x1 downsample become stride 1; the dilation doubles from the previous layer's. Following
    torchvision's schedule, the first block of a dilated layer keeps the previous dilation and the
    later blocks use the new one. Works for ``BasicBlock`` (ResNet18/34) and ``Bottleneck``.

    Args:
        layers: consecutive ResNet layers (e.g. layer2, layer3, layer4) of one trunk.
        dilate: for each layer, whether to replace its stride by dilation.
    """
    if len(layers) != len(dilate):
        raise ValueError(f'{len(layers)} layers but {len(dilate)} dilate flags')
    dilation = 1
    for layer, flag in zip(layers, dilate):
        if not flag:
            continue
        previous = dilation
        dilation *= 2
        for index, block in enumerate(layer):
            if isinstance(block, Bottleneck):
                conv3x3 = block.conv2
            elif isinstance(block, BasicBlock):
                conv3x3 = block.conv1
            else:
                raise TypeError(f'cannot dilate a {type(block).__name__}: expected '
                                'BasicBlock or Bottleneck')
            d = previous if index == 0 else dilation
            conv3x3.stride = (1, 1)
            conv3x3.dilation = (d, d)
            conv3x3.padding = (d, d)
            if isinstance(block, BasicBlock):
                # The second 3x3 convolution of a BasicBlock sees the new dilation.
                block.conv2.dilation = (dilation, dilation)
                block.conv2.padding = (dilation, dilation)
            block.stride = 1
            if block.downsample is not None:
                block.downsample[0].stride = (1, 1)


def _check_output_stride(output_stride: int) -> tuple[bool, bool]:
    if output_stride not in _DILATION_BY_STRIDE:
        raise ValueError(f'output_stride must be 8, 16 or 32, got {output_stride}')
    return _DILATION_BY_STRIDE[output_stride]


def hub_backbone_weights_path(arch: str) -> Path:
    """Where ``backbone_weights="imagenet"`` looks: ``<hub dir>/checkpoints/<arch>.safetensors``.

    Args:
        arch: torchvision ResNet name, e.g. ``"resnet101"``.
    """
    return Path(torch.hub.get_dir()) / 'checkpoints' / f'{arch}.safetensors'


def _conversion_hint(arch: str, path: Path) -> str:
    return (f'put a torchvision {arch} ImageNet state_dict saved with safetensors there, e.g. on '
            f'a machine with internet: python -c "import torchvision; from safetensors.torch '
            f"import save_file; save_file(torchvision.models.{arch}(weights='DEFAULT')"
            f".state_dict(), '{path}')\"")


def _backbone_weights_file(arch: str, weights: Union[str, os.PathLike]) -> Path:
    path = hub_backbone_weights_path(arch) if str(weights) == 'imagenet' else Path(weights)
    if not path.is_file():
        raise WeightsError(f'backbone weights for {arch} not found: {path}; '
                           + _conversion_hint(arch, path))
    if path.suffix != '.safetensors':
        raise WeightsError(f'backbone weights must be a .safetensors file, got {path}; '
                           + _conversion_hint(arch, path.with_suffix('.safetensors')))
    return path


def load_backbone_weights(backbone: ResNetBackbone, arch: str,
                          weights: Union[str, os.PathLike]) -> None:
    """Load torchvision ImageNet ResNet weights from a local safetensors file into a trunk.

    The file holds a torchvision ResNet ``state_dict`` (keys ``conv1.weight``, ``layer1.0...``,
    ``fc.*`` is ignored). Nothing is downloaded and nothing is unpickled.

    Args:
        backbone: the trunk to fill (its input convolution must take 3 channels).
        arch: the torchvision architecture the file is for (for messages and the hub path).
        weights: a ``.safetensors`` path, or ``"imagenet"`` for :func:`hub_backbone_weights_path`.

    Raises:
        WeightsError: the file is missing, not safetensors, or does not fit the trunk.
    """
    path = _backbone_weights_file(arch, weights)
    state = read_safetensors(path)
    mapped = {}
    for key, value in state.items():
        if key.startswith('fc.'):
            continue
        top = key.split('.', 1)[0]
        if top in ('conv1', 'bn1'):
            key = 'stem.' + key.replace('conv1', '0', 1).replace('bn1', '1', 1)
        mapped[key] = value
    try:
        missing, unexpected = backbone.load_state_dict(mapped, strict=False)
    except RuntimeError as exc:
        raise WeightsError(f'backbone weights {path} do not fit {arch}: {exc}') from exc
    if missing or unexpected:
        raise WeightsError(f'backbone weights {path} do not fit {arch}: missing keys '
                           f'{list(missing)[:5]}, unexpected keys {list(unexpected)[:5]}')


def resnet_backbone(arch: str, *, in_channels: int = 3, output_stride: int = 8,
                    weights: Optional[Union[str, os.PathLike]] = None) -> ResNetBackbone:
    """A torchvision ResNet trunk (``weights=None``), dilated to the requested output stride.

    Args:
        arch: one of ``resnet18``, ``resnet34``, ``resnet50``, ``resnet101``.
        in_channels: input channels; anything but 3 replaces the first convolution (e.g. 2 for
            optical flow), which then starts from random weights.
        output_stride: 8 (layer3 and layer4 dilated, as PSPNet), 16 (layer4 dilated) or 32.
        weights: optional ImageNet weights: a local ``.safetensors`` file or ``"imagenet"``
            (the torch hub cache, see :func:`hub_backbone_weights_path`). Never downloaded.
    """
    if arch not in RESNET_ARCHS:
        raise ValueError(f'unknown backbone {arch!r}; expected one of {RESNET_ARCHS}')
    dilate = _check_output_stride(output_stride)
    if weights is not None:
        _backbone_weights_file(arch, weights)  # fail before building a large network
    net = torchvision.models.get_model(arch, weights=None)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    dilate_resnet_([net.layer3, net.layer4], dilate)
    backbone = ResNetBackbone(stem, net.layer1, net.layer2, net.layer3, net.layer4,
                              output_stride=output_stride)
    if weights is not None:
        load_backbone_weights(backbone, arch, weights)
    if in_channels != 3:
        backbone.stem[0] = nn.Conv2d(in_channels, net.conv1.out_channels, kernel_size=7,
                                     stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(backbone.stem[0].weight, mode='fan_out', nonlinearity='relu')
    return backbone


def slim_resnet_backbone(*, widths: Sequence[int] = (16, 32, 64, 128),
                         blocks: Sequence[int] = (1, 1, 1, 1), in_channels: int = 3,
                         output_stride: int = 8, stem: str = 'resnet') -> ResNetBackbone:
    """A width-reduced ResNet trunk made of torchvision ``BasicBlock`` s (for real-time paths).

    Same layout as ResNet18 (a stride-4 stem, four stages with strides 1/2/2/2 before
    dilation) with the stage widths and block counts given.

    Args:
        widths: output channels of the four stages (the stem has ``widths[0]``).
        blocks: number of ``BasicBlock`` s per stage.
        in_channels: input channels (3 for RGB, 2 for optical flow).
        output_stride: 8, 16 or 32 (dilation replaces the stride of layer3/layer4).
        stem: ``"resnet"`` (ResNet's 7x7 stride-2 conv + 3x3 max-pool) or ``"conv"`` (two 3x3
            stride-2 conv+BN+ReLU; cheaper on CPUs, where the max-pool at half resolution costs
            as much as a convolution).
    """
    if len(widths) != 4 or len(blocks) != 4:
        raise ValueError(f'widths and blocks need 4 stages each, got {list(widths)} and '
                         f'{list(blocks)}')
    if min(widths) < 1 or min(blocks) < 1:
        raise ValueError(f'widths and blocks must be positive, got {list(widths)} and '
                         f'{list(blocks)}')
    dilate = _check_output_stride(output_stride)
    if stem == 'resnet':
        stem_module = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
        )
    elif stem == 'conv':
        stem_module = nn.Sequential(
            Conv2dNormActivation(in_channels, widths[0], kernel_size=3, stride=2),
            Conv2dNormActivation(widths[0], widths[0], kernel_size=3, stride=2),
        )
    else:
        raise ValueError(f'stem must be "resnet" or "conv", got {stem!r}')
    layers = []
    inplanes = widths[0]
    for index, (width, count) in enumerate(zip(widths, blocks)):
        stride = 1 if index == 0 else 2
        downsample = None
        if stride != 1 or inplanes != width:
            downsample = nn.Sequential(nn.Conv2d(inplanes, width, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(width))
        stage = [BasicBlock(inplanes, width, stride, downsample)]
        stage += [BasicBlock(width, width) for _ in range(count - 1)]
        layers.append(nn.Sequential(*stage))
        inplanes = width
    dilate_resnet_(layers[2:], dilate)
    backbone = ResNetBackbone(stem_module, *layers, output_stride=output_stride)
    for module in backbone.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
    return backbone
