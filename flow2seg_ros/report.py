"""Evaluation reports: markdown, JSON and matplotlib figures (Agg backend, PNG files).

The functions here only lay out figures that were already computed; they compute no metric.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, Sequence

import cv2
import numpy as np

__all__ = ['fmt_ms', 'fmt_pct', 'markdown_table', 'percentiles', 'plot_confusion',
           'plot_latency', 'plot_per_class_iou', 'plot_table', 'write_json', 'write_png']


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def percentiles(values: Iterable[float]) -> dict[str, Optional[float]]:
    """``n``, ``mean``, ``p50``, ``p90``, ``p99``, ``max`` of a list of numbers (None when empty).

    Args:
        values: the samples (e.g. per-frame milliseconds).
    """
    a = np.asarray(list(values), np.float64)
    if a.size == 0:
        return {'n': 0, 'mean': None, 'p50': None, 'p90': None, 'p99': None, 'max': None}
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {'n': int(a.size), 'mean': float(a.mean()), 'p50': float(p50), 'p90': float(p90),
            'p99': float(p99), 'max': float(a.max())}


def fmt_pct(x: Optional[float]) -> str:
    """A 0..1 fraction as a percentage with two decimals ('-' for None/nan)."""
    return '-' if x is None or (isinstance(x, float) and math.isnan(x)) else f'{100 * x:.2f}'


def fmt_ms(x: Optional[float]) -> str:
    """Milliseconds with two decimals ('-' for None)."""
    return '-' if x is None else f'{x:.2f}'


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub markdown table.

    Args:
        header: column titles.
        rows: cells (converted with ``str``).
    """
    lines = ['| ' + ' | '.join(header) + ' |', '|' + '|'.join(' --- ' for _ in header) + '|']
    lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
    return '\n'.join(lines)


def write_json(path: str | Path, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON (nan and inf become null).

    Args:
        path: the file.
        data: JSON-serialisable mapping (numpy scalars and arrays allowed).
    """

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        if isinstance(v, np.ndarray):
            return clean(v.tolist())
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    Path(path).write_text(json.dumps(clean(dict(data)), indent=2) + '\n')


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 RGB picture as PNG.

    Args:
        path: the file.
        rgb: the picture.
    """
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f'could not write {path}')


def plot_per_class_iou(path: str | Path, heads: Mapping[str, Mapping[str, Any]],
                       names: Sequence[str], title: str = 'Per-class IoU') -> None:
    """Grouped bars: IoU (%) of every class, one bar per head.

    Args:
        path: PNG file.
        heads: ``{head: {'per_class_iou': {name: iou or None}, 'miou': ...}}``.
        names: class names in train-id order.
        title: figure title.
    """
    plt = _pyplot()
    x = np.arange(len(names))
    width = 0.8 / max(len(heads), 1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(names) + 2), 4.0))
    for k, (head, r) in enumerate(heads.items()):
        vals = [r['per_class_iou'].get(n) for n in names]
        ys = [0.0 if v is None else 100 * v for v in vals]
        miou = r.get('miou')
        label = f'{head} (mIoU {fmt_pct(miou)})'
        ax.bar(x + (k - (len(heads) - 1) / 2) * width, ys, width, label=label)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=45, ha='right')
    ax.set_ylabel('IoU (%)')
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.legend(fontsize='small')
    ax.grid(axis='y', alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_confusion(path: str | Path, matrix: np.ndarray, names: Sequence[str],
                   title: str = 'Confusion matrix (rows: truth, normalised)') -> None:
    """Row-normalised confusion matrix as a heat map.

    Args:
        path: PNG file.
        matrix: (C, C) counts, rows = ground truth.
        names: class names.
        title: figure title.
    """
    plt = _pyplot()
    m = np.asarray(matrix, np.float64)
    rows = m.sum(1, keepdims=True)
    norm = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    size = max(4.0, 0.45 * len(names) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(norm, vmin=0, vmax=1, cmap='Blues')
    ax.set_xticks(range(len(names)))
    ax.set_yticks(range(len(names)))
    ax.set_xticklabels(names, rotation=45, ha='right', fontsize='small')
    ax.set_yticklabels(names, fontsize='small')
    ax.set_xlabel('prediction')
    ax.set_ylabel('ground truth')
    if len(names) <= 20:
        for i in range(len(names)):
            for j in range(len(names)):
                if norm[i, j] >= 0.01:
                    ax.text(j, i, f'{100 * norm[i, j]:.0f}', ha='center', va='center',
                            fontsize=6, color='white' if norm[i, j] > 0.5 else 'black')
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_latency(path: str | Path, samples: Mapping[str, Sequence[float]],
                 title: str = 'Latency per frame', total_key: str = 'total') -> None:
    """Histogram of the total latency, and p50/p90/p99 of every stage.

    Args:
        path: PNG file.
        samples: ``{stage: [ms per frame]}``; ``total_key`` is the histogram's.
        title: figure title.
        total_key: which series the histogram shows.
    """
    plt = _pyplot()
    stages = [s for s in samples if s != total_key and len(samples[s])]
    fig, axes = plt.subplots(1, 2 if stages else 1, figsize=(10 if stages else 5.5, 3.8),
                             squeeze=False)
    ax = axes[0, 0]
    total = np.asarray(samples.get(total_key, []), np.float64)
    if total.size:
        ax.hist(total, bins=min(40, max(5, total.size // 2)), color='tab:blue', alpha=0.8)
        for q, style in ((50, '-'), (90, '--'), (99, ':')):
            v = float(np.percentile(total, q))
            ax.axvline(v, color='k', linestyle=style, label=f'p{q} {v:.1f} ms')
        ax.legend(fontsize='small')
    ax.set_xlabel(f'{total_key} (ms)')
    ax.set_ylabel('frames')
    ax.set_title(title)
    if stages:
        ax = axes[0, 1]
        qs = {q: [float(np.percentile(samples[s], q)) for s in stages] for q in (50, 90, 99)}
        y = np.arange(len(stages))
        for k, q in enumerate((50, 90, 99)):
            ax.barh(y + (k - 1) * 0.27, qs[q], 0.27, label=f'p{q}')
        ax.set_yticks(y)
        ax.set_yticklabels(stages)
        ax.invert_yaxis()
        ax.set_xlabel('ms')
        ax.set_title('per stage')
        ax.legend(fontsize='small')
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_table(path: str | Path, header: Sequence[str], rows: Sequence[Sequence[Any]],
               title: str = '') -> None:
    """A table rendered as a picture.

    Args:
        path: PNG file.
        header: column titles.
        rows: cells.
        title: figure title.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.3 * len(header)), 0.45 * (len(rows) + 1) + 0.8))
    ax.axis('off')
    table = ax.table(cellText=[[str(c) for c in r] for r in rows] or [['-'] * len(header)],
                     colLabels=list(header), loc='center', cellLoc='center')
    table.auto_set_font_size(False)
    table.set_fontsize(9)
    table.scale(1, 1.3)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
