"""Training of the learned flow network (:class:`~flow2seg_ros.flow.learned.FlowLiteNet`).

A fixed config schema (:class:`FlowTrainConfig`, YAML plus ``--key value`` overrides), the
training set (ground-truth pairs from :class:`~flow2seg_ros.data.flow_pairs.FlowPairs` mixed with
warped single frames from :func:`~flow2seg_ros.flow.augment.random_warp_pair`, both through
:class:`~flow2seg_ros.flow.augment.FlowPairTransform`), the multi-scale end-point-error loss, the
loop with checkpoints and resume, and the held-out scoring. ``flow2seg-train-flow``
(:mod:`flow2seg_ros.train_flow`) is the command.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
import datetime
import os
from pathlib import Path
import platform
import random
import time
from typing import Any, Optional, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset
from tqdm import tqdm

from flow2seg_ros.data.cityscapes import DatasetError, read_rgb
from flow2seg_ros.data.flow_pairs import FlowPairs
from flow2seg_ros.devices import resolve_device
from flow2seg_ros.flow.augment import FlowPairTransform, random_warp_pair
from flow2seg_ros.flow.errors import FlowErrors
from flow2seg_ros.flow.learned import FlowLiteNet, load_flow_model, save_flow_model
from flow2seg_ros.training.checkpoint import load_checkpoint, save_checkpoint
from flow2seg_ros.training.config import ConfigError, read_config_file
from flow2seg_ros.training.model import poly_lambda

__all__ = ['FlowTrainConfig', 'FlowTrainSet', 'load_flow_config',
           'multiscale_loss', 'score_pairs', 'train_flow']

_IMAGE_GLOB = '*/*_leftImg8bit.png'


@dataclass
class FlowTrainConfig:
    """The fixed schema of a flow training config (YAML); every key is optional. Sizes [H, W]."""

    # data
    data_root: str = 'data/synthetic'
    train_split: str = 'train'  # pairs with ground-truth flow (flow2seg-synth)
    extra_roots: list = field(default_factory=list)  # more dataset roots with that split
    warp_fraction: float = 0.25  # share of samples made by warping single frames (1 = only)
    warp_splits: list = field(default_factory=lambda: ['train'])  # frames for warped samples
    val_split: str = 'val'  # ground-truth pairs scored at the end ('' = none)
    max_val_samples: int = 200  # 0 = every pair
    # model
    model_kwargs: dict = field(default_factory=dict)  # FlowLiteNet keyword arguments
    init_weights: str = ''  # start from saved flow weights (.safetensors with its card)
    # augmentation (as segmentation training: flow2seg_ros.data.cityscapes.PairTransform)
    crop_size: list = field(default_factory=lambda: [160, 320])
    scale_range: list = field(default_factory=lambda: [0.75, 1.25])
    hflip: bool = True
    color_jitter: float = 0.2
    # loss: weights of the estimates coarsest first; the last is the final flow at input size
    loss_weights: list = field(default_factory=lambda: [0.25, 0.5, 0.5, 0.5, 0.5, 1.0])
    # optimisation
    lr: float = 0.0006
    weight_decay: float = 0.0001
    lr_power: float = 0.9
    warmup_steps: int = 100
    warmup_factor: float = 0.1
    steps: int = 4000
    batch_size: int = 8
    workers: int = 1
    # run
    seed: int = 0
    threads: int = 1
    device: str = 'cpu'
    output_dir: str = 'runs/flow'
    checkpoint_every: int = 250
    log_every: int = 10
    progress: bool = True


def _check_type(key: str, value: Any, default: Any, source: str) -> Any:
    if isinstance(default, str) and value is None:
        return ''  # an empty command-line value
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise ConfigError(f'{source}: {key} should be {type(default).__name__}, got {value!r}')
    return value


def load_flow_config(path: Optional[str | os.PathLike],
                     overrides: Optional[dict[str, Any]] = None) -> FlowTrainConfig:
    """Read a YAML flow training config and apply overrides (unknown keys are refused).

    Raises:
        ConfigError: naming the file (or ``command line``) and the key.
    """
    cfg = FlowTrainConfig()
    names = {f.name for f in dataclasses.fields(cfg)}
    layers: list[tuple[str, dict]] = []
    if path is not None:
        path = Path(path)
        layers.append((str(path), read_config_file(path, 'flow training config')))
    layers.append(('command line', dict(overrides or {})))
    for source, doc in layers:
        for key, value in doc.items():
            if key not in names:
                raise ConfigError(f'{source}: unknown key {key!r}; known keys: '
                                  f'{", ".join(sorted(names))}')
            setattr(cfg, key, _check_type(key, value, getattr(cfg, key), source))
    if not 0.0 <= cfg.warp_fraction <= 1.0:
        raise ConfigError(f'warp_fraction must be in [0, 1], got {cfg.warp_fraction}')
    if len(cfg.crop_size) != 2 or min(cfg.crop_size) < 32:
        raise ConfigError(f'crop_size must be [H, W] of at least 32, got {cfg.crop_size}')
    for key in ('steps', 'batch_size'):
        if getattr(cfg, key) < 1:
            raise ConfigError(f'{key} must be >= 1, got {getattr(cfg, key)}')
    return cfg


class FlowTrainSet(Dataset):
    """Augmented training samples: ground-truth pairs and warped single frames, mixed.

    Each item is a dict of tensors: ``prev``, ``cur`` (3, H, W) uint8, ``flow`` (2, H, W)
    float32 (current -> previous, pixels), ``valid`` (H, W) bool. With probability
    ``warp_fraction`` an item is a random warp of a frame of ``warp_splits`` (see
    :func:`random_warp_pair`; the patches come from another random frame), else ground-truth
    pair ``index``.

    Args:
        cfg: the config.
        length: items per epoch when there are no ground-truth pairs.
    """

    def __init__(self, cfg: FlowTrainConfig, *, length: int = 4096) -> None:
        self.cfg = cfg
        roots = [Path(r) for r in [cfg.data_root, *cfg.extra_roots]]
        self.pairs = ConcatDataset([FlowPairs(r, cfg.train_split) for r in roots]
                                   ) if cfg.warp_fraction < 1 else None
        self.frames: list[Path] = []
        if cfg.warp_fraction > 0:
            for root in roots:
                for split in cfg.warp_splits:
                    self.frames += sorted((root / 'leftImg8bit_sequence' / split
                                           ).glob(_IMAGE_GLOB))
            if not self.frames:
                raise DatasetError(f'no frames for warped samples in splits '
                                   f'{cfg.warp_splits} of {", ".join(map(str, roots))}')
        self.length = len(self.pairs) if self.pairs is not None else length
        self.transform = FlowPairTransform(tuple(cfg.crop_size), scale_range=tuple(
            cfg.scale_range), hflip=cfg.hflip, color_jitter=cfg.color_jitter)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        seed = int(torch.randint(0, 2 ** 31 - 1, ()))
        rng = np.random.default_rng(seed)
        if self.pairs is None or rng.random() < self.cfg.warp_fraction:
            a, b = rng.integers(0, len(self.frames), 2)
            sample = random_warp_pair(read_rgb(self.frames[a]), rng,
                                      other=read_rgb(self.frames[b]))
        else:
            sample = self.pairs[index % len(self.pairs)]
        sample = self.transform(sample)
        return {'prev': torch.from_numpy(sample['prev']).permute(2, 0, 1),
                'cur': torch.from_numpy(sample['cur']).permute(2, 0, 1),
                'flow': torch.from_numpy(sample['flow']),
                'valid': torch.from_numpy(sample['valid'])}


def _pooled_target(flow: torch.Tensor, valid: torch.Tensor, stride: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """Ground truth on a level's grid: the mean valid flow of each ``stride`` cell, in that
    level's pixels, valid where more than half the cell is."""
    v = valid.unsqueeze(1).float()
    if stride == 1:
        return flow, v[:, 0] > 0.5
    frac = F.avg_pool2d(v, stride)
    mean = F.avg_pool2d(flow * v, stride) / frac.clamp_min(1e-6)
    return mean / stride, frac[:, 0] > 0.5


def multiscale_loss(model: FlowLiteNet, predictions: Sequence[torch.Tensor],
                    flow: torch.Tensor, valid: torch.Tensor,
                    weights: Sequence[float]) -> tuple[torch.Tensor, float]:
    """Weighted mean end-point error of every estimate, each in input pixels on valid pixels.

    Args:
        model: the network (its level strides).
        predictions: ``model.predictions(...)``: level estimates coarsest first, then the final
            flow at input size.
        flow: (N, 2, H, W) ground truth, pixels; valid: (N, H, W) bool.
        weights: one weight per prediction.

    Returns:
        The loss and the final flow's EPE (a float, for the progress bar).
    """
    if len(weights) != len(predictions):
        raise ValueError(f'loss_weights has {len(weights)} values, the network makes '
                         f'{len(predictions)} estimates')
    total = flow.new_zeros(())
    final_epe = 0.0
    for pred, wgt, stride in zip(predictions, weights, model.prediction_strides):
        target, ok = _pooled_target(flow, valid, stride)
        epe = torch.sqrt(((pred - target) ** 2).sum(1) + 1e-6) * stride
        okf = ok.float()
        mean = (epe * okf).sum() / okf.sum().clamp_min(1.0)
        total = total + wgt * mean
        if stride == 1:
            final_epe = float(mean.detach())
    return total, final_epe


def score_pairs(model: FlowLiteNet, pairs: FlowPairs, *, max_pairs: int = 0,
                device: torch.device = torch.device('cpu')) -> dict[str, Any]:
    """EPE and Fl of the model on ground-truth pairs at their full size (:class:`FlowErrors`).

    Args:
        model: the network.
        pairs: the pairs.
        max_pairs: score this many, spread evenly over the pairs (0 = all).
        device: where the network runs.
    """
    model.eval()
    errors = FlowErrors()
    count = len(pairs) if max_pairs <= 0 else min(max_pairs, len(pairs))
    with torch.inference_mode():
        for i in np.linspace(0, len(pairs) - 1, count).round().astype(int):
            s = pairs[int(i)]
            prev = torch.from_numpy(s['prev']).permute(2, 0, 1)[None].to(device)
            cur = torch.from_numpy(s['cur']).permute(2, 0, 1)[None].to(device)
            pred = model(prev, cur)[0].cpu().numpy()
            errors.update(pred, s['flow'], s['valid'], s['moving'])
    return errors.summary()


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)
    cv2.setNumThreads(1)


def _lr_schedule(cfg: FlowTrainConfig, optimizer: torch.optim.Optimizer):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, poly_lambda(cfg.steps, cfg.lr_power, cfg.warmup_steps, cfg.warmup_factor))


def train_flow(cfg: FlowTrainConfig, *, command: str, resume: Optional[str] = None,
               log: Any = print) -> dict[str, Any]:
    """Train as configured; writes ``<output_dir>/flow.safetensors`` (+ card) and checkpoints.

    Args:
        cfg: the config.
        command: the command line, for the card.
        resume: a checkpoint to continue from (``<output_dir>/checkpoint.safetensors``).
        log: where one-line messages go.

    Returns:
        The card written.
    """
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    cv2.setNumThreads(1)
    device = resolve_device(cfg.device)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.init_weights:
        model, init_card = load_flow_model(cfg.init_weights)
        if cfg.model_kwargs and cfg.model_kwargs != init_card['model_kwargs']:
            raise ConfigError(f'model_kwargs {cfg.model_kwargs} differ from those of '
                              f'init_weights {cfg.init_weights}: {init_card["model_kwargs"]}')
    else:
        try:
            model = FlowLiteNet(**cfg.model_kwargs)
        except TypeError as exc:
            raise ConfigError(f'model_kwargs: {exc}') from exc
    model = model.to(device).train()
    n_pred = len(model.prediction_strides)
    if len(cfg.loss_weights) != n_pred:
        raise ConfigError(f'loss_weights needs {n_pred} values for this network (one per '
                          f'estimate, strides {model.prediction_strides}), got '
                          f'{len(cfg.loss_weights)}')
    train_set = FlowTrainSet(cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = _lr_schedule(cfg, optimizer)
    step, epoch, wall_before = 0, 0, 0.0
    ckpt = out / 'checkpoint.safetensors'
    if resume:
        meta = load_checkpoint(resume, model=model, optimizer=optimizer, scheduler=scheduler)
        step, epoch = int(meta['step']), int(meta['epoch'])
        wall_before = float(meta.get('wall_time_s', 0.0))
        log(f'resumed from {resume} at step {step}')
    t0 = time.perf_counter()
    losses: list[float] = []
    pbar = tqdm(total=cfg.steps, initial=step, desc='train-flow', dynamic_ncols=True,
                disable=not cfg.progress)
    while step < cfg.steps:
        gen = torch.Generator().manual_seed(cfg.seed * 100003 + epoch)
        loader = DataLoader(train_set, batch_size=cfg.batch_size, shuffle=True, drop_last=True,
                            num_workers=cfg.workers, worker_init_fn=_seed_worker, generator=gen,
                            persistent_workers=False)
        for batch in loader:
            preds = model.predictions(batch['prev'].to(device), batch['cur'].to(device))
            loss, epe = multiscale_loss(model, preds, batch['flow'].to(device),
                                        batch['valid'].to(device), cfg.loss_weights)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(epe)
            pbar.update(1)
            if step % cfg.log_every == 0:
                pbar.set_postfix(epe=f'{np.mean(losses[-cfg.log_every:]):.3f}',
                                 lr=f'{scheduler.get_last_lr()[0]:.2e}')
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save_checkpoint(ckpt, model=model, optimizer=optimizer, scheduler=scheduler,
                                step=step, epoch=epoch, cfg=cfg, extra={
                                    'wall_time_s': wall_before + time.perf_counter() - t0})
            if step >= cfg.steps:
                break
        epoch += 1
    pbar.close()
    wall = wall_before + time.perf_counter() - t0
    metrics: dict[str, Any] = {}
    if cfg.val_split:
        try:
            val = FlowPairs(cfg.data_root, cfg.val_split)
        except DatasetError as exc:
            log(f'no held-out scoring: {exc}')
        else:
            metrics[f'{cfg.val_split}_pairs'] = score_pairs(
                model, val, max_pairs=cfg.max_val_samples, device=device)
            log(f'{cfg.val_split}: {metrics[cfg.val_split + "_pairs"]}')
    training = {
        'command': command, 'config': dataclasses.asdict(cfg), 'steps': step,
        'samples_seen': step * cfg.batch_size,
        'final_train_epe_px': round(float(np.mean(losses[-50:])), 4) if losses else None,
        'wall_time_s': round(wall, 1),
        'finished': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'machine': {'platform': platform.platform(), 'python': platform.python_version(),
                    'torch': torch.__version__, 'cpus': os.cpu_count(),
                    'threads': torch.get_num_threads(), 'device': str(device)},
        'initialised_from': cfg.init_weights or None,
    }
    card = save_flow_model(model.cpu().eval(), out / 'flow.safetensors', training=training,
                           metrics=metrics)
    log(f'wrote {out / "flow.safetensors"} after {step} steps in {wall / 60:.1f} min')
    return card
