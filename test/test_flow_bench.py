"""flow2seg-flow-bench and the flow error measures it reports."""
import json
from pathlib import Path

import numpy as np
import pytest

from flow2seg_ros.data.synth import generate
from flow2seg_ros.flow.errors import flow_errors, FlowErrors
from flow2seg_ros.flow_bench import main, parse_methods


@pytest.fixture(scope='module')
def flowtest(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp('flowdata')
    generate(root, sequences=2, frames=3, size=(128, 64), seed=11, split='flowtest',
             annotate='last', progress=False)
    return root


def test_epe_and_kitti_outliers_by_region() -> None:
    truth = np.zeros((2, 4, 4), np.float32)
    truth[0, :, 2:] = 100.0  # right half moves 100 px: 5 % of it is 5 px
    pred = truth.copy()
    pred[0, 0, :] += 4.0  # top row: 4 px off everywhere
    valid = np.ones((4, 4), bool)
    valid[3, 3] = False
    epe, out = flow_errors(pred, truth, valid)
    assert epe.shape == (15,) and np.isclose(epe.sum(), 16.0)
    # 4 px > 3 px is an outlier where the truth is 0 (4 > 0), not where it is 100 (4 < 5)
    assert out.sum() == 2
    moving = np.zeros((4, 4), bool)
    moving[:, 2:] = True
    acc = FlowErrors()
    acc.update(pred, truth, valid, moving)
    s = acc.summary()
    assert s['pixels_all'] == 15 and s['pixels_moving'] == 7 and s['pixels_static'] == 8
    assert np.isclose(s['epe_moving'], 8.0 / 7, atol=1e-4)
    assert np.isclose(s['fl_static'], 100.0 * 2 / 8) and s['fl_moving'] == 0.0
    with pytest.raises(ValueError, match='shapes differ'):
        flow_errors(pred[:, :2], truth, valid)


def test_benchmark_scores_and_times_every_method_in_one_run(
        flowtest: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / 'bench.json'
    code = main(['--data', str(flowtest), '--split', 'flowtest', '--methods',
                 'dis/ultrafast,dis/medium,learned,raft_small', '--json', str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report['pairs'] == 4 and report['sequences'] == 2 and report['size_wh'] == [128, 64]
    assert set(report['methods']) == {'dis/ultrafast', 'dis/medium', 'learned'}
    assert report['skipped'] == ['raft_small']  # no weights given: nothing downloads
    for row in report['methods'].values():
        for region in ('all', 'static'):
            assert 0 <= row[f'epe_{region}'] < 50 and 0 <= row[f'fl_{region}'] <= 100
        assert row['pixels_all'] == row['pixels_moving'] + row['pixels_static'] > 0
        assert row['time_ms']['n'] == 4 and row['time_ms']['p50'] > 0
    # The methods really differ (each is scored on its own output).
    assert len({row['epe_all'] for row in report['methods'].values()}) == 3
    table = capsys.readouterr().out
    assert 'dis/medium' in table and 'learned' in table and 'EPE moving' in table


def test_bad_arguments_give_one_line_and_status_2(flowtest: Path, capsys) -> None:
    assert main(['--data', str(flowtest), '--split', 'flowtest', '--methods', 'magic']) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('flow2seg-flow-bench: error:') and 'magic' in err
    assert main(['--data', str(flowtest), '--split', 'nosuch']) == 2
    err = capsys.readouterr().err.strip()
    assert 'nosuch' in err and len(err.splitlines()) == 1
    assert parse_methods('dis/fast, learned') == [('dis', 'fast'), ('learned', '')]


def test_pipeline_timing_runs_the_frame_pipeline_with_each_flow(flowtest: Path, tmp_path: Path,
                                                                capsys) -> None:
    out = tmp_path / 'bench.json'
    assert main(['--data', str(flowtest), '--split', 'flowtest', '--methods', 'dis/ultrafast',
                 '--pipeline', 'bundled', '--pipeline-methods', 'dis/ultrafast,learned',
                 '--max-pairs', '3', '--json', str(out)]) == 0
    frames = json.loads(out.read_text())['pipeline']['frames']
    assert set(frames) == {'dis/ultrafast', 'learned'}
    for row in frames.values():
        assert row['time_ms']['n'] == 2 and row['fps_p50'] > 0  # the first pair warms up
    assert 'pipeline with learned' in capsys.readouterr().out
