"""Training samples: augmented frame pairs with the flow the node would compute for them.

Flow is estimated on the augmented frames (as the node sees its frames) with the estimator and
fixed scale recorded in the model card: in DataLoader workers for CPU estimators, on the training
device for RAFT (:func:`batch_flow`). Without geometric augmentation it can be cached on disk.
"""
from __future__ import annotations

import os
from pathlib import Path
import random
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from flow2seg_ros.classes import ClassSet
from flow2seg_ros.data.cityscapes import PairTransform, SequencePairDataset
from flow2seg_ros.flow import make_flow_estimator, scale_flow
from flow2seg_ros.training.config import ConfigError, geometric_free, TrainConfig

__all__ = ['FlowPairDataset', 'SkipSampler', 'batch_flow', 'flow_in_loader', 'make_pair_datasets',
           'make_train_set', 'make_val_set', 'normalize_image', 'seed_worker', 'training_flow']


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


def training_flow(flow_px: torch.Tensor, cfg: TrainConfig) -> torch.Tensor:
    """The network's flow input ``flow_px * flow_scale / W``, W the network input width.

    :func:`flow2seg_ros.flow.scale_flow` divides by the flow's own width, which on a full frame is
    the input width. On a training crop the normaliser must stay the inference width (not the
    crop's), so a given motion looks the same to the network in training and in the node: the
    scale is adjusted by ``crop width / input width``.

    Args:
        flow_px: (..., 2, H, W) flow in pixels.
        cfg: the training config (``flow_scale``, ``input_size``).
    """
    width = flow_px.shape[-1]
    return scale_flow(flow_px, cfg.flow_scale * width / float(cfg.input_size[1]))


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
                out['flow'] = training_flow(flow, self.cfg)
        return out


class SkipSampler(Sampler):
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


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed numpy and random from the worker's torch seed."""
    seed = torch.initial_seed() % 2 ** 32
    np.random.seed(seed)
    random.seed(seed)


def make_pair_datasets(cfg: TrainConfig, split: str, classes: ClassSet, *,
                       augment: bool) -> tuple[SequencePairDataset, SequencePairDataset]:
    """A split's frame pairs, (augmented, raw); without ``augment`` both are the same dataset.

    Args:
        cfg: the training config (data root and augmentation).
        split: the split folder name.
        classes: the class set (label ids to train ids).
        augment: apply the config's augmentation.
    """
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


def batch_flow(batch: dict[str, Any], estimator: Any, cfg: TrainConfig,
               device: torch.device) -> Optional[torch.Tensor]:
    """A batch's network flow on ``device``: computed in the loader, or here from its frames.

    Args:
        batch: a :class:`FlowPairDataset` batch.
        estimator: flow estimator for batches that carry frames (``rgb``, ``prev_rgb``).
        cfg: the training config (flow scale, input width).
        device: the training device.
    """
    if 'flow' in batch:
        return batch['flow'].to(device, non_blocking=True)
    if 'rgb' not in batch:
        return None
    flows = [estimator(p.numpy(), c.numpy()) for p, c in zip(batch['prev_rgb'], batch['rgb'])]
    return training_flow(torch.stack(flows).to(device), cfg)


def flow_in_loader(cfg: TrainConfig, device: torch.device) -> bool:
    """Whether flow is computed in the DataLoader (CPU estimators) or on the device (RAFT)."""
    return not cfg.flow_method.startswith('raft') or device.type == 'cpu'


def make_train_set(cfg: TrainConfig, classes: ClassSet, device: torch.device,
                   world: int) -> tuple[FlowPairDataset, Any]:
    """The training samples and, for flow on the training device, its estimator (else None).

    Args:
        cfg: the training config.
        classes: the class set.
        device: the training device.
        world: number of processes (the split must fill one batch on each).
    """
    in_loader = flow_in_loader(cfg, device)
    pairs, raw = make_pair_datasets(cfg, cfg.train_split, classes, augment=True)
    train_set = FlowPairDataset(pairs, cfg, with_flow=cfg.use_flow, flow_in_loader=in_loader,
                                raw_pairs=raw)
    if len(train_set) < cfg.batch_size * world:
        raise ValueError(f'{cfg.data_root} split {cfg.train_split!r} has {len(train_set)} '
                         f'samples, fewer than one batch ({cfg.batch_size} x {world} processes)')
    estimator = None
    if cfg.use_flow and not in_loader:
        estimator = make_flow_estimator(cfg.flow_method, cfg.flow_preset, device=str(device),
                                        weights=cfg.flow_weights or None)
    return train_set, estimator


def make_val_set(cfg: TrainConfig, classes: ClassSet, *, estimator: Any = None) -> Dataset:
    """The held-out pairs without augmentation (at most ``max_val_samples``).

    Args:
        cfg: the training config (``val_split``, ``max_val_samples``).
        classes: the class set.
        estimator: the training device's flow estimator, if flow is computed there.
    """
    pairs, _ = make_pair_datasets(cfg, cfg.val_split, classes, augment=False)
    val_set: Dataset = FlowPairDataset(pairs, cfg, with_flow=cfg.use_flow,
                                       flow_in_loader=estimator is None)
    if cfg.max_val_samples and len(val_set) > cfg.max_val_samples:
        val_set = torch.utils.data.Subset(val_set, range(cfg.max_val_samples))
    return val_set
