"""Helpers shared by the benchmark scripts: which model to run, and resident memory."""
from __future__ import annotations

import os
from pathlib import Path
import tempfile
from typing import Optional

from flow2seg_ros.classes import cityscapes_classes
from flow2seg_ros.weights import bundled_model_path, random_model, save_model


def model_file(weights: Optional[str], tmp: str, *, input_size: tuple[int, int] = (256, 512)
               ) -> tuple[Path, str]:
    """The model to run: ``weights``, else the bundled model, else a random lite model.

    Args:
        weights: a model file, or None.
        tmp: folder for a random model's file.
        input_size: network input (H, W) written in a random model's card.

    Returns:
        (path, what it is) for the report.
    """
    if weights:
        path = Path(weights)
        if not path.is_file():
            raise SystemExit(f'model file not found: {path}')
        return path, f'model {path}'
    bundled = bundled_model_path()
    if bundled.is_file():
        return bundled, f'bundled model {bundled.name}'
    model, card = random_model('lite', classes=cityscapes_classes(), input_size=input_size)
    path = Path(tmp) / 'random_lite.safetensors'
    save_model(model, path, card)
    return path, 'random lite model (no bundled model yet)'


def rss_bytes() -> int:
    """Resident set size of this process in bytes (Linux /proc)."""
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def new_tmp() -> tempfile.TemporaryDirectory:
    """A temporary folder for a benchmark run."""
    return tempfile.TemporaryDirectory(prefix='flow2seg_bench_')
