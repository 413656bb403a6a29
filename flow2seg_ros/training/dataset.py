"""Training samples: augmented frame pairs with the flow the node would compute for them.

Flow is estimated on the augmented frames (as the node sees its frames) with the estimator and
fixed scale recorded in the model card: in DataLoader workers for CPU estimators, on the training
device for RAFT (:func:`batch_flow`). Without geometric augmentation it can be cached on disk.
With a temporal-consistency weight (``loss_tc > 0``) the samples also carry the previous frame
and what the term needs (:class:`TemporalPairDataset`).
"""
from __future__ import annotations

import os
from pathlib import Path
import random
import re
from typing import Any, Callable, Iterator, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from flow2seg_ros.classes import ClassSet
from flow2seg_ros.data.cityscapes import DatasetError, PairTransform, read_rgb, SequencePairDataset
from flow2seg_ros.data.flowio import FLOW_SUFFIX, MOVING_SUFFIX, read_flow_png, read_moving_png
from flow2seg_ros.flow import make_flow_estimator, scale_flow
from flow2seg_ros.flow.augment import FlowPairTransform
from flow2seg_ros.losses import flow_consistency_mask
from flow2seg_ros.training.config import ConfigError, geometric_free, TrainConfig

__all__ = ['FlowPairDataset', 'SkipSampler', 'TemporalPairDataset', 'batch_flow', 'flow_in_loader',
           'make_pair_datasets', 'make_train_set', 'make_val_set', 'normalize_image',
           'seed_worker', 'training_flow']


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


# ---- samples for the temporal-consistency term (loss_tc > 0) ----
_IMAGE_STEM = re.compile(r'^(?P<head>.+_)(?P<frame>\d+)(?P<tail>_leftImg8bit\.png)$')


def _frame_before(path: Path) -> Optional[Path]:
    """The path of the frame before a ``<city>_<seq>_<frame>_leftImg8bit.png`` frame (None for
    frame 0 or another name)."""
    m = _IMAGE_STEM.match(path.name)
    if m is None or int(m['frame']) == 0:
        return None
    digits = len(m['frame'])
    return path.with_name(f"{m['head']}{int(m['frame']) - 1:0{digits}d}{m['tail']}")


class TemporalPairDataset(FlowPairDataset):
    """:class:`FlowPairDataset` samples plus what the temporal-consistency term needs.

    Besides ``image``, ``label`` and (with flow) ``flow``, each sample carries ``prev_image``
    (3, H, W), the previous frame normalised; ``tc_flow`` (2, H, W) float32, the estimator's flow
    from the frame to the previous one in pixels (the one the network's ``flow`` input is scaled
    from); ``tc_mask`` (H, W) bool, where that flow passes the forward-backward check
    (:func:`flow2seg_ros.losses.flow_consistency_mask`, one more estimator call, previous ->
    current). With ``cfg.tc_flow == 'ground_truth'`` both come from the generator instead: the
    frame's flow file (``<root>/flow/<split>/<city>/<name>_flow.png``) and its validity,
    augmented like the pair (:class:`flow2seg_ros.flow.augment.FlowPairTransform`, which draws as
    :class:`~flow2seg_ros.data.cityscapes.PairTransform` does). And, for a flow model,
    ``prev_flow`` (2, H, W): the network flow input of the previous frame, from the frame before
    it, which is read and augmented exactly like the pair (the augmentation's random draws are
    replayed). Where no frame before the previous one exists, ``prev_flow`` is zero and
    ``tc_mask`` is all False, so the sample adds nothing to the term. The term's flow is computed
    here also for an image-only model, and never cached. With ``cfg.loss_moving > 0`` (which
    needs the ground truth) the sample also carries ``moving`` (H, W) bool, the generator's mask
    of independently moving pixels (``<name>_moving.png``), augmented with the flow.

    Args:
        pairs: the (augmenting) pair dataset.
        cfg: the training config.
        raw_pairs: the same pairs without augmentation (frames are re-augmented from these).
    """

    def __init__(self, pairs: SequencePairDataset, cfg: TrainConfig, *,
                 raw_pairs: SequencePairDataset) -> None:
        super().__init__(pairs, cfg, with_flow=cfg.use_flow, flow_in_loader=True,
                         raw_pairs=None)
        self.raw_pairs = raw_pairs
        if len(raw_pairs) != len(pairs):
            raise ValueError(f'raw_pairs has {len(raw_pairs)} samples, pairs {len(pairs)}')
        self.flow_transform: Optional[FlowPairTransform] = None
        if cfg.tc_flow == 'ground_truth':
            flow_dir = Path(raw_pairs.root) / 'flow' / raw_pairs.split
            if not flow_dir.is_dir():
                raise DatasetError('tc_flow ground_truth needs the flow files of the generator: '
                                   f'{flow_dir} does not exist')
            t = getattr(pairs, 'transform', None)
            if t is not None:
                self.flow_transform = FlowPairTransform(
                    t.crop_size, scale_range=t.scale_range, hflip=t.hflip,
                    color_jitter=t.color_jitter, generator=t.generator)

    def _ground_truth(self, raw: dict[str, Any], image_path: Path) -> dict[str, Any]:
        """The frame's ground-truth flow sample (frames, flow, valid), not yet augmented."""
        path = (Path(self.raw_pairs.root) / 'flow' / self.raw_pairs.split / image_path.parent.name
                / f"{raw['name']}{FLOW_SUFFIX}")
        h, w = raw['image'].shape[:2]
        flow, valid = read_flow_png(path, expected_size=(w, h))
        moving = (read_moving_png(path.with_name(f"{raw['name']}{MOVING_SUFFIX}"),
                                  expected_size=(w, h))
                  if self.cfg.loss_moving > 0 else np.zeros_like(valid))
        return {'prev': raw['prev'], 'cur': raw['image'], 'flow': flow, 'valid': valid,
                'moving': moving}

    def _augment(self, samples: Sequence[dict[str, Any]],
                 transforms: Optional[Sequence[Any]] = None) -> list[dict[str, Any]]:
        """Each sample through its transform (the pairs' by default), with the same random
        draws (the random state is replayed)."""
        transform = getattr(self.pairs, 'transform', None)
        if transform is None:
            return list(samples)
        transforms = transforms or [transform] * len(samples)
        gen = getattr(transform, 'generator', None)
        state = gen.get_state() if gen is not None else torch.get_rng_state()
        out = []
        for sample, t in zip(samples, transforms):
            if gen is not None:
                gen.set_state(state)
            else:
                torch.set_rng_state(state)
            out.append(t(sample))
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        raw = self.raw_pairs[index]
        _, image_path, prev_path, _ = self.raw_pairs.samples[index]
        older = _frame_before(Path(prev_path))
        pair_transform = getattr(self.pairs, 'transform', None)
        samples, transforms = [raw], [pair_transform]
        if self.cfg.use_flow and older is not None and older.is_file():
            samples.append({'image': raw['prev'], 'prev': read_rgb(older), 'label': raw['label'],
                            'name': raw['name']})
            transforms.append(pair_transform)
        ground_truth = self.cfg.tc_flow == 'ground_truth'
        if ground_truth:
            samples.append(self._ground_truth(raw, Path(image_path)))
            transforms.append(self.flow_transform)
        aug = self._augment(samples, transforms)
        image, prev, label = aug[0]['image'], aug[0]['prev'], aug[0]['label']
        if ground_truth:
            gt = aug.pop()
            fwd = torch.from_numpy(np.ascontiguousarray(gt['flow']))
            mask = torch.from_numpy(np.ascontiguousarray(gt['valid']))
        else:
            fwd = self.estimator()(prev, image).cpu().float()
            bwd = self.estimator()(image, prev).cpu().float()
            mask = flow_consistency_mask(fwd[None], bwd[None])[0]
        out: dict[str, Any] = {
            'image': normalize_image(image, self.cfg.mean, self.cfg.std),
            'label': torch.from_numpy(np.ascontiguousarray(label)).long(),
            'prev_image': normalize_image(prev, self.cfg.mean, self.cfg.std),
            'tc_flow': fwd, 'tc_mask': mask,
        }
        if self.cfg.loss_moving > 0:
            out['moving'] = torch.from_numpy(np.ascontiguousarray(gt['moving']))
        if self.cfg.use_flow:
            estimate = self.estimator()
            net = estimate(prev, image).cpu().float() if ground_truth else fwd
            out['flow'] = training_flow(net, self.cfg)
            if len(aug) > 1:
                out['prev_flow'] = training_flow(estimate(aug[1]['prev'], prev).cpu().float(),
                                                 self.cfg)
            else:
                out['prev_flow'] = torch.zeros_like(out['flow'])
                out['tc_mask'] = torch.zeros_like(mask)
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
    if cfg.loss_tc > 0:
        if not in_loader:
            raise ConfigError(f'loss_tc > 0 computes flow in the DataLoader; flow_method '
                              f'{cfg.flow_method!r} runs on {device} (use a CPU estimator)')
        train_set: FlowPairDataset = TemporalPairDataset(pairs, cfg, raw_pairs=raw)
    else:
        train_set = FlowPairDataset(pairs, cfg, with_flow=cfg.use_flow,
                                    flow_in_loader=in_loader, raw_pairs=raw)
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
