"""The model a training config builds, its optimizer, LR schedule and loss.

``freeze_image_path`` trains only the flow path and the fusion: the image path's parameters get
no gradient and its BatchNorm statistics stay frozen (:func:`set_train_mode`).
"""
from __future__ import annotations

from typing import Callable

import torch

from flow2seg_ros.classes import ClassSet
from flow2seg_ros.losses import Flow2SegLoss
from flow2seg_ros.models import build_model
from flow2seg_ros.tensorfile import read_safetensors, WeightsError
from flow2seg_ros.training.config import TrainConfig

__all__ = ['build_model_from_config', 'flow_side_modules', 'image_path_parameters',
           'make_criterion', 'make_optimizer', 'make_scheduler', 'poly_lambda',
           'set_train_mode', 'unwrap']


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DDP wrapper (the model itself otherwise)."""
    return model.module if hasattr(model, 'module') else model


def build_model_from_config(cfg: TrainConfig, classes: ClassSet) -> torch.nn.Module:
    """The model a config trains, with ``init_weights`` loaded and ``freeze_image_path`` applied.

    Args:
        cfg: the training config.
        classes: the class set (its size is the number of outputs).
    """
    kwargs = dict(cfg.model_kwargs)
    kwargs['use_flow'] = cfg.use_flow
    if cfg.backbone_weights:
        kwargs['backbone_weights'] = cfg.backbone_weights
    model = build_model(cfg.preset, num_classes=classes.num_classes, **kwargs)
    if cfg.init_weights:
        _load_init_weights(model, cfg.init_weights)
    if cfg.freeze_image_path:
        for p in image_path_parameters(model):
            p.requires_grad_(False)
    return model


def _load_init_weights(model: torch.nn.Module, path: str) -> None:
    """Copy every matching tensor of a saved model (an image-only model fills the image path)."""
    saved = read_safetensors(path)
    own = model.state_dict()
    mismatched = [k for k in saved if k in own and own[k].shape != saved[k].shape]
    if mismatched:
        raise WeightsError(f'init_weights {path}: tensors of another shape: {mismatched[:5]} '
                           '(another preset, width or class count?)')
    loaded = {k: v for k, v in saved.items() if k in own}
    if not loaded:
        raise WeightsError(f'init_weights {path}: no tensor matches this model')
    model.load_state_dict(loaded, strict=False)


def flow_side_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The flow path and the fusion of a Flow2Seg model (what ``freeze_image_path`` trains).

    Args:
        model: a :class:`flow2seg_ros.models.Flow2Seg` (a DDP wrapper is unwrapped).
    """
    model = unwrap(model)
    mods = [getattr(model, n, None) for n in ('flow_backbone', 'flow_head', 'fusion')]
    if not all(isinstance(m, torch.nn.Module) for m in mods):
        raise ValueError(f'{type(model).__name__} has no flow path and fusion to train '
                         '(an image-only model?)')
    return mods


def image_path_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """Every parameter outside the flow path and the fusion (the image path)."""
    side = {id(p) for m in flow_side_modules(model) for p in m.parameters()}
    return [p for p in model.parameters() if id(p) not in side]


def set_train_mode(model: torch.nn.Module, frozen_image_path: bool) -> None:
    """``model.train()``; with a frozen image path its BatchNorm statistics stay frozen too."""
    model.train()
    if frozen_image_path:
        side = {id(m) for s in flow_side_modules(model) for m in s.modules()}
        for m in model.modules():
            if id(m) not in side and isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.eval()


def make_optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    """SGD (momentum) or AdamW over the trainable parameters; no weight decay on norms and biases.

    Args:
        cfg: the training config.
        model: the model.
    """
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{'params': decay, 'weight_decay': cfg.weight_decay},
              {'params': no_decay, 'weight_decay': 0.0}]
    if cfg.optimizer == 'sgd':
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)
    return torch.optim.AdamW(groups, lr=cfg.lr)


def poly_lambda(steps: int, power: float, warmup_steps: int,
                warmup_factor: float) -> Callable[[int], float]:
    """LR factor at a step: linear warm-up from ``warmup_factor``, then poly decay to 0.

    Args:
        steps: the total number of steps.
        power: poly exponent (0.9 as in PSPNet).
        warmup_steps: steps of linear warm-up.
        warmup_factor: factor at step 0.
    """
    def factor(step: int) -> float:
        if step < warmup_steps:
            a = step / warmup_steps
            return warmup_factor * (1 - a) + a
        t = (step - warmup_steps) / max(1, steps - warmup_steps)
        return max(0.0, 1.0 - t) ** power
    return factor


def make_scheduler(cfg: TrainConfig,
                   optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LambdaLR:
    """The config's LR schedule (:func:`poly_lambda`), stepped once per optimisation step.

    Args:
        cfg: the training config.
        optimizer: the optimizer.
    """
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, poly_lambda(cfg.steps, cfg.lr_power, cfg.warmup_steps, cfg.warmup_factor))


def make_criterion(cfg: TrainConfig, classes: ClassSet) -> Flow2SegLoss:
    """Flow2SegLoss with the config's ``loss_alpha``/``loss_beta`` (None = its defaults) and
    ``loss_moving``/``loss_moving_heads``.

    Args:
        cfg: the training config.
        classes: the class set (ignore index).
    """
    kwargs = {k: v for k, v in (('alpha', cfg.loss_alpha), ('beta', cfg.loss_beta))
              if v is not None}
    return Flow2SegLoss(ignore_index=classes.ignore_index, moving_weight=cfg.loss_moving,
                        moving_heads=tuple(cfg.loss_moving_heads), **kwargs)
