"""The report of ``make gpu-check``: the aims judged on the timed configurations, and the table.

Kept apart from :mod:`flow2seg_ros.gpu_check` (which measures) so that the judging and the
printing are tested on the CPU with made-up rows.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

__all__ = ['AIMS', 'check_aims', 'format_table', 'row', 'size_text']

#: The issue's aims: lite from 720p upload-to-outputs, paper fps, node share, precisions.
AIMS = {'lite_720p_ms': 3.0, 'paper_fps': 100.0, 'node_share_2048': 0.25,
        'low_precision_slack': 1.03}


def check_aims(configs: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's aims against the timed configs: the device path as the node runs it by
    default (CUDA graphs on), each aim on the best precision; fp16/bf16 against fp32 on every
    graphs-on row, with the eager rows' comparison (``cuda_graphs: false``) alongside."""
    def best(preset: str, network: Sequence[int], camera: Sequence[int]
             ) -> Optional[dict[str, Any]]:
        rows = [c for c in configs if c['preset'] == preset and c['graphs'] and
                c['network'] == list(network) and c['camera'] == list(camera) and
                c.get('device_path')]
        return min(rows, key=lambda c: c['median_ms']['process']) if rows else None

    aims: dict[str, Any] = {}
    lite = best('lite', (512, 256), (1280, 720))
    if lite:
        ms = lite['median_ms']['process']
        aims['lite 1280x720 upload->outputs <= 3 ms'] = {
            'value_ms': round(ms, 2), 'precision': lite['precision'],
            'met': ms <= AIMS['lite_720p_ms']}
    paper = best('paper', (1024, 512), (2048, 1024))
    if paper:
        aims['paper 1024x512 from 2048x1024 >= 100 fps'] = {
            'value_fps': round(paper['process_fps'], 1),
            'frame_fps': round(paper['frame_fps'], 1), 'precision': paper['precision'],
            'met': paper['process_fps'] >= AIMS['paper_fps']}
    for preset in ('lite', 'paper'):
        row = best(preset, (512, 256) if preset == 'lite' else (1024, 512), (2048, 1024))
        if row:
            aims[f'{preset}: node adds <= 25 % at 2048x1024'] = {
                'value': round(row['node_share'], 3),
                'met': row['node_share'] <= AIMS['node_share_2048']}

    def slower(graphs: bool) -> list[str]:
        slow = []
        for c in configs:
            if c['precision'] == 'fp32' or not c.get('device_path') or c['graphs'] != graphs:
                continue
            ref = [r for r in configs if r['precision'] == 'fp32' and r['preset'] == c['preset']
                   and r['network'] == c['network'] and r['camera'] == c['camera'] and
                   r['graphs'] == graphs and r.get('device_path')]
            if ref and c['median_ms']['process'] > AIMS['low_precision_slack'] * \
                    ref[0]['median_ms']['process']:
                slow.append(f"{c['preset']} {c['precision']} {size_text(c['network'])} from "
                            f"{size_text(c['camera'])}: {c['median_ms']['process']:.2f} vs "
                            f"fp32 {ref[0]['median_ms']['process']:.2f} ms")
        return slow

    if any(c['precision'] != 'fp32' and c.get('device_path') and c['graphs'] for c in configs):
        # judged as the node runs by default (CUDA graphs on); eager is reported beside it
        slow = slower(True)
        aims['fp16 and bf16 at least as fast as fp32 (3 % slack)'] = {
            'slower': slow, 'met': not slow,
            'eager_slower': slower(False)}  # cuda_graphs: false, not the default
    return aims


def size_text(wh: Sequence[int]) -> str:
    """``(W, H)`` -> ``'WxH'``."""
    return f'{wh[0]}x{wh[1]}'


_HEADER = (f"{'preset':<6}{'network':>10}{'camera':>10}{'prec':>6}{'graph':>6}{'n':>4}"
           f"{'frame':>8}{'fps':>7}{'process':>9}{'network':>9}{'flow':>7}{'node%':>7}"
           f"{'capt':>6}")


def _mode(c: dict[str, Any]) -> str:
    if not c.get('device_path'):
        return c.get('path', '-')  # 'host': CUDA network, resize and pictures on the host
    return 'on' if c['graphs'] else 'off'


def row(c: dict[str, Any]) -> str:
    m = c['median_ms']
    return (f"{c['preset']:<6}{size_text(c['network']):>10}{size_text(c['camera']):>10}"
            f"{c['precision']:>6}{_mode(c):>6}{c['frames_timed']:>4}"
            f"{m.get('frame', float('nan')):>8.2f}{c['frame_fps']:>7.0f}"
            f"{m.get('process', float('nan')):>9.2f}"
            f"{m.get('pipeline.network', float('nan')):>9.2f}"
            f"{m.get('pipeline.flow', float('nan')):>7.2f}{100 * c['node_share']:>6.1f}%"
            f"{c.get('graph_captures', '-')!s:>6}"
            + (f"  graph capture failed: {sorted(c['graph_failures'])}"
               if c.get('graph_failures') else ''))


def format_table(report: dict[str, Any]) -> str:
    """The one table printed at the end (configs, compile, aims, tests)."""
    env = report['environment']
    lines = [f"gpu-check on {env.get('gpu') or env['cpu_model']} ({env['device']}), torch "
             f"{env['torch']}, flow: {report.get('flow')}", _HEADER]
    lines += [row(c) for c in report['configs']]
    lines.append('ms medians; graph: on/off = device path with/without CUDA graphs, host = '
                 'network on CUDA with resize and pictures on the host, cpu = CPU path; frame = '
                 'message in -> 3 messages out; process = FramePipeline.process (upload -> '
                 'published outputs on the host); node% = message conversion + building / '
                 'frame; capt = CUDA graphs captured')
    comp = report.get('compile')
    if comp:
        if 'compiled_ms' in comp:
            compiled = (f'{comp["compiled_ms"]:.2f} ms (first call '
                        f'{comp["compile_first_call_s"]} s, {comp["recompiles"]} recompiles '
                        f'over the timed calls)')
        else:
            compiled = f'failed: {comp.get("compile_error")}'
        lines.append(f'torch.compile lite {comp["precision"]}: eager {comp["eager_ms"]:.2f} ms, '
                     f'CUDA graph {comp["graph_ms"]:.2f} ms, compiled {compiled}')
    chosen = {(c['preset'], size_text(c['network']), c['precision'],
               'graphs' if c['graphs'] else 'eager'): c['memory_format']
              for c in report['configs'] if c.get('memory_format')}
    for (preset, net, precision, mode), choice in chosen.items():
        lines.append(f'memory format chosen, {preset} {net} {precision} {mode}: '
                     f'{choice["format"]} '
                     + '(' + ', '.join(f'{k} {v:.2f} ms' for k, v in choice['ms'].items()) + ')')
    for net, times in report.get('formats', {}).items():
        lines.append(f'network alone as a CUDA graph, {net}: ' + ', '.join(
            f'{k} {v:.2f} ms' for k, v in times.items()))
    for frames, shares in report.get('agreement', {}).items():
        lines.append(f'labels equal to the CPU path, lite, {frames}: ' + ', '.join(
            f'{p} {100 * v:.3f} %' for p, v in shares.items()))
    for name, aim in report.get('aims', {}).items():
        lines.append(f"aim {'MET' if aim['met'] else 'NOT MET'}: {name}: "
                     + ', '.join(f'{k}={v}' for k, v in aim.items() if k != 'met'))
    for note in report.get('notes', []):
        lines.append(f'note: {note}')
    tests = report.get('tests')
    if tests:
        lines.append(f"tests ({tests['command']}): rc {tests['returncode']}, "
                     f"{tests['summary']}")
    return '\n'.join(lines)
