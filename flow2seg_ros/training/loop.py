"""The training loop and training-time validation.

Laid out like torchvision's reference scripts: :func:`fit` runs epochs of
:func:`train_one_epoch` (resuming mid-epoch where a checkpoint stopped) and
:func:`evaluate` scores held-out frame pairs with :class:`flow2seg_ros.metrics.HeadsEvaluator`,
the accumulator ``flow2seg-evaluate`` uses. The budget is counted in optimisation steps, not
epochs, so a flow model and its image-only baseline see exactly as many batches.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import random
import time
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from flow2seg_ros.classes import ClassSet
from flow2seg_ros.losses import TemporalConsistencyLoss
from flow2seg_ros.metrics import HeadsEvaluator
from flow2seg_ros.models import HEADS
from flow2seg_ros.training.config import TrainConfig
from flow2seg_ros.training.dataset import batch_flow, make_val_set, seed_worker, SkipSampler
from flow2seg_ros.training.model import set_train_mode, unwrap

__all__ = ['TrainState', 'evaluate', 'fit', 'format_metrics', 'held_out', 'train_one_epoch']

#: What ``held_out`` records as the protocol of training-time validation.
PROTOCOL = 'frame pairs at the network input size (flow2seg_ros.training.loop.evaluate)'


@dataclass
class TrainState:
    """Where training stands: steps done, the data epoch, the loss per step, images seen."""

    step: int = 0
    epoch: int = 0
    losses: list = field(default_factory=list)
    images: int = 0

    @classmethod
    def from_checkpoint(cls, meta: dict[str, Any]) -> TrainState:
        """The state recorded in a checkpoint's sidecar."""
        return cls(step=int(meta['step']), epoch=int(meta['epoch']),
                   losses=list(meta.get('losses', [])), images=int(meta.get('images', 0)))

    def checkpoint_extra(self) -> dict[str, Any]:
        """What the checkpoint's sidecar records besides step and epoch."""
        return {'losses': self.losses, 'images': self.images}

    def final_loss(self, last: int = 20) -> Optional[float]:
        """Mean loss of the last ``last`` steps (None before the first)."""
        recent = self.losses[-last:]
        return sum(recent) / len(recent) if recent else None


def train_one_epoch(model: torch.nn.Module, criterion: torch.nn.Module,
                    optimizer: torch.optim.Optimizer, lr_scheduler: Any, data_loader: DataLoader,
                    device: torch.device, state: TrainState, cfg: TrainConfig, *,
                    estimator: Any = None, scaler: Optional[torch.amp.GradScaler] = None,
                    pbar: Optional[tqdm] = None, world_size: int = 1,
                    on_step: Optional[Callable[[TrainState], None]] = None) -> None:
    """Train over one pass of ``data_loader`` or until ``cfg.steps`` steps are done.

    With ``cfg.loss_tc > 0`` the batches also carry each sample's previous frame
    (:class:`~flow2seg_ros.training.dataset.TemporalPairDataset`): the model runs on it without
    gradient (its prediction is the fixed target of the temporal-consistency term; in training
    mode, so both frames see BatchNorm alike) and ``cfg.loss_tc`` times
    :class:`~flow2seg_ros.losses.TemporalConsistencyLoss` on the fused head joins the loss.

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
    tc_loss = TemporalConsistencyLoss() if cfg.loss_tc > 0 else None
    tc_recent: list[float] = []
    for batch in data_loader:
        if state.step >= cfg.steps or (cfg.stop_at and state.step >= cfg.stop_at):
            break
        image = batch['image'].to(device, non_blocking=True)
        target = batch['label'].to(device, non_blocking=True)
        flow = batch_flow(batch, estimator, cfg, device) if cfg.use_flow else None
        with torch.autocast(device.type, enabled=scaler is not None):
            outputs = model(image, flow)
            moving = batch.get('moving')
            loss, _parts = criterion(
                outputs, target, None if moving is None else moving.to(device, non_blocking=True))
            if tc_loss is not None:
                tc = _temporal_term(model, tc_loss, outputs, batch, device, cfg)
                tc_recent = (tc_recent + [float(tc.detach())])[-max(1, cfg.log_every):]
                loss = loss + cfg.loss_tc * tc
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
                extra = {'tc': f'{sum(tc_recent) / len(tc_recent):.4f}'} if tc_recent else {}
                pbar.set_postfix(loss=f'{sum(recent) / len(recent):.4f}', **extra,
                                 lr=f'{optimizer.param_groups[0]["lr"]:.2e}',
                                 img_s=f'{n_last / max(now - t_last, 1e-9):.1f}')
                t_last, n_last = now, 0
        if on_step is not None:
            on_step(state)


def _temporal_term(model: torch.nn.Module, tc_loss: TemporalConsistencyLoss,
                   outputs: dict[str, torch.Tensor], batch: dict[str, Any],
                   device: torch.device, cfg: TrainConfig) -> torch.Tensor:
    """The temporal-consistency term of a batch: the fused head against the previous frame's."""
    if 'prev_image' not in batch:
        raise ValueError('loss_tc > 0 needs batches with the previous frame (TemporalPairDataset)')
    prev_flow = batch['prev_flow'].to(device, non_blocking=True) if cfg.use_flow else None
    with torch.no_grad():
        prev = unwrap(model)(batch['prev_image'].to(device, non_blocking=True), prev_flow)
    return tc_loss(outputs['fused'], prev['fused'], batch['tc_flow'].to(device, non_blocking=True),
                   batch['tc_mask'].to(device, non_blocking=True))


def _epoch_loader(train_set: Dataset, sampler: DistributedSampler, cfg: TrainConfig, *,
                  epoch: int, skip: int, rank: int, device: torch.device) -> DataLoader:
    """One epoch's batches in the sampler's order from ``skip`` on, seeded by epoch and rank."""
    seed = cfg.seed * 100003 + epoch * 101 + rank
    sampler.set_epoch(epoch)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_set, batch_size=cfg.batch_size, sampler=SkipSampler(sampler, skip),
                        num_workers=cfg.workers, drop_last=True,
                        pin_memory=device.type == 'cuda', worker_init_fn=seed_worker,
                        generator=gen, persistent_workers=False)
    if cfg.workers == 0:
        np.random.seed(seed % 2 ** 32)
        random.seed(seed)
    return loader


def fit(net: torch.nn.Module, criterion: torch.nn.Module, optimizer: torch.optim.Optimizer,
        lr_scheduler: Any, train_set: Dataset, device: torch.device, state: TrainState,
        cfg: TrainConfig, *, estimator: Any = None,
        scaler: Optional[torch.amp.GradScaler] = None, rank: int = 0, world_size: int = 1,
        checkpoint: Optional[Callable[[TrainState], None]] = None) -> None:
    """Train until ``cfg.steps`` (or ``cfg.stop_at``) steps are done, epoch after epoch.

    Each process draws its share of every epoch (``DistributedSampler``, dropping the last
    partial batch); a resumed run skips what its epoch already used. ``state.epoch`` follows the
    step. ``checkpoint`` is called every ``cfg.checkpoint_every`` steps (not at the end).

    Args:
        net: the model or its DDP wrapper.
        criterion: Flow2SegLoss.
        optimizer: the optimizer.
        lr_scheduler: stepped once per optimisation step.
        train_set: the training samples (:class:`FlowPairDataset`).
        device: the training device.
        state: where training stands (updated in place).
        cfg: the training config.
        estimator: flow estimator for batches that carry frames (RAFT on the device).
        scaler: AMP gradient scaler, or None.
        rank: this process's rank.
        world_size: number of processes.
        checkpoint: writes a checkpoint of ``state``.
    """
    sampler = DistributedSampler(train_set, num_replicas=world_size, rank=rank, shuffle=True,
                                 seed=cfg.seed, drop_last=True)
    batches_per_epoch = len(sampler) // cfg.batch_size

    def on_step(st: TrainState) -> None:
        st.epoch = st.step // batches_per_epoch
        if (checkpoint is not None and cfg.checkpoint_every
                and st.step % cfg.checkpoint_every == 0 and st.step < cfg.steps):
            checkpoint(st)

    pbar = tqdm(total=cfg.steps, initial=state.step, desc='train', dynamic_ncols=True,
                disable=not (rank == 0 and cfg.progress))
    set_train_mode(net, cfg.freeze_image_path)
    end = min(cfg.steps, cfg.stop_at) if cfg.stop_at else cfg.steps
    while state.step < end:
        epoch = state.step // batches_per_epoch
        skip = (state.step % batches_per_epoch) * cfg.batch_size
        loader = _epoch_loader(train_set, sampler, cfg, epoch=epoch, skip=skip, rank=rank,
                               device=device)
        train_one_epoch(net, criterion, optimizer, lr_scheduler, loader, device, state, cfg,
                        estimator=estimator, scaler=scaler, pbar=pbar, world_size=world_size,
                        on_step=on_step)
    state.epoch = state.step // batches_per_epoch
    pbar.close()


@torch.no_grad()
def evaluate(model: torch.nn.Module, data_loader: DataLoader, device: torch.device,
             classes: ClassSet, *, estimator: Any = None, cfg: Optional[TrainConfig] = None,
             heads: Sequence[str] = HEADS, progress: bool = False) -> dict[str, Any]:
    """Held-out mIoU, per-class IoU and pixel accuracy of every head on frame pairs.

    Frames are scored one by one at the dataset's size (the network input size) with
    :class:`flow2seg_ros.metrics.HeadsEvaluator`. Temporal consistency needs whole sequences:
    ``flow2seg-evaluate`` reports it with the node's pipeline (here it is None).

    Args:
        model: the model (unwrapped or DDP).
        data_loader: batches from :class:`FlowPairDataset` without augmentation.
        device: the device.
        classes: the class set (names for per-class IoU).
        estimator: flow estimator for batches that carry frames (RAFT), else None.
        cfg: the training config (flow scale, input width).
        heads: heads to score (those the model returns).
        progress: show a progress bar.

    Returns:
        ``HeadsEvaluator.summary()``.
    """
    model = unwrap(model)
    was_training = model.training
    model.eval()
    evaluator = HeadsEvaluator(classes, heads=heads, temporal=False)
    for batch in tqdm(data_loader, desc='evaluate', disable=not progress, leave=False):
        image = batch['image'].to(device)
        flow = batch_flow(batch, estimator, cfg, device) if cfg is not None else None
        outputs = model(image, flow)
        preds = {h: outputs[h].argmax(1).to(torch.uint8).cpu().numpy()
                 for h in heads if h in outputs}
        for i, target in enumerate(batch['label'].numpy()):
            evaluator.update(None, {h: p[i] for h, p in preds.items()}, target.astype(np.uint8))
    model.train(was_training)
    return evaluator.summary()


def held_out(cfg: TrainConfig, model: torch.nn.Module, classes: ClassSet,
             device: torch.device, estimator: Any = None) -> dict[str, Any]:
    """Training-time validation on ``cfg.val_split``, in the model card's ``metrics`` layout.

    Returns ``frames``, per scored head ``{miou, pixel_accuracy, per_class_iou}`` (a head with
    no labelled pixel is left out), ``split``, ``data_root`` and ``protocol``.

    Args:
        cfg: the training config.
        model: the trained model.
        classes: the class set.
        device: the device.
        estimator: the training device's flow estimator, if flow is computed there.
    """
    val_set = make_val_set(cfg, classes, estimator=estimator)
    loader = DataLoader(val_set, batch_size=1, num_workers=min(cfg.workers, 2))
    heads = HEADS if cfg.use_flow else ('fused',)
    summary = evaluate(model, loader, device, classes, estimator=estimator, cfg=cfg,
                       heads=heads, progress=cfg.progress)
    result: dict[str, Any] = {'frames': summary['frames']}
    for h, r in summary['heads'].items():
        if r['pixel_accuracy'] is not None:
            result[h] = {k: r[k] for k in ('miou', 'pixel_accuracy', 'per_class_iou')}
    result.update(split=cfg.val_split, data_root=cfg.data_root, protocol=PROTOCOL)
    return result


def format_metrics(metrics: dict[str, Any]) -> str:
    """A small table of held-out mIoU and pixel accuracy per head.

    Args:
        metrics: :func:`held_out`'s result.
    """
    lines = [f'held-out {metrics.get("split", "")} ({metrics.get("frames", 0)} frames)',
             f'{"head":<8} {"mIoU":>7} {"pix acc":>8}']
    for h in HEADS:
        if h in metrics:
            m = metrics[h]
            lines.append(f'{h:<8} {_pct(m["miou"])} {_pct(m["pixel_accuracy"]):>8}')
    return '\n'.join(lines)


def _pct(x: Optional[float]) -> str:
    return f'{"-":>7}' if x is None else f'{100 * x:7.2f}'
