"""The training config: a fixed schema (:class:`TrainConfig`) read from YAML, with
``--key value`` command-line overrides parsed as YAML and typed like the file's values.

Every problem raises :class:`ConfigError` naming the file (or ``command line``) and the key.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import yaml

from flow2seg_ros.classes import cityscapes_classes, ClassSet, load_class_set
from flow2seg_ros.losses import Flow2SegLoss
from flow2seg_ros.weights import IMAGENET_MEAN, IMAGENET_STD

__all__ = ['ConfigError', 'IMAGENET_MEAN', 'IMAGENET_STD', 'TrainConfig', 'geometric_free',
           'load_classes', 'load_config', 'parse_overrides', 'read_config_file']


class ConfigError(ValueError):
    """A training config that cannot be used; the message names the file and the key."""


@dataclass
class TrainConfig:
    """The fixed schema of a training config (YAML); every key is optional.

    Sizes are [H, W]. ``input_size`` is the network input size at inference (recorded in the
    model card); its width is also the W of the flow scaling ``flow_px * flow_scale / W``, also
    for training crops, so a given motion gives the network the same input as in the node.
    ``mean``/``std`` are in [0, 1] units (pixel / 255).
    """

    # data
    data_root: str = 'data/synthetic'
    train_split: str = 'train'
    val_split: str = 'val'  # '' = no held-out evaluation at the end
    max_val_samples: int = 0  # 0 = every annotated val frame
    classes: str = 'cityscapes'  # 'cityscapes' or a class list file (classes.load_class_set)
    # model
    preset: str = 'lite'
    model_kwargs: dict = field(default_factory=dict)
    use_flow: bool = True
    backbone_weights: str = ''  # local ImageNet .safetensors for the image backbone ('' = none)
    init_weights: str = ''  # start from a saved model (weights.save_model file), e.g. image-only
    freeze_image_path: bool = False  # train only the flow path and the fusion
    sync_bn: bool = False  # SyncBatchNorm under DDP on CUDA
    # input and augmentation
    input_size: list = field(default_factory=lambda: [256, 512])
    crop_size: list = field(default_factory=lambda: [256, 512])
    scale_range: list = field(default_factory=lambda: [1.0, 1.0])
    hflip: bool = False
    color_jitter: float = 0.0
    mean: list = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: list = field(default_factory=lambda: list(IMAGENET_STD))
    # flow (the same estimator and scale the node uses; recorded in the model card)
    flow_method: str = 'dis'
    flow_preset: str = 'ultrafast'
    flow_scale: float = 32.0
    flow_weights: str = ''  # RAFT weights (.safetensors); '' = torch hub cache
    flow_cache: str = ''  # folder for cached flow; only used without geometric augmentation
    # loss (None = Flow2SegLoss's documented defaults)
    loss_alpha: Optional[float] = None
    loss_beta: Optional[float] = None
    # weight of the temporal-consistency term (losses.TemporalConsistencyLoss) on the fused
    # head; > 0 also runs the model on each sample's previous frame; 0 = off
    loss_tc: float = 0.0
    # the term's flow: 'ground_truth' (the generator's flow files and their validity, needs
    # <data_root>/flow/) or 'estimator' (flow_method's flow, forward-backward checked)
    tc_flow: str = 'estimator'
    # extra cross-entropy weight of independently moving pixels (the generator's _moving.png
    # masks) in the heads loss_moving_heads names: 1 + loss_moving there, 1 elsewhere; 0 = off.
    # Needs loss_tc > 0 with tc_flow 'ground_truth' (the samples that read the generator's files)
    loss_moving: float = 0.0
    loss_moving_heads: list = field(default_factory=lambda: ['flow'])
    # optimisation
    optimizer: str = 'sgd'  # sgd | adamw
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    lr_power: float = 0.9  # poly schedule: lr * (1 - t / T) ** power after warm-up
    warmup_steps: int = 0
    warmup_factor: float = 0.1  # the LR at step 0 is lr * warmup_factor, rising linearly
    steps: int = 1000  # the training budget, in optimisation steps
    stop_at: int = 0  # end this run after this step with a checkpoint (time-sliced jobs); 0 = no
    batch_size: int = 8  # per process
    workers: int = 2  # DataLoader workers per process
    amp: bool = False  # mixed precision on CUDA
    # run
    seed: int = 0
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    device: str = 'auto'  # auto | cpu | cuda | cuda:N (under torchrun: cuda:LOCAL_RANK)
    output_dir: str = 'runs/train'
    checkpoint_every: int = 500  # steps; 0 = only at the end
    log_every: int = 10  # steps between loss/throughput updates of the progress bar
    progress: bool = True


def _type_ok(value: Any, default: Any, name: str) -> bool:
    hint = TrainConfig.__dataclass_fields__[name].type
    if value is None:
        return 'Optional' in str(hint)
    if isinstance(default, bool) or hint == 'bool':
        return isinstance(value, bool)
    if isinstance(default, float) or 'float' in str(hint):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, type(default))


def _apply(cfg: TrainConfig, updates: dict[str, Any], source: str) -> None:
    names = [f.name for f in dataclasses.fields(TrainConfig)]
    for key, value in updates.items():
        if key not in names:
            raise ConfigError(f'{source}: unknown key {key!r}; valid keys: {", ".join(names)}')
        default = getattr(TrainConfig(), key)
        hint = str(TrainConfig.__dataclass_fields__[key].type)
        if 'float' in hint and isinstance(value, str):
            try:  # PyYAML reads 1e-3 (no dot) as a string
                value = float(value)
            except ValueError:
                pass
        if not _type_ok(value, default, key):
            raise ConfigError(f'{source}: key {key!r} must be of type '
                              f'{TrainConfig.__dataclass_fields__[key].type}, got {value!r}')
        if isinstance(default, float) and value is not None:
            value = float(value)
        setattr(cfg, key, value)


def _validate(cfg: TrainConfig, source: str) -> None:
    def bad(key: str, why: str) -> ConfigError:
        return ConfigError(f'{source}: {key} {why}, got {getattr(cfg, key)!r}')

    for key in ('input_size', 'crop_size'):
        v = getattr(cfg, key)
        if len(v) != 2 or not all(isinstance(x, int) and x > 0 for x in v):
            raise bad(key, 'must be [H, W], two positive integers')
    if len(cfg.scale_range) != 2 or not 0 < cfg.scale_range[0] <= cfg.scale_range[1]:
        raise bad('scale_range', 'must be [min, max] with 0 < min <= max')
    for key in ('mean', 'std'):
        if len(getattr(cfg, key)) != 3:
            raise bad(key, 'must have three values (R, G, B)')
    if any(s <= 0 for s in cfg.std):
        raise bad('std', 'must be positive')
    if cfg.optimizer not in ('sgd', 'adamw'):
        raise bad('optimizer', "must be 'sgd' or 'adamw'")
    for key in ('steps', 'batch_size'):
        if getattr(cfg, key) < 1:
            raise bad(key, 'must be >= 1')
    for key in ('workers', 'threads', 'warmup_steps', 'checkpoint_every', 'max_val_samples',
                'stop_at'):
        if getattr(cfg, key) < 0:
            raise bad(key, 'must be >= 0')
    if cfg.warmup_steps >= cfg.steps:
        raise bad('warmup_steps', f'must be smaller than steps ({cfg.steps})')
    if cfg.lr <= 0:
        raise bad('lr', 'must be positive')
    if cfg.flow_scale <= 0:
        raise bad('flow_scale', 'must be positive')
    if cfg.loss_tc < 0:
        raise bad('loss_tc', 'must be >= 0')
    if cfg.tc_flow not in ('estimator', 'ground_truth'):
        raise bad('tc_flow', "must be 'estimator' or 'ground_truth'")
    if cfg.loss_moving < 0:
        raise bad('loss_moving', 'must be >= 0')
    heads = Flow2SegLoss.HEADS
    if not isinstance(cfg.loss_moving_heads, list) or not cfg.loss_moving_heads \
            or any(h not in heads for h in cfg.loss_moving_heads):
        raise bad('loss_moving_heads', f'must be a non-empty list of {list(heads)}')
    if cfg.loss_moving > 0 and (cfg.loss_tc <= 0 or cfg.tc_flow != 'ground_truth'):
        raise ConfigError(f"{source}: loss_moving > 0 reads the generator's moving-object masks, "
                          'which only the temporal samples do: it needs loss_tc > 0 and tc_flow: '
                          'ground_truth')
    if cfg.freeze_image_path and not cfg.use_flow:
        raise ConfigError(f'{source}: freeze_image_path needs use_flow: true (an image-only model '
                          'with a frozen image path has nothing to train)')
    if cfg.freeze_image_path and not cfg.init_weights:
        raise ConfigError(f'{source}: freeze_image_path needs init_weights (a trained image-only '
                          'or full model); a frozen random image path makes no sense')


def parse_overrides(tokens: Sequence[str]) -> dict[str, Any]:
    """Turn ``--key value`` / ``--key=value`` tokens into a dict (values parsed as YAML).

    Args:
        tokens: the command-line tokens argparse did not consume.
    """
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith('--') or len(tok) <= 2:
            raise ConfigError(f'command line: expected --key value, got {tok!r}')
        if '=' in tok:
            key, raw = tok[2:].split('=', 1)
            i += 1
        else:
            if i + 1 >= len(tokens):
                raise ConfigError(f'command line: {tok} needs a value')
            key, raw = tok[2:], tokens[i + 1]
            i += 2
        key = key.replace('-', '_')
        try:
            out[key] = yaml.safe_load(raw)
        except yaml.YAMLError as exc:
            raise ConfigError(f'command line: --{key}: cannot parse {raw!r}: {exc}') from exc
    return out


def read_config_file(path: Path, what: str) -> dict[str, Any]:
    """A YAML config file as a mapping (every training command's configs are read this way).

    Args:
        path: the file.
        what: what it is, for the message (``training config``, ``flow training config``).

    Raises:
        ConfigError: missing file, invalid YAML, or not a mapping; the message names the file.
    """
    if not path.is_file():
        raise ConfigError(f'{what} not found: {path}')
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f'{path}: not valid YAML: {exc}') from exc
    if not isinstance(doc, dict):
        raise ConfigError(f'{path}: expected a mapping of keys to values')
    return doc


def load_config(path: str | os.PathLike | None,
                overrides: Optional[dict[str, Any]] = None) -> TrainConfig:
    """Read a YAML training config and apply command-line overrides.

    Args:
        path: the YAML file (None = the defaults only).
        overrides: ``{key: value}`` applied after the file.

    Raises:
        ConfigError: naming the file and key for a missing file, invalid YAML, an unknown key,
            a wrongly typed or out-of-range value.
    """
    cfg = TrainConfig()
    source = 'defaults'
    if path is not None:
        path = Path(path)
        source = str(path)
        _apply(cfg, read_config_file(path, 'training config'), source)
    if overrides:
        _apply(cfg, overrides, 'command line')
        source = f'{source} + command line'
    _validate(cfg, source)
    return cfg


def load_classes(spec: str) -> ClassSet:
    """The class set named by a config: ``cityscapes`` or a class list file.

    Args:
        spec: ``cityscapes`` or a path for :func:`flow2seg_ros.classes.load_class_set`.
    """
    return cityscapes_classes() if spec == 'cityscapes' else load_class_set(spec)


def geometric_free(cfg: TrainConfig) -> bool:
    """True when training frames keep their geometry (no rescale, flip or crop offset)."""
    return list(cfg.scale_range) == [1.0, 1.0] and not cfg.hflip
