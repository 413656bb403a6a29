"""flow2seg-evaluate: scores per head, labelId PNGs that cityscapesscripts agrees with, errors."""
import json
import math
from pathlib import Path
import re

import cv2
import numpy as np
import pytest
import yaml

from flow2seg_ros import evaluate, train
from flow2seg_ros.classes import cityscapes_classes
from flow2seg_ros.data.synth import generate

TINY = {'widths': [8, 8, 16, 16], 'flow_widths': [4, 4, 8, 8], 'ppm_channels': 8,
        'fusion_channels': 8}


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
    """A tiny dataset (val: 2 sequences x 3 frames, all annotated) and a briefly trained model."""
    root = tmp_path_factory.mktemp('evaldata')
    generate(root, sequences=2, frames=3, size=(128, 64), seed=3, split='train', progress=False)
    generate(root, sequences=2, frames=3, size=(128, 64), seed=4, split='val', progress=False)
    cfg = root / 'train.yaml'
    cfg.write_text(yaml.safe_dump({
        'data_root': str(root), 'preset': 'lite', 'model_kwargs': TINY, 'input_size': [64, 128],
        'crop_size': [64, 128], 'batch_size': 2, 'workers': 0, 'optimizer': 'adamw', 'lr': 0.01,
        'steps': 12, 'threads': 1, 'device': 'cpu', 'output_dir': str(root / 'run'),
        'checkpoint_every': 0, 'val_split': '', 'progress': False}))
    out = train.train_model(['--config', str(cfg)])
    return root, Path(out['model'])


def run_cityscapes_evaluator(gt_files, pred_files):
    """cityscapesscripts' official pixel-level evaluation on explicit file lists."""
    from cityscapesscripts.evaluation import evalPixelLevelSemanticLabeling as cs

    args = cs.args
    args.evalInstLevelScore = False  # no *_instanceIds.png in this dataset
    args.evalPixelAccuracy = False
    args.JSONOutput = False
    args.quiet = True
    return cs.evaluateImgLists([str(p) for p in pred_files], [str(g) for g in gt_files], args)


def test_evaluate_matches_cityscapesscripts(tmp_path, trained, capsys):
    root, model = trained
    labels_dir, out_dir = tmp_path / 'pred', tmp_path / 'out'
    assert evaluate.main(['--data', str(root), '--split', 'val', '--weights', str(model),
                          '--out', str(out_dir), '--write-label-ids', str(labels_dir),
                          '--no-progress', '--threads', '1']) == 0
    printed = capsys.readouterr().out
    assert 'mIoU' in printed and 'TC' in printed and 'per-class IoU' in printed
    summary = json.loads((out_dir / 'metrics.json').read_text())
    assert summary['sequences'] == 2 and summary['frames'] == 6
    assert summary['labelled_frames'] == 6
    assert summary['setup']['temporal_smoothing'] == 0.5  # the default
    card = json.loads(model.with_suffix('.json').read_text())['flow']
    # the flow the pipeline ran (the card's, here not a mix)
    assert summary['setup']['flow']['method'] == card['method']
    heads = summary['heads']
    assert set(heads) == {'fused', 'image', 'flow'}
    # 2 sequences x 2 consecutive pairs; the flow head has no output on first frames
    assert heads['fused']['tc_pairs'] == 4 and heads['flow']['tc_pairs'] == 2
    for h in heads.values():
        assert 0.0 <= h['miou'] <= 1.0 and 0.0 <= h['pixel_accuracy'] <= 1.0

    gt = sorted((root / 'gtFine' / 'val').glob('*/*_gtFine_labelIds.png'))
    preds = [labels_dir / g.parent.name / evaluate.prediction_name(g) for g in gt]
    assert len(gt) == 6 and all(p.is_file() for p in preds)
    assert summary['written'] == 6
    # predictions are label ids (not train ids) of the 19 evaluated classes
    valid_ids = set(cityscapes_classes().label_ids)
    for p in preds:
        assert set(np.unique(cv2.imread(str(p), cv2.IMREAD_UNCHANGED))) <= valid_ids

    result = run_cityscapes_evaluator(gt, preds)
    # Like with like: cityscapesscripts' IoU of a class is nan when it is ignored in evaluation
    # (void label ids) or absent from both ground truth and prediction (tp + fp + fn == 0), and
    # its "Score Average" averages only the classes that are not nan. HeadsEvaluator's mIoU is
    # the same quantity: the mean over the 19 classes that appear in truth or prediction (union
    # > 0), with void ground truth skipped. So per-class IoUs must agree class by class
    # (including which are nan) and the averages must agree.
    ours = heads['fused']['per_class_iou']
    theirs = result['classScores']
    present = 0
    for name, v in ours.items():
        t = theirs[name]
        if v is None:
            assert math.isnan(t), name
        else:
            present += 1
            assert v == pytest.approx(t, abs=1e-6), name
    assert present >= 3  # the comparison covers several classes
    cs_avg = np.nanmean([theirs[n] for n in ours])
    assert heads['fused']['miou'] == pytest.approx(cs_avg, abs=1e-6)
    assert result['averageScoreClasses'] == pytest.approx(cs_avg, abs=1e-6)


def test_max_sequences_and_image_only_model(tmp_path, trained):
    root, _ = trained
    cfg = tmp_path / 'img.yaml'
    cfg.write_text(yaml.safe_dump({
        'data_root': str(root), 'preset': 'lite', 'model_kwargs': TINY, 'use_flow': False,
        'input_size': [64, 128], 'crop_size': [64, 128], 'batch_size': 2, 'workers': 0,
        'steps': 1, 'threads': 1, 'device': 'cpu', 'output_dir': str(tmp_path / 'run'),
        'checkpoint_every': 0, 'val_split': '', 'progress': False}))
    model = train.train_model(['--config', str(cfg)])['model']
    assert evaluate.main(['--data', str(root), '--weights', model, '--max-sequences', '1',
                          '--out', str(tmp_path / 'o'), '--no-progress']) == 0
    summary = json.loads((tmp_path / 'o' / 'metrics.json').read_text())
    assert summary['sequences'] == 1 and summary['frames'] == 3
    assert set(summary['heads']) == {'fused', 'image'}  # no flow path, no flow head


def test_segment_every_drops_frames_as_an_overloaded_node_does(tmp_path, trained):
    root, model = trained
    from flow2seg_ros.pipeline import FramePipeline, PipelineConfig
    pipeline = FramePipeline(PipelineConfig(weights=str(model), device='cpu', threads=1))
    calls = []
    process = pipeline.process

    def recording(rgb, stamp, **kw):
        calls.append((rgb.copy(), stamp, kw.get('prev')))
        return process(rgb, stamp, **kw)

    pipeline.process = recording
    dataset = evaluate.find_sequences(root, 'val', pipeline.classes)
    seq = list(dataset)[0]
    summary = evaluate.evaluate_sequences(pipeline, dataset, max_sequences=1, fps=10.0,
                                          progress=False, segment_every=2)
    # frames 0 and 2 of the 3 segmented and scored; frame 2's flow goes to frame 1 (received,
    # dropped), frame 0 has none
    assert summary['frames'] == 2 and [c[1] for c in calls] == [0.0, 0.2]
    assert calls[0][2] is None
    prev_rgb, prev_stamp = calls[1][2]
    assert prev_stamp == pytest.approx(0.1)
    np.testing.assert_array_equal(prev_rgb, dataset.read_image(seq.images[1]))
    np.testing.assert_array_equal(calls[1][0], dataset.read_image(seq.images[2]))
    assert evaluate.main(['--data', str(root), '--weights', str(model), '--segment-every', '2',
                          '--out', str(tmp_path / 'o'), '--no-progress']) == 0
    summary = json.loads((tmp_path / 'o' / 'metrics.json').read_text())
    assert summary['frames'] == 4 and summary['setup']['segment_every'] == 2
    with pytest.raises(ValueError, match='segment_every must be >= 1, got 0'):
        evaluate.evaluate_sequences(pipeline, dataset, segment_every=0, progress=False)


def _error(capsys):
    """stderr of a main() that failed cleanly: the tool's error line, no traceback."""
    err = capsys.readouterr().err
    assert err.startswith('flow2seg-evaluate: error: '), err
    assert 'Traceback' not in err
    return err


def test_missing_dataset_folder_and_split(tmp_path, tiny_model_file, capsys):
    missing = tmp_path / 'no_such_dataset'
    argv = ['--data', str(missing), '--weights', str(tiny_model_file), '--no-progress']
    with pytest.raises(FileNotFoundError, match='no_such_dataset'):
        evaluate.run(evaluate.get_args_parser().parse_args(argv))
    assert evaluate.main(argv) == 2
    assert f'dataset folder not found: {missing}' in _error(capsys)
    (tmp_path / 'empty').mkdir()
    argv = ['--data', str(tmp_path / 'empty'), '--split', 'test', '--weights',
            str(tiny_model_file), '--no-progress']
    with pytest.raises(ValueError, match="split 'test' not found: .*empty"):
        evaluate.run(evaluate.get_args_parser().parse_args(argv))
    assert evaluate.main(argv) == 2
    assert re.search(r"split 'test' not found: .*empty", _error(capsys))


def test_missing_or_invalid_weights_file(tmp_path, capsys):
    (tmp_path / 'data').mkdir()
    missing = tmp_path / 'none.safetensors'
    assert evaluate.main(['--data', str(tmp_path / 'data'), '--weights', str(missing)]) == 2
    assert f'weights file not found: {missing}' in _error(capsys)
    bad = tmp_path / 'bad.safetensors'
    bad.write_bytes(b'this is not a safetensors file at all')
    assert evaluate.main(['--data', str(tmp_path / 'data'), '--weights', str(bad)]) == 2
    assert str(bad) in _error(capsys)
    assert evaluate.main(['--data', str(tmp_path / 'data'), '--max-sequences', '-1']) == 2
    assert '--max-sequences must be >= 0, got -1' in _error(capsys)
    assert evaluate.main(['--data', str(tmp_path / 'data'), '--temporal-smoothing', '1.5']) == 2
    assert 'temporal smoothing must be in [0, 1) (0 = off), got 1.5' in _error(capsys)
    assert evaluate.main(['--data', str(tmp_path / 'data'), '--segment-every', '0']) == 2
    assert '--segment-every must be >= 1, got 0' in _error(capsys)


def test_prediction_name_matches_cityscapes_pattern():
    gt = Path('gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png')
    assert evaluate.prediction_name(gt) == 'frankfurt_000000_000294_flow2seg_labelIds.png'
    with pytest.raises(ValueError, match='leftImg8bit.png'):
        evaluate.prediction_name(Path('x/frankfurt_000000_000294_leftImg8bit.png'))
