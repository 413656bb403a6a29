"""Evaluation reports: markdown, JSON and matplotlib figures (Agg backend, PNG files).

The functions here only lay out figures that were already computed; they compute no metric.
:func:`write_bag_report` and :func:`write_live_report` write the two reports of
``flow2seg-bag-eval`` (in-process scoring and live replay).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import cv2
import numpy as np

from flow2seg_ros.stats import percentile
from flow2seg_ros.visualize import contact_sheet

__all__ = ['fmt_ms', 'fmt_num', 'fmt_pct', 'markdown_table', 'plot_confusion', 'plot_latency',
           'plot_per_class_iou', 'plot_table', 'write_bag_report', 'write_json',
           'write_live_report', 'write_png']


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    return plt


def fmt_pct(x: Optional[float]) -> str:
    """A 0..1 fraction as a percentage with two decimals ('-' for None/nan)."""
    return '-' if x is None or (isinstance(x, float) and math.isnan(x)) else f'{100 * x:.2f}'


def fmt_ms(x: Optional[float]) -> str:
    """Milliseconds with two decimals ('-' for None)."""
    return '-' if x is None else f'{x:.2f}'


def fmt_num(x: Optional[float]) -> str:
    """A rate or count with one decimal ('-' for None)."""
    return '-' if x is None else f'{x:.1f}'


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
            v = percentile(total, q)
            ax.axvline(v, color='k', linestyle=style, label=f'p{q} {v:.1f} ms')
        ax.legend(fontsize='small')
    ax.set_xlabel(f'{total_key} (ms)')
    ax.set_ylabel('frames')
    ax.set_title(title)
    if stages:
        ax = axes[0, 1]
        qs = {q: [percentile(samples[s], q) for s in stages] for q in (50, 90, 99)}
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


# ----------------------------------------------------------------------------- bag reports
def _bag_figures(out: Path, data: dict[str, Any], header: Sequence[str],
                 rows: Sequence[Sequence[Any]], timings: Mapping[str, Sequence[float]],
                 montage: Sequence[Sequence[np.ndarray]],
                 class_names: Sequence[str]) -> dict[str, str]:
    """The in-process report's pictures; returns ``{name: file}`` of those written."""
    figures: dict[str, str] = {}
    plot_table(out / 'summary_table.png', header, rows, title='Summary')
    figures['summary_table'] = 'summary_table.png'
    if data.get('labels_topic') and data['frames']['labelled']:
        plot_per_class_iou(out / 'per_class_iou.png', data['heads'], class_names)
        figures['per_class_iou'] = 'per_class_iou.png'
        plot_confusion(out / 'confusion_fused.png', np.asarray(data['confusion_fused']),
                       class_names, title='Fused head: confusion (rows: truth, %)')
        figures['confusion_fused'] = 'confusion_fused.png'
    if timings.get('total'):
        plot_latency(out / 'latency.png', timings, title='Pipeline latency per frame')
        figures['latency'] = 'latency.png'
    if montage:
        write_png(out / 'montage.png', contact_sheet(montage, ['input', 'overlay', 'flow'],
                                                     tile_width=320))
        figures['montage'] = 'montage.png'
    return figures


def _bag_overview(data: dict[str, Any]) -> list[str]:
    """The report's opening lines: bag, model, frames, skips and throughput."""
    f, setup = data['frames'], data['setup']
    return [f"# flow2seg bag evaluation: `{Path(data['bag']).name}`", '',
            f"- bag: `{data['bag']}` ({data['storage']}), images `{data['image_topic']}` "
            f"({data['image_type']}), labels `{data['labels_topic'] or '-'}`",
            f"- model: {setup['weights']} ({setup['preset']}), input "
            f"{setup['input_size'][1]}x{setup['input_size'][0]}, flow "
            f"{setup['flow']['method']}/{setup['flow']['preset']}, device "
            f"{setup['device']}, {setup['torch_threads']} torch threads",
            f"- frames: {f['processed']} processed of {f['read']} read, {f['labelled']} "
            f"labelled, {f['labels_unmatched']} labels without an image; flow resets: "
            f"{f['resets'] or 'none'}",
            f"- skipped: {f['skipped'] or 'none'}",
            f"- throughput: {fmt_num(data['fps']['pipeline'])} frames/s (pipeline), "
            f"{fmt_num(data['fps']['wall'])} frames/s (wall, with decoding, scoring, writing)",
            '']


def _per_class_section(heads: Mapping[str, Any], class_names: Sequence[str]) -> list[str]:
    """Per-class IoU of every head (classes no head saw are left out) and the figures."""
    rows = [[n] + [fmt_pct(heads[h]['per_class_iou'].get(n)) for h in heads]
            for n in class_names
            if any(heads[h]['per_class_iou'].get(n) is not None for h in heads)]
    return ['## Per-class IoU (%)', '', markdown_table(['class'] + list(heads), rows), '',
            '![per-class IoU](per_class_iou.png)', '',
            '![confusion matrix of the fused head](confusion_fused.png)', '']


def write_bag_report(out: Path, data: dict[str, Any], *,
                     timings: Mapping[str, Sequence[float]],
                     montage: Sequence[Sequence[np.ndarray]],
                     class_names: Sequence[str]) -> None:
    """Write the in-process bag report: PNG figures, ``report.json`` and ``report.md``.

    Args:
        out: the report folder (exists).
        data: :func:`flow2seg_ros.bag_score.evaluate_bag`'s figures; ``figures`` is added.
        timings: ``{stage: [ms per frame]}`` (the latency figure).
        montage: rows of (input, overlay, flow) pictures.
        class_names: the model's class names in train-id order.
    """
    heads = data['heads']
    header = ['head', 'mIoU %', 'TC %', 'pixel acc %']
    rows = [[h, fmt_pct(r['miou']), fmt_pct(r['tc']), fmt_pct(r['pixel_accuracy'])]
            for h, r in heads.items()]
    figures = _bag_figures(out, data, header, rows, timings, montage, class_names)
    data['figures'] = figures
    write_json(out / 'report.json', data)

    md = _bag_overview(data) + ['## Summary', '', markdown_table(header, rows), '']
    if 'per_class_iou' in figures:
        md += _per_class_section(heads, class_names)
    md += ['## Latency (ms per frame)', '',
           markdown_table(['stage', 'p50', 'p90', 'p99', 'mean', 'max'],
                          [[s, fmt_ms(v['p50']), fmt_ms(v['p90']), fmt_ms(v['p99']),
                            fmt_ms(v['mean']), fmt_ms(v['max'])]
                           for s, v in data['latency_ms'].items()]), '']
    if 'latency' in figures:
        md += ['![latency](latency.png)', '']
    if 'montage' in figures:
        md += ['## Frames', '', '![input, overlay, flow](montage.png)', '']
    if 'output_bag' in data:
        ob = data['output_bag']
        md += ['## Output bag', '', f"`{ob['path']}` ({ob['storage']})", '',
               markdown_table(['topic', 'messages'], list(ob['topics'].items())), '']
    (out / 'report.md').write_text('\n'.join(md))


def write_live_report(out: Path, data: dict[str, Any], latencies: Sequence[float]) -> None:
    """Write the live replay report: the latency figure, ``report.json`` and ``report.md``.

    Args:
        out: the report folder (created).
        data: :func:`flow2seg_ros.bag_live.live_replay`'s figures; ``figures`` is added.
        latencies: end-to-end latency of every frame answered, in ms.
    """
    out.mkdir(parents=True, exist_ok=True)
    figures = {}
    if latencies:
        plot_latency(out / 'latency.png', {'end-to-end': latencies},
                     title='End-to-end latency (send -> labels received)',
                     total_key='end-to-end')
        figures['latency'] = 'latency.png'
    r = data['run']
    lat = r['latency_ms']
    header = ['sent', 'received', 'lost %', 'send rate Hz', 'p50 ms', 'p90 ms', 'p99 ms']
    row = [r['sent'], r['received'], fmt_pct(r['loss']), fmt_num(r['send_rate_hz']),
           fmt_ms(lat['p50']), fmt_ms(lat['p90']), fmt_ms(lat['p99'])]
    plot_table(out / 'summary_table.png', header, [row], title='Live replay')
    figures['summary_table'] = 'summary_table.png'
    data['figures'] = figures
    write_json(out / 'report.json', data)
    pacing = ('as fast as possible' if data['as_fast_as_possible']
              else f"{data['rate_scale']:g}x the recorded rate")
    md = [f"# flow2seg live replay: `{Path(data['bag']).name}`", '',
          f"- published `{data['publish_topic']}` ({data['image_type']}), best effort; "
          f"recorded `{data['labels_topic']}`",
          f"- pacing: {pacing} (recorded {fmt_num(data['recorded_rate_hz'])} Hz)",
          f"- DDS: {data['dds']}", '', '## End-to-end latency and loss', '',
          markdown_table(header, [row]), '']
    if 'latency' in figures:
        md += ['![latency](latency.png)', '']
    if 'sweep' in data:
        s = data['sweep']
        md += ['## Rate sweep', '',
               f"Highest input rate held with < {100 * s['max_loss']:.0f} % loss: "
               f"**{fmt_num(s['highest_rate_held_hz'])} Hz** ({s['window_s']:g} s windows)", '',
               markdown_table(['rate Hz', 'sent', 'received', 'lost %', 'p50 ms', 'p90 ms'],
                              [[f"{w['rate_hz']:.2f}", w['sent'], w['received'],
                                fmt_pct(w['loss']), fmt_ms(w['latency_ms']['p50']),
                                fmt_ms(w['latency_ms']['p90'])] for w in s['windows']]), '']
    (out / 'report.md').write_text('\n'.join(md))
