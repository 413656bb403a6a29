"""flow2seg-train: train a Flow2Seg model (or its image-only baseline) from a YAML config.

Usage::

    flow2seg-train --config config/train_synthetic.yaml [--key value ...] [--resume CKPT]
    torchrun --nproc_per_node 8 -m flow2seg_ros.train --config config/train_cityscapes_paper.yaml

Laid out like torchvision's reference scripts: ``get_args_parser()`` -> ``main(args)`` ->
``train_one_epoch(...)`` and ``evaluate(...)``. The budget is counted in optimisation steps, not
epochs, so a flow model and its image-only baseline (``use_flow: false``) see exactly as many
batches. The flow the network trains on comes from the estimator and fixed scale the node uses
(recorded in the model card), computed on the augmented frames, as the node would see them.

Checkpoints are safetensors (model, optimizer tensors and the RNG state) with a JSON sidecar
(step, epoch, config, optimizer hyper-parameters, LR schedule); nothing is ever pickled. One
process, one GPU or DDP under ``torchrun`` (gloo on CPU, nccl on CUDA); only rank 0 writes.
"""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
import datetime
import json
import math
import os
from pathlib import Path
import platform
import random
import socket
import sys
import time
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
from safetensors.torch import save_file
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler
from tqdm import tqdm
import yaml

from flow2seg_ros.classes import cityscapes_classes, ClassSet, load_class_set

__all__ = ['ConfigError', 'TrainConfig', 'FlowPairDataset', 'load_config',
           'build_model_from_config', 'save_checkpoint', 'load_checkpoint', 'train_one_epoch',
           'evaluate', 'get_args_parser', 'main', 'train_model']

CHECKPOINT_FORMAT = 'flow2seg-checkpoint/1'
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
HEADS = ('fused', 'image', 'flow')


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
        if not path.is_file():
            raise ConfigError(f'training config not found: {path}')
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f'{path}: not valid YAML: {exc}') from exc
        if not isinstance(doc, dict):
            raise ConfigError(f'{path}: expected a mapping of keys to values')
        _apply(cfg, doc, source)
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


# ------------------------------------------------------------------------------------------ data

def normalize_image(rgb: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32, ``(rgb / 255 - mean) / std``.

    Args:
        rgb: the image.
        mean: per-channel mean in [0, 1] units.
        std: per-channel standard deviation in [0, 1] units.
    """
    x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
    return (x - m) / s


def network_flow(flow_px: torch.Tensor, scale: float, input_width: int) -> torch.Tensor:
    """The network's flow input ``flow_px * scale / W`` with W the network input width.

    Equal to ``flow.scale_flow`` on full frames; on a training crop the normaliser stays the
    inference width (not the crop's), so a given motion looks the same to the network in training
    and in the node.

    Args:
        flow_px: (..., 2, H, W) flow in pixels.
        scale: the model card's flow scale.
        input_width: the network input width at inference (``input_size[1]``).
    """
    return flow_px * (scale / float(input_width))


def geometric_free(cfg: TrainConfig) -> bool:
    """True when training frames keep their geometry (no rescale, flip or crop offset)."""
    return list(cfg.scale_range) == [1.0, 1.0] and not cfg.hflip


class FlowPairDataset(Dataset):
    """Training samples with flow computed after augmentation, as the node computes it.

    Wraps :class:`flow2seg_ros.data.cityscapes.SequencePairDataset` (which applies the
    augmentation) and returns tensors: ``image`` (3, H, W) normalised, ``label`` (H, W) int64,
    ``flow`` (2, H, W) scaled for the network (absent for an image-only model, or when
    ``flow_in_loader`` is False, in which case ``rgb`` and ``prev_rgb`` (H, W, 3) uint8 are
    returned for flow on the training device, e.g. RAFT on a GPU).

    Args:
        pairs: the (augmenting) pair dataset.
        cfg: the training config (flow method, preset, scale, input size, mean, std).
        with_flow: compute flow at all.
        flow_in_loader: compute flow here (CPU estimators, inside DataLoader workers).
        raw_pairs: the same pairs without augmentation; with ``cfg.flow_cache`` set and
            geometric-free augmentation, flow is computed once from these and cached on disk.
    """

    def __init__(self, pairs: Dataset, cfg: TrainConfig, *, with_flow: bool = True,
                 flow_in_loader: bool = True, raw_pairs: Optional[Dataset] = None) -> None:
        self.pairs = pairs
        self.cfg = cfg
        self.with_flow = with_flow
        self.flow_in_loader = flow_in_loader
        self.raw_pairs = raw_pairs
        self.cache_dir: Optional[Path] = None
        if with_flow and flow_in_loader and cfg.flow_cache and raw_pairs is not None:
            if not geometric_free(cfg):
                raise ConfigError('flow_cache needs geometric-free augmentation '
                                  '(scale_range [1, 1], hflip false)')
            tag = f'{cfg.flow_method}_{cfg.flow_preset or "default"}'
            self.cache_dir = Path(cfg.flow_cache) / tag
        self._estimator: Any = None

    def __len__(self) -> int:
        return len(self.pairs)

    def estimator(self) -> Callable[[np.ndarray, np.ndarray], torch.Tensor]:
        """This process's flow estimator (built lazily: one per DataLoader worker)."""
        if self._estimator is None:
            from flow2seg_ros.flow import make_flow_estimator
            self._estimator = make_flow_estimator(
                self.cfg.flow_method, self.cfg.flow_preset, device='cpu',
                weights=self.cfg.flow_weights or None)
        return self._estimator

    def _cached_flow(self, index: int, name: str, shape: tuple[int, int]) -> torch.Tensor:
        assert self.cache_dir is not None and self.raw_pairs is not None
        path = self.cache_dir / (name.replace('/', '_') + '.npy')
        if path.is_file():
            flow = np.load(path, allow_pickle=False)
        else:
            raw = self.raw_pairs[index]
            flow = self.estimator()(raw['prev'], raw['image']).cpu().numpy().astype(np.float32)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f'.{os.getpid()}.tmp.npy')
            np.save(tmp, flow, allow_pickle=False)
            os.replace(tmp, path)
        if tuple(flow.shape[1:]) != tuple(shape):
            raise ValueError(f'cached flow {path} is {flow.shape[1:]}, the frame is {shape}: '
                             'flow_cache needs frames at the crop size; clear or unset the cache')
        return torch.from_numpy(flow)

    def __getitem__(self, index: int) -> dict[str, Any]:
        s = self.pairs[index]
        image, prev, label = s['image'], s['prev'], s['label']
        out: dict[str, Any] = {
            'image': normalize_image(image, self.cfg.mean, self.cfg.std),
            'label': torch.from_numpy(np.ascontiguousarray(label)).long(),
        }
        if self.with_flow:
            if not self.flow_in_loader:
                out['rgb'] = torch.from_numpy(np.ascontiguousarray(image))
                out['prev_rgb'] = torch.from_numpy(np.ascontiguousarray(prev))
            else:
                if self.cache_dir is not None:
                    flow = self._cached_flow(index, str(s['name']), image.shape[:2])
                else:
                    flow = self.estimator()(prev, image).cpu()
                out['flow'] = network_flow(flow, self.cfg.flow_scale, self.cfg.input_size[1])
        return out


class _SkipSampler(Sampler):
    """A sampler's order without its first ``skip`` indices (resuming mid-epoch)."""

    def __init__(self, sampler: Sampler, skip: int) -> None:
        self.sampler = sampler
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        for i, idx in enumerate(self.sampler):
            if i >= self.skip:
                yield idx

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


def _make_pair_datasets(cfg: TrainConfig, split: str, classes: ClassSet, *, augment: bool):
    from flow2seg_ros.data.cityscapes import PairTransform, SequencePairDataset

    root = Path(cfg.data_root)
    if not root.is_dir():
        raise FileNotFoundError(f'dataset folder not found: {root} (data_root)')
    transform = None
    if augment:
        transform = PairTransform(crop_size=tuple(cfg.crop_size),
                                  scale_range=tuple(cfg.scale_range),
                                  hflip=cfg.hflip, color_jitter=cfg.color_jitter)
    pairs = SequencePairDataset(root, split, classes=classes, transform=transform)
    raw = SequencePairDataset(root, split, classes=classes) if augment else pairs
    return pairs, raw


# ----------------------------------------------------------------------------------------- model

def build_model_from_config(cfg: TrainConfig, classes: ClassSet) -> torch.nn.Module:
    """The model a config trains, with ``init_weights`` loaded and ``freeze_image_path`` applied.

    Args:
        cfg: the training config.
        classes: the class set (its size is the number of outputs).
    """
    from flow2seg_ros.models import build_model

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
    from flow2seg_ros.weights import read_safetensors, WeightsError

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
    model = _unwrap(model)
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


# ------------------------------------------------------------------------------------ checkpoints

def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, 'module') else model


def save_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, scheduler: Any, step: int, epoch: int,
                    cfg: TrainConfig, extra: Optional[dict[str, Any]] = None) -> Path:
    """Write a training checkpoint: ``path`` (.safetensors) and its ``.json`` sidecar.

    Tensors: ``model.<name>``, ``optimizer.<param index>.<key>``, ``rng.torch`` (and
    ``rng.cuda``); the sidecar holds the step, epoch, config, the optimizer's param groups and
    non-tensor state, and the LR scheduler's state. Written atomically (temporary file, rename).

    Args:
        path: the .safetensors file to write.
        model: the model (a DDP wrapper is unwrapped).
        optimizer: its optimizer.
        scheduler: its LR scheduler (``state_dict()`` of plain numbers).
        step: optimisation steps done.
        epoch: the data epoch the next step draws from.
        cfg: the training config.
        extra: more JSON-able fields for the sidecar.
    """
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for k, v in _unwrap(model).state_dict().items():
        tensors[f'model.{k}'] = v.detach().cpu().clone().contiguous()
    opt = optimizer.state_dict()
    scalar_state: dict[str, dict[str, Any]] = {}
    for idx, st in opt['state'].items():
        for key, value in st.items():
            if torch.is_tensor(value):
                tensors[f'optimizer.{idx}.{key}'] = value.detach().cpu().clone().contiguous()
            else:
                scalar_state.setdefault(str(idx), {})[key] = value
    tensors['rng.torch'] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors['rng.cuda'] = torch.cuda.get_rng_state()
    meta = {
        'format': CHECKPOINT_FORMAT,
        'step': step,
        'epoch': epoch,
        'config': dataclasses.asdict(cfg),
        'optimizer': {'param_groups': opt['param_groups'], 'scalar_state': scalar_state},
        'scheduler': scheduler.state_dict(),
        **(extra or {}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    save_file(tensors, str(tmp), metadata={'format': CHECKPOINT_FORMAT})
    sidecar = path.with_suffix('.json')
    tmp_json = sidecar.with_name(sidecar.name + '.tmp')
    tmp_json.write_text(json.dumps(meta, indent=1, default=str))
    os.replace(tmp, path)
    os.replace(tmp_json, sidecar)
    return path


def load_checkpoint(path: str | os.PathLike, *, model: torch.nn.Module,
                    optimizer: Optional[torch.optim.Optimizer] = None,
                    scheduler: Any = None) -> dict[str, Any]:
    """Restore a checkpoint written by :func:`save_checkpoint`; returns its sidecar.

    Args:
        path: the checkpoint .safetensors file.
        model: the model to load into (strict).
        optimizer: the optimizer to restore, if any.
        scheduler: the LR scheduler to restore, if any.

    Raises:
        FileNotFoundError: naming the missing file or sidecar.
        ValueError: naming the file when it is not a flow2seg checkpoint.
    """
    path = Path(path)
    sidecar = path.with_suffix('.json')
    if not path.is_file():
        raise FileNotFoundError(f'checkpoint not found: {path}')
    if not sidecar.is_file():
        raise FileNotFoundError(f'checkpoint {path} has no sidecar {sidecar}')
    from flow2seg_ros.weights import read_safetensors

    tensors = read_safetensors(path)
    meta = json.loads(sidecar.read_text())
    if meta.get('format') != CHECKPOINT_FORMAT:
        raise ValueError(f'{sidecar}: not a {CHECKPOINT_FORMAT} sidecar '
                         f'(format {meta.get("format")!r})')
    state = {k[len('model.'):]: v for k, v in tensors.items() if k.startswith('model.')}
    _unwrap(model).load_state_dict(state, strict=True)
    if optimizer is not None:
        opt_state: dict[int, dict[str, Any]] = {}
        for k, v in tensors.items():
            if k.startswith('optimizer.'):
                _, idx, key = k.split('.', 2)
                opt_state.setdefault(int(idx), {})[key] = v
        for idx, st in meta['optimizer']['scalar_state'].items():
            opt_state.setdefault(int(idx), {}).update(st)
        optimizer.load_state_dict({'state': opt_state,
                                   'param_groups': meta['optimizer']['param_groups']})
    if scheduler is not None:
        scheduler.load_state_dict(meta['scheduler'])
    if 'rng.torch' in tensors:
        torch.set_rng_state(tensors['rng.torch'])
    if 'rng.cuda' in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors['rng.cuda'])
    return meta


# -------------------------------------------------------------------------------------- training

@dataclass
class _State:
    step: int = 0
    epoch: int = 0
    losses: list = field(default_factory=list)
    images: int = 0


def _batch_flow(batch: dict[str, Any], estimator: Any, cfg: TrainConfig,
                device: torch.device) -> Optional[torch.Tensor]:
    if 'flow' in batch:
        return batch['flow'].to(device, non_blocking=True)
    if 'rgb' not in batch:
        return None
    flows = [estimator(p.numpy(), c.numpy()) for p, c in zip(batch['prev_rgb'], batch['rgb'])]
    return network_flow(torch.stack(flows).to(device), cfg.flow_scale, cfg.input_size[1])


def train_one_epoch(model: torch.nn.Module, criterion: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, lr_scheduler: Any, data_loader: DataLoader,
                    device: torch.device, state: _State, cfg: TrainConfig, *,
                    estimator: Any = None, scaler: Optional[torch.amp.GradScaler] = None,
                    pbar: Optional[tqdm] = None, world_size: int = 1,
                    on_step: Optional[Callable[[_State], None]] = None) -> None:
    """Train over one pass of ``data_loader`` or until ``cfg.steps`` steps are done.

    Args:
        model: the model (possibly DDP-wrapped), in training mode.
        criterion: Flow2SegLoss.
        optimizer: the optimizer.
        lr_scheduler: stepped once per optimisation step.
        data_loader: batches from :class:`FlowPairDataset`.
        device: the training device.
        state: step/epoch counters and the loss history (updated in place).
        cfg: the training config.
        estimator: flow estimator for batches that carry frames instead of flow (RAFT).
        scaler: AMP gradient scaler (CUDA with ``amp``), or None.
        pbar: progress bar (rank 0), or None.
        world_size: number of processes (for images/s).
        on_step: called after every step (checkpointing).
    """
    t_last, n_last = time.perf_counter(), 0
    for batch in data_loader:
        if state.step >= cfg.steps or (cfg.stop_at and state.step >= cfg.stop_at):
            break
        image = batch['image'].to(device, non_blocking=True)
        target = batch['label'].to(device, non_blocking=True)
        flow = _batch_flow(batch, estimator, cfg, device) if cfg.use_flow else None
        with torch.autocast(device.type, enabled=scaler is not None):
            outputs = model(image, flow)
            loss, _parts = criterion(outputs, target)
        if not torch.isfinite(loss):
            raise FloatingPointError(f'loss is {loss.item()} at step {state.step}; '
                                     'lower lr or check the data')
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        lr_scheduler.step()
        state.step += 1
        state.images += image.shape[0] * world_size
        n_last += image.shape[0] * world_size
        state.losses.append(float(loss.detach()))
        if pbar is not None:
            pbar.update(1)
            if state.step % max(1, cfg.log_every) == 0 or state.step == cfg.steps:
                now = time.perf_counter()
                recent = state.losses[-max(1, cfg.log_every):]
                pbar.set_postfix(loss=f'{sum(recent) / len(recent):.4f}',
                                 lr=f'{optimizer.param_groups[0]["lr"]:.2e}',
                                 img_s=f'{n_last / max(now - t_last, 1e-9):.1f}')
                t_last, n_last = now, 0
        if on_step is not None:
            on_step(state)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data_loader: DataLoader, device: torch.device,
             classes: ClassSet, *, estimator: Any = None, cfg: Optional[TrainConfig] = None,
             heads: Sequence[str] = HEADS, progress: bool = False) -> dict[str, Any]:
    """Held-out mIoU, per-class IoU and pixel accuracy of every head on frame pairs.

    Frames are evaluated at the dataset's size (the network input size). Temporal consistency
    needs whole sequences: ``flow2seg-evaluate`` reports it with the node's pipeline.

    Args:
        model: the model (unwrapped or DDP).
        data_loader: batches from :class:`FlowPairDataset` without augmentation.
        device: the device.
        classes: the class set (names for per-class IoU).
        estimator: flow estimator for batches that carry frames (RAFT), else None.
        cfg: the training config (flow scale, input width).
        heads: heads to score (those the model returns).
        progress: show a progress bar.
    """
    from flow2seg_ros.metrics import ConfusionMatrix

    model = _unwrap(model)
    was_training = model.training
    model.eval()
    cms = {h: ConfusionMatrix(classes.num_classes, classes.ignore_index) for h in heads}
    n = 0
    for batch in tqdm(data_loader, desc='evaluate', disable=not progress, leave=False):
        image = batch['image'].to(device)
        flow = _batch_flow(batch, estimator, cfg, device) if cfg is not None else None
        outputs = model(image, flow)
        target = batch['label'].numpy()
        for h in heads:
            if h in outputs:
                pred = outputs[h].argmax(1).to(torch.uint8).cpu().numpy()
                for p, t in zip(pred, target):
                    cms[h].update(p, t.astype(np.uint8))
        n += image.shape[0]
    model.train(was_training)
    out: dict[str, Any] = {'frames': n}
    for h, cm in cms.items():
        if cm.matrix.sum() == 0:
            continue
        iou = cm.iou()
        out[h] = {'miou': float(cm.miou()), 'pixel_accuracy': float(cm.pixel_accuracy()),
                  'per_class_iou': {name: (None if math.isnan(v) else float(v))
                                    for name, v in zip(classes.names, iou)}}
    return out


# ----------------------------------------------------------------------------------- distributed

def init_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """Set up DDP from torchrun's environment; returns (rank, world size, device).

    Args:
        cfg: the training config (device).
    """
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local = int(os.environ.get('LOCAL_RANK', '0'))
    want = cfg.device
    if want == 'auto':
        want = 'cuda' if torch.cuda.is_available() else 'cpu'
    if want.startswith('cuda') and not torch.cuda.is_available():
        raise ConfigError(f'device {cfg.device!r} asked for but CUDA is not available')
    if world > 1:
        if want.startswith('cuda'):
            device = torch.device('cuda', local)
            torch.cuda.set_device(device)
            backend = 'nccl'
        else:
            device = torch.device('cpu')
            backend = 'gloo'
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, rank=rank, world_size=world)
    else:
        device = torch.device(want)
        if device.type == 'cuda' and device.index is not None:
            torch.cuda.set_device(device)
    return rank, world, device


# ------------------------------------------------------------------------------------------ main

def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The command line: ``--config``, ``--resume``, ``--threads`` and ``--key value`` overrides.

    Args:
        add_help: add ``-h/--help``.
    """
    parser = argparse.ArgumentParser(
        prog='flow2seg-train',
        description='Train Flow2Seg. Any config key can be overridden with --key value '
                    '(values are YAML, e.g. --input_size "[256, 512]").',
        add_help=add_help)
    parser.add_argument('--config', required=True, help='training config YAML')
    parser.add_argument('--resume', default='', help='checkpoint .safetensors to resume from')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch threads (overrides the config key threads)')
    return parser


def _machine() -> dict[str, Any]:
    info = {'host': socket.gethostname(), 'platform': platform.platform(),
            'python': platform.python_version(), 'torch': torch.__version__,
            'cpus': os.cpu_count(), 'threads': torch.get_num_threads()}
    if torch.cuda.is_available():
        info['gpu'] = torch.cuda.get_device_name(0)
    return info


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """Entry point of ``flow2seg-train``: train as configured; returns the exit status.

    Bad input (a missing or invalid config, an unknown key, a missing dataset, an unusable
    weights file) prints ``flow2seg-train: error: <message>`` to stderr and returns 2.

    Args:
        args: parsed arguments (``get_args_parser()``; an ``overrides`` dict may be added), a
            list of command-line tokens, or None for ``sys.argv[1:]``.
    """
    try:
        train_model(args)
    except (OSError, ValueError) as exc:  # ConfigError, DatasetError, WeightsError, ...
        print(f'flow2seg-train: error: {exc}', file=sys.stderr)
        return 2
    return 0


def train_model(args: argparse.Namespace | Sequence[str] | None = None) -> dict[str, Any]:
    """Train as configured; returns a summary (step, losses, checkpoint and model paths, metrics).

    Args:
        args: as for :func:`main`.
    """
    argv = list(sys.argv[1:]) if args is None else args
    if not isinstance(argv, argparse.Namespace):
        args, rest = get_args_parser().parse_known_args(argv)
        args.overrides = parse_overrides(rest)
        command = ' '.join(['flow2seg-train', *argv])
    else:
        command = 'flow2seg_ros.train.train_model(' + repr(vars(argv)) + ')'
    overrides = dict(getattr(args, 'overrides', {}) or {})
    if args.threads is not None:
        overrides['threads'] = args.threads
    cfg = load_config(args.config, overrides)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    rank, world, device = init_distributed(cfg)
    is_main = rank == 0
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    t_start = time.time()

    classes = load_classes(cfg.classes)
    train_pairs, raw_pairs = _make_pair_datasets(cfg, cfg.train_split, classes, augment=True)
    flow_in_loader = not cfg.flow_method.startswith('raft') or device.type == 'cpu'
    train_set = FlowPairDataset(train_pairs, cfg, with_flow=cfg.use_flow,
                                flow_in_loader=flow_in_loader, raw_pairs=raw_pairs)
    if len(train_set) < cfg.batch_size * world:
        raise ValueError(f'{cfg.data_root} split {cfg.train_split!r} has {len(train_set)} '
                         f'samples, fewer than one batch ({cfg.batch_size} x {world} processes)')
    estimator = None
    if cfg.use_flow and not flow_in_loader:
        from flow2seg_ros.flow import make_flow_estimator
        estimator = make_flow_estimator(cfg.flow_method, cfg.flow_preset, device=str(device),
                                        weights=cfg.flow_weights or None)

    model = build_model_from_config(cfg, classes).to(device)
    if world > 1 and cfg.sync_bn and device.type == 'cuda':
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    from flow2seg_ros.losses import Flow2SegLoss
    loss_kwargs = {k: v for k, v in (('alpha', cfg.loss_alpha), ('beta', cfg.loss_beta))
                   if v is not None}
    criterion = Flow2SegLoss(ignore_index=classes.ignore_index, **loss_kwargs)
    optimizer = make_optimizer(cfg, model)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, poly_lambda(cfg.steps, cfg.lr_power, cfg.warmup_steps, cfg.warmup_factor))
    scaler = torch.amp.GradScaler('cuda') if cfg.amp and device.type == 'cuda' else None

    state = _State()
    if args.resume:
        meta = load_checkpoint(args.resume, model=model, optimizer=optimizer, scheduler=scheduler)
        state.step, state.epoch = int(meta['step']), int(meta['epoch'])
        state.losses = list(meta.get('losses', []))
        state.images = int(meta.get('images', 0))

    net = model  # what the training steps call: the model, or its DDP wrapper
    if world > 1:
        ddp_kwargs = {'device_ids': [device.index]} if device.type == 'cuda' else {}
        net = torch.nn.parallel.DistributedDataParallel(model, **ddp_kwargs)

    out_dir = Path(cfg.output_dir)
    ckpt_path = out_dir / 'checkpoint.safetensors'
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / 'config.yaml').write_text(yaml.safe_dump(dataclasses.asdict(cfg),
                                                            sort_keys=False))

    sampler = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    batches_per_epoch = len(sampler) // cfg.batch_size

    def write_checkpoint(st: _State) -> None:
        epoch = st.step // batches_per_epoch
        if is_main:
            save_checkpoint(ckpt_path, model=model, optimizer=optimizer, scheduler=scheduler,
                            step=st.step, epoch=epoch, cfg=cfg,
                            extra={'losses': st.losses, 'images': st.images})

    def on_step(st: _State) -> None:
        if cfg.checkpoint_every and st.step % cfg.checkpoint_every == 0 and st.step < cfg.steps:
            write_checkpoint(st)

    pbar = tqdm(total=cfg.steps, initial=state.step, desc='train', dynamic_ncols=True,
                disable=not (is_main and cfg.progress))
    set_train_mode(net, cfg.freeze_image_path)
    end = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
    while state.step < end:
        epoch = state.step // batches_per_epoch
        skip = (state.step % batches_per_epoch) * cfg.batch_size
        sampler.set_epoch(epoch)
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch * 101 + rank)
        loader = DataLoader(train_set, batch_size=cfg.batch_size,
                            sampler=_SkipSampler(sampler, skip), num_workers=cfg.workers,
                            drop_last=True, pin_memory=device.type == 'cuda',
                            worker_init_fn=_seed_worker, generator=gen,
                            persistent_workers=False)
        if cfg.workers == 0:
            np.random.seed((cfg.seed * 100003 + epoch * 101 + rank) % 2 ** 32)
            random.seed(cfg.seed * 100003 + epoch * 101 + rank)
        train_one_epoch(net, criterion, optimizer, scheduler, loader, device, state, cfg,
                        estimator=estimator, scaler=scaler, pbar=pbar, world_size=world,
                        on_step=on_step)
    pbar.close()
    write_checkpoint(state)
    wall = time.time() - t_start

    summary: dict[str, Any] = {'step': state.step, 'losses': state.losses,
                               'checkpoint': str(ckpt_path), 'wall_time_s': wall}
    if state.step < cfg.steps:  # stopped early (stop_at): resume later with --resume
        if world > 1:
            dist.barrier()
            dist.destroy_process_group()
        return summary
    metrics: dict[str, Any] = {}
    if is_main and cfg.val_split:
        metrics = _held_out(cfg, model, classes, device, estimator)
    summary['metrics'] = metrics
    if is_main:
        model_path = out_dir / 'model.safetensors'
        _write_model(model_path, model, cfg, classes, command=command, state=state,
                     wall=wall, world=world, metrics=metrics,
                     loss={'alpha': criterion.alpha, 'beta': criterion.beta})
        summary['model'] = str(model_path)
        if metrics:
            print(format_metrics(metrics))
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return summary


def _held_out(cfg: TrainConfig, model: torch.nn.Module, classes: ClassSet,
              device: torch.device, estimator: Any) -> dict[str, Any]:
    val_pairs, _ = _make_pair_datasets(cfg, cfg.val_split, classes, augment=False)
    flow_in_loader = estimator is None
    val_set: Dataset = FlowPairDataset(val_pairs, cfg, with_flow=cfg.use_flow,
                                       flow_in_loader=flow_in_loader)
    if cfg.max_val_samples and len(val_set) > cfg.max_val_samples:
        val_set = torch.utils.data.Subset(val_set, range(cfg.max_val_samples))
    loader = DataLoader(val_set, batch_size=1, num_workers=min(cfg.workers, 2))
    heads = HEADS if cfg.use_flow else ('fused',)
    result = evaluate(model, loader, device, classes, estimator=estimator, cfg=cfg, heads=heads,
                      progress=cfg.progress)
    result['split'] = cfg.val_split
    result['data_root'] = cfg.data_root
    result['protocol'] = 'frame pairs at the network input size (flow2seg_ros.train.evaluate)'
    return result


def format_metrics(metrics: dict[str, Any]) -> str:
    """A small table of held-out mIoU and pixel accuracy per head.

    Args:
        metrics: :func:`evaluate`'s result.
    """
    lines = [f'held-out {metrics.get("split", "")} ({metrics.get("frames", 0)} frames)',
             f'{"head":<8} {"mIoU":>7} {"pix acc":>8}']
    for h in HEADS:
        if h in metrics:
            m = metrics[h]
            lines.append(f'{h:<8} {100 * m["miou"]:7.2f} {100 * m["pixel_accuracy"]:8.2f}')
    return '\n'.join(lines)


def _write_model(path: Path, model: torch.nn.Module, cfg: TrainConfig, classes: ClassSet, *,
                 command: str, state: _State, wall: float, world: int,
                 metrics: dict[str, Any], loss: dict[str, float]) -> None:
    from flow2seg_ros.weights import make_card, save_model

    training = {
        'command': command,
        'config': dataclasses.asdict(cfg),
        'seed': cfg.seed,
        'steps': state.step,
        'loss': loss,
        'images_seen': state.images,
        'batch_size_total': cfg.batch_size * world,
        'processes': world,
        'final_loss': (sum(state.losses[-20:]) / len(state.losses[-20:])
                       if state.losses else None),
        'wall_time_s': round(wall, 1),
        'finished': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'machine': _machine(),
    }
    card = make_card(model, classes, input_size=cfg.input_size, mean=cfg.mean, std=cfg.std,
                     flow_method=cfg.flow_method, flow_preset=cfg.flow_preset,
                     flow_scale=cfg.flow_scale, training=training, metrics=metrics)
    save_model(model, path, card)


if __name__ == '__main__':
    raise SystemExit(main())
