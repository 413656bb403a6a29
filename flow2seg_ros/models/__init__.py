"""Flow2Seg models: image path (PSPNet), flow path (ResNet FCN on flow), residual fusion."""
from flow2seg_ros.models.backbones import (
    hub_backbone_weights_path, resnet_backbone, ResNetBackbone, slim_resnet_backbone)
from flow2seg_ros.models.flow2seg import (
    AUX_HEAD, build_model, Flow2Seg, flow2seg_lite, flow2seg_paper, HEADS, PRESETS)
from flow2seg_ros.models.heads import FCNHead, PPMHead, ResidualFusion

__all__ = [
    'AUX_HEAD',
    'FCNHead',
    'Flow2Seg',
    'HEADS',
    'PPMHead',
    'PRESETS',
    'ResNetBackbone',
    'ResidualFusion',
    'build_model',
    'flow2seg_lite',
    'flow2seg_paper',
    'hub_backbone_weights_path',
    'resnet_backbone',
    'slim_resnet_backbone',
]
