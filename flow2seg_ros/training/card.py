"""The trained model's file: weights and a model card recording how it was trained.

The card's ``training`` entry holds the command, the full config, seed, steps, loss weights,
images seen, batch size, processes, final loss, wall time and the machine; ``metrics`` holds the
training-time validation (:func:`flow2seg_ros.training.loop.held_out`).
"""
from __future__ import annotations

import dataclasses
import datetime
import os
from pathlib import Path
import platform
import socket
from typing import Any

import torch

from flow2seg_ros.classes import ClassSet
from flow2seg_ros.sequences import dataset_scenes
from flow2seg_ros.training.config import TrainConfig
from flow2seg_ros.training.loop import TrainState
from flow2seg_ros.weights import make_card, save_model

__all__ = ['machine_info', 'training_record', 'write_model']


def machine_info() -> dict[str, Any]:
    """Host, platform, Python, torch, CPUs, torch threads and the GPU (when there is one)."""
    info = {'host': socket.gethostname(), 'platform': platform.platform(),
            'python': platform.python_version(), 'torch': torch.__version__,
            'cpus': os.cpu_count(), 'threads': torch.get_num_threads()}
    if torch.cuda.is_available():
        info['gpu'] = torch.cuda.get_device_name(0)
    return info


def training_record(cfg: TrainConfig, *, command: str, state: TrainState, wall: float,
                    world: int, loss: dict[str, float]) -> dict[str, Any]:
    """The card's ``training`` entry.

    Args:
        cfg: the training config.
        command: the command line that trained the model.
        state: where training ended.
        wall: wall time of the run in seconds.
        world: number of processes.
        loss: the loss weights (``alpha``, ``beta``).
    """
    return {
        'command': command,
        'config': dataclasses.asdict(cfg),
        'scenes': dataset_scenes(cfg.data_root, cfg.train_split),
        'seed': cfg.seed,
        'steps': state.step,
        'loss': loss,
        'images_seen': state.images,
        'batch_size_total': cfg.batch_size * world,
        'processes': world,
        'final_loss': state.final_loss(),
        'wall_time_s': round(wall, 1),
        'finished': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
        'machine': machine_info(),
    }


def write_model(path: Path, model: torch.nn.Module, cfg: TrainConfig, classes: ClassSet, *,
                training: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Save the model with its card (``weights.save_model``): input size, normalisation and
    the flow estimator and scale the node must use, from the config.

    Args:
        path: the .safetensors file (the card goes beside it).
        model: the trained model (unwrapped).
        cfg: the training config.
        classes: the class set.
        training: :func:`training_record`'s entry.
        metrics: the training-time validation (may be empty).
    """
    card = make_card(model, classes, input_size=cfg.input_size, mean=cfg.mean, std=cfg.std,
                     flow_method=cfg.flow_method, flow_preset=cfg.flow_preset,
                     flow_scale=cfg.flow_scale, training=training, metrics=metrics)
    save_model(model, path, card)
