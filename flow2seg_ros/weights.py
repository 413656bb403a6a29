"""Model weights as safetensors plus a JSON model card beside them; never pickle.

``save_model(model, "m.safetensors", card)`` writes ``m.safetensors`` (the ``state_dict``) and
``m.json`` (the card). ``load_model("m.safetensors")`` rebuilds the model from the card's
``preset``, ``model_kwargs`` and ``classes`` and loads the tensors. PyTorch pickle checkpoints
(what ``torch.save`` writes) are refused: unpickling a file can run arbitrary code.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import torch
from torch import nn

from flow2seg_ros.classes import ClassSet
from flow2seg_ros.devices import resolve_device
from flow2seg_ros.flow.mixed import parse_mix
from flow2seg_ros.models import build_model
from flow2seg_ros.tensorfile import (
    card_path, read_safetensors, read_with_card, WeightsError, write_with_card)

__all__ = [
    'CARD_FORMAT',
    'IMAGENET_MEAN',
    'IMAGENET_STD',
    'WeightsError',
    'BUNDLED_MODELS',
    'bundled_model_path',
    'card_flow',
    'card_path',
    'load_model',
    'make_card',
    'random_model',
    'read_safetensors',
    'resolve_model_path',
    'save_model',
]

#: Value of the model card's ``format`` key.
CARD_FORMAT = 'flow2seg-model-card/1'

#: torchvision's ImageNet normalisation, the default of every model this project trains.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_REQUIRED_CARD_KEYS = ('format', 'preset', 'model_kwargs', 'classes')

PathLike = Union[str, os.PathLike]


#: The models in ``flow2seg_ros/bundled/`` by name (the first is the default): the first model,
#: 10 of Cityscapes' classes on the v1 street scenes, and the second, all 19 on the v2 scenes
#: (README, "The bundled model" and "The second bundled model"). Each is a safetensors file with
#: its JSON card.
BUNDLED_MODELS = ('flow2seg_lite_synthetic', 'flow2seg_lite_synthetic_v2')


def bundled_model_path(name: str = BUNDLED_MODELS[0]) -> Path:
    """Path of a bundled model (``flow2seg_ros/bundled/<name>.safetensors``; default the
    default model)."""
    return Path(__file__).resolve().parent / 'bundled' / f'{name}.safetensors'


def resolve_model_path(spec: Optional[PathLike]) -> Path:
    """The model file a ``model_path`` / ``--weights`` value names.

    ``''`` or None is the bundled default; a bare name of :data:`BUNDLED_MODELS` is that bundled
    model; anything else (a ``/``, a ``.safetensors`` ending, an existing file) is a path.

    Raises:
        WeightsError: a bare name that is not a bundled model (the message lists them).
    """
    if spec is None or str(spec) == '':
        return bundled_model_path()
    text = str(spec)
    if text in BUNDLED_MODELS:
        return bundled_model_path(text)
    if '/' in text or os.sep in text or text.endswith('.safetensors') or Path(text).is_file():
        return Path(text).expanduser()
    raise WeightsError(f'{text!r} is neither a bundled model ({", ".join(BUNDLED_MODELS)}) '
                       'nor a path to a .safetensors file')


def _unwrap(model: nn.Module) -> nn.Module:
    # DistributedDataParallel / DataParallel keep the real model in .module
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel,
                                              nn.DataParallel)) else model


def make_card(model: nn.Module, classes: ClassSet, *, input_size: Sequence[int],
              mean: Sequence[float], std: Sequence[float], flow_method: str = 'dis',
              flow_preset: str = 'ultrafast', flow_scale: float = 1.0,
              training: Optional[dict[str, Any]] = None,
              metrics: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """A complete model card (DESIGN.md keys) for a Flow2Seg model.

    Args:
        model: the model (its ``preset`` and ``model_kwargs`` are recorded).
        classes: the class set it predicts.
        input_size: network input ``[H, W]``.
        mean: per-channel RGB mean of the input normalisation (images in [0, 1]).
        std: per-channel RGB std of the input normalisation.
        flow_method: optical flow method (``make_flow_estimator``'s ``method``).
        flow_preset: optical flow preset.
        flow_scale: the network sees ``flow_px * flow_scale / W``.
        training: how the model was trained (command, config, seed, steps, ...).
        metrics: held-out figures.
    """
    model = _unwrap(model)
    return {
        'format': CARD_FORMAT,
        'preset': model.preset,
        'model_kwargs': dict(model.model_kwargs),
        'classes': classes.to_dict(),
        'input_size': [int(v) for v in input_size],
        'normalization': {'mean': [float(v) for v in mean], 'std': [float(v) for v in std]},
        'flow': {'method': flow_method, 'preset': flow_preset, 'scale': float(flow_scale)},
        'training': dict(training or {}),
        'metrics': dict(metrics or {}),
    }


def random_model(preset: str = 'lite', *, classes: ClassSet, input_size: Sequence[int],
                 seed: int = 0, flow_method: str = 'dis', flow_preset: str = 'ultrafast',
                 flow_scale: float = 20.0,
                 **model_kwargs: Any) -> tuple[nn.Module, dict[str, Any]]:
    """A model with random weights and its complete card: for tests, benchmarks and timing.

    Args:
        preset: model preset (``lite`` or ``paper``).
        classes: the class set it predicts.
        input_size: network input ``[H, W]`` recorded in the card.
        seed: torch seed of the weights.
        flow_method: flow method recorded in the card.
        flow_preset: flow preset recorded in the card.
        flow_scale: flow scale recorded in the card.
        **model_kwargs: keyword arguments of the preset's factory (e.g. narrow widths).

    Returns:
        ``(model, card)``, the model in eval mode on the CPU.
    """
    torch.manual_seed(seed)
    model = build_model(preset, num_classes=classes.num_classes, **model_kwargs).eval()
    card = make_card(model, classes, input_size=input_size, mean=IMAGENET_MEAN,
                     std=IMAGENET_STD, flow_method=flow_method, flow_preset=flow_preset,
                     flow_scale=flow_scale, training={'note': f'random weights, seed {seed}'})
    return model, card


def _validate_card(card: Any, where: PathLike) -> ClassSet:
    if not isinstance(card, dict):
        raise WeightsError(f'model card {where} should be a JSON object, got '
                           f'{type(card).__name__}')
    missing = [k for k in _REQUIRED_CARD_KEYS if k not in card]
    if missing:
        raise WeightsError(f'model card {where} lacks {missing}; it needs '
                           f'{list(_REQUIRED_CARD_KEYS)}')
    if card['format'] != CARD_FORMAT:
        raise WeightsError(f'model card {where} has format {card["format"]!r}, expected '
                           f'{CARD_FORMAT!r}')
    if not isinstance(card['preset'], str):
        raise WeightsError(f'model card {where}: preset should be a string, got '
                           f'{card["preset"]!r}')
    if not isinstance(card['model_kwargs'], dict):
        raise WeightsError(f'model card {where}: model_kwargs should be an object, got '
                           f'{card["model_kwargs"]!r}')
    if 'num_classes' in card['model_kwargs']:
        raise WeightsError(f'model card {where}: model_kwargs must not hold num_classes '
                           '(it comes from classes)')
    try:
        classes = ClassSet.from_dict(card['classes'])
    except (ValueError, TypeError, AttributeError) as exc:
        raise WeightsError(f'model card {where}: invalid classes: {exc}') from exc
    size = card.get('input_size')
    if size is not None and (not isinstance(size, list) or len(size) != 2
                             or not all(isinstance(v, int) and v > 0 for v in size)):
        raise WeightsError(f'model card {where}: input_size should be [H, W] positive integers, '
                           f'got {size!r}')
    norm = card.get('normalization')
    if norm is not None and (not isinstance(norm, dict) or any(
            not isinstance(norm.get(k), list) or len(norm[k]) != 3 for k in ('mean', 'std'))):
        raise WeightsError(f'model card {where}: normalization should be {{"mean": [3 values], '
                           f'"std": [3 values]}}, got {norm!r}')
    flow = card.get('flow')
    if flow is not None and (not isinstance(flow, dict)
                             or not isinstance(flow.get('scale'), (int, float))):
        raise WeightsError(f'model card {where}: flow should be {{"method", "preset", '
                           f'"scale": number}}, got {flow!r}')
    return classes


def save_model(model: nn.Module, path: PathLike, card: dict[str, Any]) -> dict[str, Any]:
    """Write a model's ``state_dict`` as safetensors and its model card as JSON beside it.

    The card's ``format``, ``preset`` and ``model_kwargs`` are filled from the model when absent
    (and must match it when given); ``classes`` is required and must match the model's classes.

    Args:
        model: a :class:`~flow2seg_ros.models.Flow2Seg` (DDP/DataParallel wrappers are unwrapped).
        path: destination ``.safetensors`` file (the card goes to the same stem ``.json``).
        card: the model card (see DESIGN.md, or :func:`make_card`).

    Returns:
        The card as written.
    """
    path = Path(path)
    if path.suffix != '.safetensors':
        raise WeightsError(f'weights path should end with .safetensors, got {path}')
    model = _unwrap(model)
    card = dict(card)
    card.setdefault('format', CARD_FORMAT)
    for key in ('preset', 'model_kwargs'):
        actual = getattr(model, key, None)
        if actual is None:
            continue
        if key in card and card[key] != actual:
            raise WeightsError(f'card for {path}: {key} {card[key]!r} does not match the '
                               f"model's {actual!r}")
        card[key] = actual
    classes = _validate_card(card, card_path(path))
    num_classes = getattr(model, 'num_classes', None)
    if num_classes is not None and classes.num_classes != num_classes:
        raise WeightsError(f'card for {path}: {classes.num_classes} classes but the model '
                           f'predicts {num_classes}')
    write_with_card(path, model.state_dict(), card,
                    metadata={'format': CARD_FORMAT, 'preset': str(card['preset'])})
    return card


def load_model(path: Optional[PathLike] = None, *,
               device: Union[str, torch.device] = 'cpu') -> tuple[nn.Module, dict[str, Any]]:
    """Load a model and its card; ``path=None`` loads the bundled default.

    Args:
        path: a ``.safetensors`` file with its ``.json`` card beside it, the name of a bundled
            model (:data:`BUNDLED_MODELS`), or None for the bundled default.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.

    Returns:
        ``(model, card)``, the model in eval mode on ``device``.

    Raises:
        WeightsError: missing file, pickle or non-safetensors file, missing/invalid card, or a
            card that does not match the tensors. The message names the file.
    """
    bundled = not path or str(path) in BUNDLED_MODELS
    path = resolve_model_path(path)
    if bundled and not path.is_file():
        raise WeightsError(f'the bundled model is missing: {path}; train it with `flow2seg-train '
                           '--config config/train_synthetic.yaml` (the 19-class model: '
                           'train_synthetic_v2.yaml) or pass the path of a model')
    state, card, cpath = read_with_card(path)
    classes = _validate_card(card, cpath)
    try:
        model = build_model(card['preset'], num_classes=classes.num_classes,
                            **card['model_kwargs'])
    except (TypeError, ValueError) as exc:
        raise WeightsError(f'model card {cpath} does not describe a model: {exc}') from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f'{path} does not match its card {cpath}: {exc}') from exc
    return model.to(resolve_device(str(device))).eval(), card


def card_flow(card: dict[str, Any], device: torch.device) -> tuple[str, str]:
    """The flow method and preset a model card names for a device.

    A card's ``flow`` gives the method the model runs with; a model trained on several flows may
    name another for GPUs under ``flow.cuda`` (the bundled model: DIS fast on the CPU, the
    learned flow, which runs on the device, on CUDA).

    A card written by training on a mix (``method: mixed``, ``preset: "dis/fast+learned/..."``)
    names one flow per device from its parts, never the random mix itself: on CUDA the first
    learned part, elsewhere the first part that is not learned (the first part when none fits).
    """
    flow = card.get('flow', {})
    if device.type == 'cuda' and isinstance(flow.get('cuda'), dict):
        flow = flow['cuda']
    method, preset = str(flow.get('method', 'dis')), str(flow.get('preset', 'ultrafast'))
    if method != 'mixed':
        return method, preset
    parts = parse_mix(preset)
    fits = [p for p in parts if (p[0] == 'learned') == (device.type == 'cuda')]
    return (fits or parts)[0]
