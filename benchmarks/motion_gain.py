"""Does motion help? A fused model against its image head and an image-only model, per split.

Runs ``flow2seg-evaluate`` (the node's frame pipeline over whole sequences) for the fused model
(heads fused, image, flow) and for the image-only model on each held-out split, then prints one
table of mIoU and temporal consistency (TC) with the fused head's gains, the per-class IoU, and
the checks of the bundled model's bar: on every split fused mIoU >= both image-side figures + 2.5
points and fused TC >= both + 1.0; at least 17 classes in the ground truth, person IoU >= 40 %,
no class in the ground truth at 0. The fused head is what the node publishes, temporal smoothing
included (:mod:`flow2seg_ros.temporal`); the image head and the image-only model have no flow
to smooth along. Writes ``motion_gain.json`` and a per-class IoU plot
(``motion_gain.png``) into ``--out``; exit status 0 whether or not the bar is met.

    python benchmarks/motion_gain.py --data data/synthetic_v2 --splits val,test,fresh \
        --fused runs/v2_fused/model.safetensors --image-only runs/v2_image_only/model.safetensors \
        [--flow-method dis --flow-preset fast] [--temporal-smoothing 0.5] \
        [--temporal-smoothing-stride 0] [--threads 1] \
        [--out runs/motion_gain]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Optional, Sequence

from flow2seg_ros.evaluate import main as evaluate_main
from flow2seg_ros.temporal import DEFAULT_WEIGHT

#: The bar (points of %): fused over the image head and over the image-only model.
MIOU_GAIN = 2.5
TC_GAIN = 1.0
MIN_CLASSES = 17
PERSON_FLOOR = 0.40


def _evaluate(data: str, split: str, weights: str, out: Path, threads: int,
              flow: Sequence[str] = ()) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    status = evaluate_main(['--data', data, '--split', split, '--weights', weights,
                            '--out', str(out), '--threads', str(threads), '--no-progress',
                            *flow])
    if status != 0:
        raise SystemExit(f'flow2seg-evaluate failed on {split} with {weights}')
    return json.loads((out / 'metrics.json').read_text())


def _pts(v: Optional[float]) -> Optional[float]:
    return None if v is None else round(100 * v, 2)


def split_rows(fused: dict[str, Any], image_only: dict[str, Any]) -> dict[str, Any]:
    """One split's figures (in %), gains and checks from two ``metrics.json`` summaries."""
    heads = fused['heads']
    rows = {'fused': heads['fused'], 'image head': heads['image'], 'flow head': heads.get('flow'),
            'image-only': image_only['heads']['fused']}
    fig = {name: {'miou': _pts(r['miou']), 'tc': _pts(r['tc'])}
           for name, r in rows.items() if r is not None}
    f = fig['fused']
    gains = {ref: {'miou': round(f['miou'] - fig[ref]['miou'], 2),
                   'tc': round(f['tc'] - fig[ref]['tc'], 2)}
             for ref in ('image head', 'image-only')}
    per_class = {name: {k: _pts(r['per_class_iou'].get(name)) for k, r in rows.items()
                        if r is not None}
                 for name in heads['fused']['per_class_iou']}
    present = [n for n, v in per_class.items() if v['fused'] is not None]
    checks = {
        'miou_gain': all(g['miou'] >= MIOU_GAIN for g in gains.values()),
        'tc_gain': all(g['tc'] >= TC_GAIN for g in gains.values()),
        'classes_present': len(present),
        'person_fused': per_class.get('person', {}).get('fused'),
        'zero_classes': [n for n in present if per_class[n]['fused'] == 0.0],
    }
    checks['met'] = (checks['miou_gain'] and checks['tc_gain']
                     and len(present) >= MIN_CLASSES and not checks['zero_classes']
                     and (checks['person_fused'] or 0) >= 100 * PERSON_FLOOR)
    return {'figures': fig, 'gains': gains, 'per_class_iou': per_class, 'checks': checks}


def format_table(report: dict[str, Any]) -> str:
    """Text tables: per split mIoU / TC per model and the fused gains, then per-class IoU."""
    lines = [f'{"split":<8} {"model":<12} {"mIoU":>7} {"TC":>7}']
    for split, r in report['splits'].items():
        for name, v in r['figures'].items():
            lines.append(f'{split:<8} {name:<12} {v["miou"]:7.2f} {v["tc"]:7.2f}')
        for ref, g in r['gains'].items():
            lines.append(f'{split:<8} {"fused-" + ref:<12} {g["miou"]:+7.2f} {g["tc"]:+7.2f}')
        c = r['checks']
        lines.append(f'{split:<8} bar met: {c["met"]} (mIoU gain {c["miou_gain"]}, TC gain '
                     f'{c["tc_gain"]}, {c["classes_present"]} classes, person '
                     f'{c["person_fused"]}, at 0: {c["zero_classes"] or "none"})')
    for split, r in report['splits'].items():
        cols = list(next(iter(r['per_class_iou'].values())))
        lines += ['', f'per-class IoU (%), {split}', f'{"class":<14}'
                  + ''.join(f'{c:>12}' for c in cols)]
        for name, v in r['per_class_iou'].items():
            if all(x is None for x in v.values()):
                continue
            lines.append(f'{name:<14}' + ''.join(
                f'{"-":>12}' if v[c] is None else f'{v[c]:12.2f}' for c in cols))
    return '\n'.join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Per-class IoU of the fused head, its image head and the image-only model, one panel a
    split."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    import numpy as np

    splits = list(report['splits'])
    fig, axes = plt.subplots(len(splits), 1, figsize=(12, 3.2 * len(splits)), squeeze=False)
    for ax, split in zip(axes[:, 0], splits):
        per = report['splits'][split]['per_class_iou']
        names = [n for n, v in per.items() if v['fused'] is not None]
        x = np.arange(len(names))
        for i, model in enumerate(('fused', 'image head', 'image-only')):
            ax.bar(x + (i - 1) * 0.27, [per[n].get(model) or 0 for n in names], 0.27,
                   label=model)
        ax.set_xticks(x, names, rotation=35, ha='right', fontsize=8)
        ax.set_ylabel('IoU (%)')
        ax.set_ylim(0, 100)
        ax.set_title(f'{split}: per-class IoU')
        ax.legend(fontsize=8, ncol=3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    p.add_argument('--data', required=True, help='dataset root (Cityscapes layout)')
    p.add_argument('--splits', default='val,test', help='comma-separated held-out splits')
    p.add_argument('--fused', required=True, help='the fused model (.safetensors)')
    p.add_argument('--image-only', required=True, help='the image-only model (.safetensors)')
    p.add_argument('--flow-method', default='',
                   help="the fused model's flow (default: its card's)")
    p.add_argument('--flow-preset', default='', help='flow preset (with --flow-method)')
    p.add_argument('--temporal-smoothing', type=float, default=DEFAULT_WEIGHT, metavar='W',
                   help="the fused model's temporal smoothing (0 = off; default "
                        f'{DEFAULT_WEIGHT}); the image-only model has no flow to smooth along')
    p.add_argument('--temporal-smoothing-stride', type=int, default=0, metavar='S',
                   help="network pixels per cell of the smoothing's grid (0 = the logits')")
    p.add_argument('--threads', type=int, default=1, help='torch / ONNX Runtime threads')
    p.add_argument('--out', default='runs/motion_gain', help='folder for the reports')
    args = p.parse_args(argv)
    for path in (args.fused, args.image_only):
        if not Path(path).is_file():
            raise SystemExit(f'model file not found: {path}')
    out = Path(args.out)
    report: dict[str, Any] = {'data': args.data, 'fused': args.fused,
                              'image_only': args.image_only, 'flow': args.flow_method
                              and f'{args.flow_method}/{args.flow_preset}',
                              'temporal_smoothing': args.temporal_smoothing,
                              'temporal_smoothing_stride': args.temporal_smoothing_stride,
                              'splits': {}}
    for split in [s for s in args.splits.split(',') if s]:
        flow = (['--flow-method', args.flow_method, '--flow-preset', args.flow_preset]
                if args.flow_method else [])
        flow += ['--temporal-smoothing', str(args.temporal_smoothing),
                 '--temporal-smoothing-stride', str(args.temporal_smoothing_stride)]
        fused = _evaluate(args.data, split, args.fused, out / split / 'fused', args.threads, flow)
        image_only = _evaluate(args.data, split, args.image_only, out / split / 'image_only',
                               args.threads)
        report['splits'][split] = split_rows(fused, image_only)
        report['splits'][split]['sequences'] = fused['sequences']
    report['met'] = all(r['checks']['met'] for r in report['splits'].values())
    print(format_table(report))
    out.mkdir(parents=True, exist_ok=True)
    (out / 'motion_gain.json').write_text(json.dumps(report, indent=2) + '\n')
    plot(report, out / 'motion_gain.png')
    print(f'wrote {out / "motion_gain.json"} and {out / "motion_gain.png"}')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
