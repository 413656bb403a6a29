"""flow2seg-train: config schema, loss going down, checkpoints, resume, frozen image path, DDP."""
import json
import os
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
from safetensors.torch import load_file
import torch
import yaml

from flow2seg_ros import train
from flow2seg_ros.classes import cityscapes_classes
from flow2seg_ros.data.synth import generate
from flow2seg_ros.flow import scale_flow
from flow2seg_ros.metrics import HeadsEvaluator
from flow2seg_ros.training import checkpoint, config, dataset, loop
from flow2seg_ros.training import model as training_model

REPO = Path(__file__).resolve().parents[1]

# A tiny lite model: a training step on 2 x 64x128 takes a few tens of ms.
TINY = {'widths': [8, 8, 16, 16], 'flow_widths': [4, 4, 8, 8], 'ppm_channels': 8,
        'fusion_channels': 8}


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('synth')
    generate(root, sequences=2, frames=3, size=(128, 64), seed=1, split='train', progress=False)
    generate(root, sequences=1, frames=3, size=(128, 64), seed=2, split='val', progress=False)
    return root


def write_config(path, data_root, **kw):
    cfg = {
        'data_root': str(data_root), 'preset': 'lite', 'model_kwargs': TINY,
        'input_size': [64, 128], 'crop_size': [64, 128], 'batch_size': 2, 'workers': 0,
        'optimizer': 'adamw', 'lr': 0.01, 'steps': 4, 'warmup_steps': 0, 'threads': 1,
        'device': 'cpu', 'output_dir': str(path.parent / 'run'), 'checkpoint_every': 0,
        'progress': False,
    }
    cfg.update(kw)
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / 'bad.yaml'
    path.write_text('steps: 10\nlearning_rate: 0.1\n')
    with pytest.raises(config.ConfigError, match=r"bad\.yaml: unknown key 'learning_rate'"):
        config.load_config(path)
    with pytest.raises(config.ConfigError, match="command line: unknown key 'stepz'"):
        config.load_config(None, config.parse_overrides(['--stepz', '3']))


def test_bad_values_are_named(tmp_path):
    path = tmp_path / 'typed.yaml'
    path.write_text('steps: ten\n')
    with pytest.raises(config.ConfigError, match=r"typed\.yaml: key 'steps' must be of type int"):
        config.load_config(path)
    with pytest.raises(config.ConfigError, match='optimizer'):
        config.load_config(None, {'optimizer': 'rmsprop'})
    with pytest.raises(config.ConfigError, match='not found: .*missing.yaml'):
        config.load_config(tmp_path / 'missing.yaml')
    # overrides are parsed as YAML and typed like the file's values
    cfg = config.load_config(None, config.parse_overrides(
        ['--lr', '1e-3', '--input_size=[32, 64]', '--use-flow', 'false']))
    assert cfg.lr == 0.001 and cfg.input_size == [32, 64] and cfg.use_flow is False


def test_shipped_configs_load():
    for name in ('train_synthetic.yaml', 'train_cityscapes_paper.yaml'):
        cfg = config.load_config(REPO / 'config' / name)
        assert cfg.flow_scale > 0 and cfg.steps > 0
    paper = config.load_config(REPO / 'config' / 'train_cityscapes_paper.yaml')
    assert paper.preset == 'paper' and paper.model_kwargs['image_backbone'] == 'resnet101'
    assert paper.model_kwargs['flow_backbone'] == 'resnet18' and paper.lr == 0.01


def test_missing_dataset_folder(tmp_path):
    cfg = write_config(tmp_path / 'c.yaml', tmp_path / 'no_such_data')
    with pytest.raises(FileNotFoundError, match='no_such_data'):
        train.train_model(['--config', str(cfg)])


def _error(capsys):
    """stderr of a main() that failed cleanly: the tool's error line, no traceback."""
    err = capsys.readouterr().err
    assert err.startswith('flow2seg-train: error: '), err
    assert 'Traceback' not in err
    return err


def test_console_errors_name_the_problem(tmp_path, capsys):
    missing = tmp_path / 'missing.yaml'
    assert train.main(['--config', str(missing)]) == 2
    assert f'training config not found: {missing}' in _error(capsys)
    bad = tmp_path / 'bad.yaml'
    bad.write_text('steps: 10\nlearning_rate: 0.1\n')
    assert train.main(['--config', str(bad)]) == 2
    assert f"{bad}: unknown key 'learning_rate'" in _error(capsys)
    assert train.main(['--config', str(write_config(tmp_path / 'c.yaml', tmp_path / 'nodata')),
                       '--stepz', '3']) == 2
    assert "command line: unknown key 'stepz'" in _error(capsys)
    assert train.main(['--config', str(tmp_path / 'c.yaml')]) == 2
    assert str(tmp_path / 'nodata') in _error(capsys)


def test_training_lowers_loss_and_writes_model_card(tmp_path, data_root):
    from flow2seg_ros.weights import load_model

    cfg = write_config(tmp_path / 'c.yaml', data_root, steps=24, lr=0.01)
    out = train.train_model(['--config', str(cfg)])
    losses = out['losses']
    assert len(losses) == 24
    assert sum(losses[-4:]) / 4 < 0.8 * sum(losses[:4]) / 4, losses
    run = tmp_path / 'run'
    for name in ('checkpoint.safetensors', 'checkpoint.json', 'model.safetensors', 'model.json'):
        assert (run / name).is_file(), name
    model, card = load_model(run / 'model.safetensors')
    assert card['preset'] == 'lite' and card['input_size'] == [64, 128]
    assert card['flow'] == {'method': 'dis', 'preset': 'ultrafast', 'scale': 32.0}
    assert card['normalization']['mean'] == list(config.IMAGENET_MEAN)
    assert card['training']['steps'] == 24 and card['training']['config']['seed'] == 0
    assert card['training']['loss'] == {'alpha': 0.5, 'beta': 0.4}
    assert card['training']['scenes'] == 'v1'  # from the data's sequence_info.json
    assert 'fused' in card['metrics'] and 0.0 <= card['metrics']['fused']['miou'] <= 1.0
    assert model.has_flow
    # the saved weights are the trained ones
    saved = load_file(str(run / 'model.safetensors'))
    ckpt = load_file(str(run / 'checkpoint.safetensors'))
    for k, v in saved.items():
        assert torch.equal(v, ckpt[f'model.{k}']), k


def test_resume_continues_exactly(tmp_path, data_root):
    """A run stopped at step 2 and resumed ends with the weights of an uninterrupted run."""
    full = write_config(tmp_path / 'full.yaml', data_root, steps=5, optimizer='sgd', lr=0.05,
                        output_dir=str(tmp_path / 'full'))
    a = train.train_model(['--config', str(full)])
    part = write_config(tmp_path / 'part.yaml', data_root, steps=5, optimizer='sgd', lr=0.05,
                        output_dir=str(tmp_path / 'part'))
    b1 = train.train_model(['--config', str(part), '--stop_at', '2'])
    assert b1['step'] == 2 and not (tmp_path / 'part' / 'model.safetensors').exists()
    meta = json.loads((tmp_path / 'part' / 'checkpoint.json').read_text())
    assert meta['step'] == 2 and meta['format'] == checkpoint.CHECKPOINT_FORMAT
    b2 = train.train_model(['--config', str(part), '--resume',
                            str(tmp_path / 'part' / 'checkpoint.safetensors')])
    assert b2['step'] == 5
    assert b2['losses'] == pytest.approx(a['losses'], rel=1e-5)
    wa = load_file(str(tmp_path / 'full' / 'model.safetensors'))
    wb = load_file(str(tmp_path / 'part' / 'model.safetensors'))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-5, atol=1e-6, msg=k)


def test_checkpoint_round_trip_restores_optimizer(tmp_path, data_root):
    cfg = config.load_config(None, {'model_kwargs': TINY, 'optimizer': 'sgd'})
    classes = config.load_classes('cityscapes')
    model = training_model.build_model_from_config(cfg, classes)
    opt = training_model.make_optimizer(cfg, model)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, training_model.poly_lambda(10, 0.9, 0, 0.1))
    x, f = torch.randn(2, 3, 64, 64), torch.randn(2, 2, 64, 64)
    loss = sum(o.square().mean() for o in model(x, f).values())
    loss.backward()
    opt.step()
    sched.step()
    path = checkpoint.save_checkpoint(tmp_path / 'ck.safetensors', model=model, optimizer=opt,
                                      scheduler=sched, step=1, epoch=0, cfg=cfg)
    model2 = training_model.build_model_from_config(cfg, classes)
    opt2 = training_model.make_optimizer(cfg, model2)
    sched2 = torch.optim.lr_scheduler.LambdaLR(opt2, training_model.poly_lambda(10, 0.9, 0, 0.1))
    meta = checkpoint.load_checkpoint(path, model=model2, optimizer=opt2, scheduler=sched2)
    assert meta['step'] == 1 and sched2.last_epoch == 1
    assert opt2.param_groups[0]['lr'] == pytest.approx(opt.param_groups[0]['lr'])
    for (k, a), b in zip(model.state_dict().items(), model2.state_dict().values()):
        assert torch.equal(a, b), k
    for p, q in zip(model.parameters(), model2.parameters()):
        assert torch.equal(opt.state[p]['momentum_buffer'], opt2.state[q]['momentum_buffer'])
    # a pickle is refused, never loaded
    bad = tmp_path / 'pickled.safetensors'
    torch.save({'a': torch.zeros(1)}, bad)
    (tmp_path / 'pickled.json').write_text(json.dumps(meta))
    with pytest.raises(ValueError, match='pickled.safetensors'):
        checkpoint.load_checkpoint(bad, model=model2)
    with pytest.raises(FileNotFoundError, match='nothere.safetensors'):
        checkpoint.load_checkpoint(tmp_path / 'nothere.safetensors', model=model2)


def test_image_only_then_frozen_image_path(tmp_path, data_root):
    """use_flow false trains the baseline; freeze_image_path then trains only flow + fusion."""
    base = write_config(tmp_path / 'base.yaml', data_root, use_flow=False, steps=2,
                        output_dir=str(tmp_path / 'base'), val_split='')
    assert train.main(['--config', str(base)]) == 0  # the console script's exit status
    assert json.loads((tmp_path / 'base' / 'checkpoint.json').read_text())['step'] == 2
    base_w = load_file(str(tmp_path / 'base' / 'model.safetensors'))
    assert not any(k.startswith(('flow_backbone.', 'fusion.')) for k in base_w)
    assert json.loads((tmp_path / 'base' / 'model.json').read_text())['model_kwargs'][
        'use_flow'] is False

    frozen = write_config(tmp_path / 'frozen.yaml', data_root, freeze_image_path=True,
                          init_weights=str(tmp_path / 'base' / 'model.safetensors'), steps=3,
                          output_dir=str(tmp_path / 'frozen'), val_split='')
    train.train_model(['--config', str(frozen)])
    new_w = load_file(str(tmp_path / 'frozen' / 'model.safetensors'))
    flow_side = ('flow_backbone.', 'flow_head.', 'fusion.')
    image_keys = [k for k in new_w if not k.startswith(flow_side)]
    assert set(image_keys) == set(base_w)
    for k in image_keys:  # weights and BatchNorm statistics alike
        assert torch.equal(new_w[k], base_w[k]), k
    # ...while the flow path and the fusion did train (their init is the model's random init)
    cfg = config.load_config(frozen)
    torch.manual_seed(cfg.seed)
    init = training_model.build_model_from_config(
        cfg, config.load_classes('cityscapes')).state_dict()
    changed = [k for k in new_w if k.startswith(flow_side) and k.endswith('weight')
               and not torch.equal(new_w[k], init[k])]
    assert changed, 'no flow-path or fusion weight changed'


def test_freeze_needs_init_weights(tmp_path):
    with pytest.raises(config.ConfigError, match='init_weights'):
        config.load_config(None, {'freeze_image_path': True})


def test_ddp_two_processes_with_torchrun(tmp_path, data_root):
    """Two CPU processes (gloo) train with DistributedSampler; only rank 0 writes."""
    cfg = write_config(tmp_path / 'ddp.yaml', data_root, steps=2, batch_size=2, val_split='',
                       output_dir=str(tmp_path / 'ddp'))
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=str(REPO))
    cmd = [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node', '2',
           '-m', 'flow2seg_ros.train', '--config', str(cfg)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    card = json.loads((tmp_path / 'ddp' / 'model.json').read_text())
    assert card['training']['processes'] == 2
    assert card['training']['steps'] == 2 and card['training']['images_seen'] == 8
    meta = json.loads((tmp_path / 'ddp' / 'checkpoint.json').read_text())
    assert meta['step'] == 2
    assert sorted(p.name for p in (tmp_path / 'ddp').iterdir()) == [
        'checkpoint.json', 'checkpoint.safetensors', 'config.yaml', 'model.json',
        'model.safetensors']


def test_flow_cache_only_without_geometric_augmentation(tmp_path, data_root):
    cache = tmp_path / 'flowcache'
    cfg = write_config(tmp_path / 'c.yaml', data_root, steps=3, val_split='', color_jitter=0.2,
                       flow_cache=str(cache))
    train.train_model(['--config', str(cfg)])
    files = sorted(cache.glob('dis_ultrafast/*.npy'))
    assert len(files) == 4  # one per training pair (2 sequences x 2 frames with a predecessor)
    # the cached flow is the estimator's flow of the original (un-jittered) pair
    from flow2seg_ros.data.cityscapes import SequencePairDataset
    from flow2seg_ros.flow import make_flow_estimator
    pairs = SequencePairDataset(data_root, 'train')
    s = pairs[0]
    expected = make_flow_estimator('dis', 'ultrafast')(s['prev'], s['image']).numpy()
    cached = np.load(cache / 'dis_ultrafast' / f'{s["name"]}.npy', allow_pickle=False)
    np.testing.assert_array_equal(cached, expected)
    bad = write_config(tmp_path / 'bad.yaml', data_root, steps=1, hflip=True,
                       flow_cache=str(cache))
    with pytest.raises(config.ConfigError, match='flow_cache needs geometric-free'):
        train.train_model(['--config', str(bad)])


def test_training_flow_is_scale_flow_at_the_input_width():
    """On a full frame the training flow is scale_flow; on a crop the divisor stays input W."""
    cfg = config.load_config(None, {'input_size': [64, 128], 'crop_size': [64, 96],
                                    'flow_scale': 32.0})
    full = torch.randn(2, 64, 128)
    torch.testing.assert_close(dataset.training_flow(full, cfg), scale_flow(full, 32.0))
    crop = torch.randn(2, 2, 64, 96)
    torch.testing.assert_close(dataset.training_flow(crop, cfg), crop * (32.0 / 128))


def test_validation_is_the_shared_heads_evaluator(tmp_path, data_root):
    """Training-time validation scores with metrics.HeadsEvaluator, frame by frame (no TC)."""
    cfg = config.load_config(None, {'data_root': str(data_root), 'model_kwargs': TINY,
                                    'input_size': [64, 128], 'crop_size': [64, 128],
                                    'device': 'cpu', 'progress': False})
    classes = cityscapes_classes()
    torch.manual_seed(0)
    model = training_model.build_model_from_config(cfg, classes).eval()
    val_set = dataset.make_val_set(cfg, classes)
    loader = torch.utils.data.DataLoader(val_set, batch_size=1)
    summary = loop.evaluate(model, loader, torch.device('cpu'), classes, cfg=cfg)
    expected = HeadsEvaluator(classes, temporal=False)
    with torch.no_grad():
        for i in range(len(val_set)):
            s = val_set[i]
            out = model(s['image'][None], s['flow'][None])
            expected.update(None, {h: out[h][0].argmax(0).numpy().astype(np.uint8)
                                   for h in ('fused', 'image', 'flow')},
                            s['label'].numpy().astype(np.uint8))
    assert summary == expected.summary()
    assert summary['frames'] == len(val_set) == 2  # 1 sequence x 2 frames with a predecessor
    for h in ('fused', 'image', 'flow'):
        assert summary['heads'][h]['tc'] is None and summary['heads'][h]['tc_pairs'] == 0
        assert 0.0 <= summary['heads'][h]['miou'] <= 1.0
    # the model card's layout: per head miou, pixel accuracy and per-class IoU, plus the split
    card = loop.held_out(cfg, model, classes, torch.device('cpu'))
    assert card['split'] == 'val' and card['frames'] == 2
    for h in ('fused', 'image', 'flow'):
        assert card[h] == {k: summary['heads'][h][k]
                           for k in ('miou', 'pixel_accuracy', 'per_class_iou')}
    assert 'held-out val (2 frames)' in loop.format_metrics(card)
