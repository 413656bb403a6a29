"""flow2seg-train: train a Flow2Seg model (or its image-only baseline) from a YAML config.

Usage::

    flow2seg-train --config config/train_synthetic.yaml [--key value ...] [--resume CKPT]
    torchrun --nproc_per_node 8 -m flow2seg_ros.train --config config/train_cityscapes_paper.yaml

Laid out like torchvision's reference scripts: ``get_args_parser()`` -> ``main(args)`` over the
pieces in :mod:`flow2seg_ros.training` (config schema, samples and flow cache, model and
optimizer, checkpoints, the loop with ``train_one_epoch`` and ``evaluate``, DDP set-up, the model
card). The budget is counted in optimisation steps, not epochs, so a flow model and its
image-only baseline (``use_flow: false``) see exactly as many batches. The flow the network
trains on comes from the estimator and fixed scale the node uses (recorded in the model card),
computed on the augmented frames, as the node would see them.

Checkpoints are safetensors (model, optimizer tensors and the RNG state) with a JSON sidecar
(step, epoch, config, optimizer hyper-parameters, LR schedule); nothing is ever pickled. One
process, one GPU or DDP under ``torchrun`` (gloo on CPU, nccl on CUDA); only rank 0 writes.
"""
from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
import random
import sys
import time
from typing import Any, Sequence

import numpy as np
import torch
import yaml

from flow2seg_ros.cli import cli_main
from flow2seg_ros.training.card import training_record, write_model
from flow2seg_ros.training.checkpoint import load_checkpoint, save_checkpoint
from flow2seg_ros.training.config import (
    ConfigError, load_classes, load_config, parse_overrides, TrainConfig)
from flow2seg_ros.training.dataset import make_train_set
from flow2seg_ros.training.distributed import finish_distributed, init_distributed, wrap_model
from flow2seg_ros.training.loop import fit, format_metrics, held_out, TrainState
from flow2seg_ros.training.model import (
    build_model_from_config, make_criterion, make_optimizer, make_scheduler)

__all__ = ['ConfigError', 'TrainConfig', 'get_args_parser', 'main', 'train_model']

PROG = 'flow2seg-train'


def get_args_parser(add_help: bool = True) -> argparse.ArgumentParser:
    """The command line: ``--config``, ``--resume``, ``--threads`` and ``--key value`` overrides.

    Args:
        add_help: add ``-h/--help``.
    """
    parser = argparse.ArgumentParser(
        prog=PROG,
        description='Train Flow2Seg. Any config key can be overridden with --key value '
                    '(values are YAML, e.g. --input_size "[256, 512]").',
        add_help=add_help)
    parser.add_argument('--config', required=True, help='training config YAML')
    parser.add_argument('--resume', default='', help='checkpoint .safetensors to resume from')
    parser.add_argument('--threads', type=int, default=None,
                        help='torch threads (overrides the config key threads)')
    return parser


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """Entry point of ``flow2seg-train``: train as configured; returns the exit status.

    Bad input (a missing or invalid config, an unknown key, a missing dataset, an unusable
    weights file) prints ``flow2seg-train: error: <message>`` to stderr and returns 2.

    Args:
        args: parsed arguments (``get_args_parser()``; an ``overrides`` dict may be added), a
            list of command-line tokens, or None for ``sys.argv[1:]``.
    """
    def run() -> None:
        train_model(args)

    return cli_main(PROG, run)


def _parse(args: argparse.Namespace | Sequence[str] | None
           ) -> tuple[argparse.Namespace, TrainConfig, str]:
    """The parsed arguments, the config they name (with overrides) and the command to record."""
    argv = list(sys.argv[1:]) if args is None else args
    if isinstance(argv, argparse.Namespace):
        parsed = argv
        command = 'flow2seg_ros.train.train_model(' + repr(vars(argv)) + ')'
    else:
        parsed, rest = get_args_parser().parse_known_args(argv)
        parsed.overrides = parse_overrides(rest)
        command = ' '.join([PROG, *argv])
    overrides = dict(getattr(parsed, 'overrides', {}) or {})
    if parsed.threads is not None:
        overrides['threads'] = parsed.threads
    return parsed, load_config(parsed.config, overrides), command


def _seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def train_model(args: argparse.Namespace | Sequence[str] | None = None) -> dict[str, Any]:
    """Train as configured; returns a summary (step, losses, checkpoint and model paths, metrics).

    Args:
        args: as for :func:`main`.
    """
    args, cfg, command = _parse(args)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    rank, world, device = init_distributed(cfg)
    is_main = rank == 0
    _seed(cfg.seed)
    t_start = time.time()

    classes = load_classes(cfg.classes)
    train_set, estimator = make_train_set(cfg, classes, device, world)
    model = build_model_from_config(cfg, classes).to(device)
    if world > 1 and cfg.sync_bn and device.type == 'cuda':
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    criterion = make_criterion(cfg, classes)
    optimizer = make_optimizer(cfg, model)
    scheduler = make_scheduler(cfg, optimizer)
    scaler = torch.amp.GradScaler('cuda') if cfg.amp and device.type == 'cuda' else None
    state = TrainState()
    if args.resume:
        state = TrainState.from_checkpoint(
            load_checkpoint(args.resume, model=model, optimizer=optimizer, scheduler=scheduler))
    net = wrap_model(model, device, world)

    out_dir = Path(cfg.output_dir)
    ckpt_path = out_dir / 'checkpoint.safetensors'
    if is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / 'config.yaml').write_text(yaml.safe_dump(dataclasses.asdict(cfg),
                                                            sort_keys=False))

    def checkpoint(st: TrainState) -> None:
        if is_main:
            save_checkpoint(ckpt_path, model=model, optimizer=optimizer, scheduler=scheduler,
                            step=st.step, epoch=st.epoch, cfg=cfg, extra=st.checkpoint_extra())

    fit(net, criterion, optimizer, scheduler, train_set, device, state, cfg,
        estimator=estimator, scaler=scaler, rank=rank, world_size=world, checkpoint=checkpoint)
    checkpoint(state)
    wall = time.time() - t_start

    summary: dict[str, Any] = {'step': state.step, 'losses': state.losses,
                               'checkpoint': str(ckpt_path), 'wall_time_s': wall}
    if state.step < cfg.steps:  # stopped early (stop_at): resume later with --resume
        finish_distributed(world)
        return summary
    metrics: dict[str, Any] = {}
    if is_main and cfg.val_split:
        metrics = held_out(cfg, model, classes, device, estimator)
    summary['metrics'] = metrics
    if is_main:
        model_path = out_dir / 'model.safetensors'
        training = training_record(cfg, command=command, state=state, wall=wall, world=world,
                                   loss={'alpha': criterion.alpha, 'beta': criterion.beta})
        write_model(model_path, model, cfg, classes, training=training, metrics=metrics)
        summary['model'] = str(model_path)
        if metrics:
            print(format_metrics(metrics))
    finish_distributed(world)
    return summary


if __name__ == '__main__':
    raise SystemExit(main())
