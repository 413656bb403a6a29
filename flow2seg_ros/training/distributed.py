"""One process, one GPU, or DDP under ``torchrun`` (gloo on CPU, nccl on CUDA).

The device comes from the config's ``device`` (:func:`flow2seg_ros.devices.resolve_device`);
under torchrun each process takes ``cuda:LOCAL_RANK``. Only rank 0 writes files.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from flow2seg_ros.devices import resolve_device
from flow2seg_ros.training.config import ConfigError, TrainConfig

__all__ = ['finish_distributed', 'init_distributed', 'wrap_model']


def init_distributed(cfg: TrainConfig) -> tuple[int, int, torch.device]:
    """Set up DDP from torchrun's environment; returns (rank, world size, device).

    Args:
        cfg: the training config (device).

    Raises:
        ConfigError: the device setting is invalid or names a CUDA device that is not there.
    """
    world = int(os.environ.get('WORLD_SIZE', '1'))
    rank = int(os.environ.get('RANK', '0'))
    local = int(os.environ.get('LOCAL_RANK', '0'))
    try:
        wanted = resolve_device(cfg.device)
    except ValueError as exc:
        raise ConfigError(f'device: {exc}') from None
    if world > 1:
        if wanted.type == 'cuda':
            device = torch.device('cuda', local)
            torch.cuda.set_device(device)
            backend = 'nccl'
        else:
            device = torch.device('cpu')
            backend = 'gloo'
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, rank=rank, world_size=world)
    else:
        device = wanted
        if device.type == 'cuda' and device.index is not None:
            torch.cuda.set_device(device)
    return rank, world, device


def wrap_model(model: torch.nn.Module, device: torch.device, world: int) -> torch.nn.Module:
    """What the training steps call: the model itself, or its DDP wrapper under torchrun.

    Args:
        model: the model, on ``device``.
        device: this process's device.
        world: number of processes.
    """
    if world <= 1:
        return model
    kwargs = {'device_ids': [device.index]} if device.type == 'cuda' else {}
    return torch.nn.parallel.DistributedDataParallel(model, **kwargs)


def finish_distributed(world: int) -> None:
    """Wait for every process and tear the process group down (nothing for one process).

    Args:
        world: number of processes.
    """
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
