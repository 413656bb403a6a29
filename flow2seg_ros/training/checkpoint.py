"""Training checkpoints: a safetensors file of tensors and a JSON sidecar; nothing is pickled.

Tensors: ``model.<name>``, ``optimizer.<param index>.<key>``, ``rng.torch`` (and ``rng.cuda``).
The sidecar ``<name>.json`` holds ``format`` (:data:`CHECKPOINT_FORMAT`), the step, epoch,
config, the optimizer's param groups and non-tensor state, the LR scheduler's state and any extra
fields (the loss history, images seen).
"""
from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any, Optional

import torch

from flow2seg_ros.tensorfile import read_safetensors, write_safetensors
from flow2seg_ros.training.config import TrainConfig
from flow2seg_ros.training.model import unwrap

__all__ = ['CHECKPOINT_FORMAT', 'load_checkpoint', 'save_checkpoint']

CHECKPOINT_FORMAT = 'flow2seg-checkpoint/1'


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
    for k, v in unwrap(model).state_dict().items():
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
    sidecar = path.with_suffix('.json')
    tmp_json = sidecar.with_name(sidecar.name + '.tmp')
    tmp_json.write_text(json.dumps(meta, indent=1, default=str))
    write_safetensors(path, tensors, metadata={'format': CHECKPOINT_FORMAT})
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
    tensors = read_safetensors(path)
    meta = json.loads(sidecar.read_text())
    if meta.get('format') != CHECKPOINT_FORMAT:
        raise ValueError(f'{sidecar}: not a {CHECKPOINT_FORMAT} sidecar '
                         f'(format {meta.get("format")!r})')
    state = {k[len('model.'):]: v for k, v in tensors.items() if k.startswith('model.')}
    unwrap(model).load_state_dict(state, strict=True)
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
