"""flow2seg-train-flow: train the learned flow network from a YAML config.

Usage::

    flow2seg-train-flow --config config/train_flow.yaml [--key value ...] [--resume CKPT]

Writes ``<output_dir>/flow.safetensors`` with its card (``flow.json``) and
``<output_dir>/checkpoint.safetensors`` (+ ``.json``) every ``checkpoint_every`` steps; the
schema is :class:`flow2seg_ros.flow.training.FlowTrainConfig`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from flow2seg_ros.cli import cli_main
from flow2seg_ros.flow.training import load_flow_config, train_flow
from flow2seg_ros.training.config import parse_overrides

__all__ = ['get_args_parser', 'main']


def get_args_parser() -> argparse.ArgumentParser:
    """``--config``, ``--resume``, ``--threads`` and ``--key value`` overrides of config keys."""
    parser = argparse.ArgumentParser(
        prog='flow2seg-train-flow', description='Train the learned optical flow network.',
        epilog='Any config key can be overridden: --steps 100 --output_dir runs/x')
    parser.add_argument('--config', default=None, help='YAML config (config/train_flow.yaml)')
    parser.add_argument('--resume', default=None, help='checkpoint .safetensors to continue from')
    parser.add_argument('--threads', type=int, default=None, help='torch threads')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``flow2seg-train-flow``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)

    def run() -> None:
        args, rest = get_args_parser().parse_known_args(argv)
        overrides = parse_overrides(rest)
        if args.threads is not None:
            overrides['threads'] = args.threads
        cfg = load_flow_config(args.config, overrides)
        train_flow(cfg, command=' '.join(['flow2seg-train-flow', *argv]), resume=args.resume)

    return cli_main('flow2seg-train-flow', run)


if __name__ == '__main__':
    sys.exit(main())
