"""Training with the temporal-consistency term (loss_tc): samples, the term, a short run."""
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from flow2seg_ros import train
from flow2seg_ros.classes import cityscapes_classes
from flow2seg_ros.data.cityscapes import DatasetError
from flow2seg_ros.data.synth import generate
from flow2seg_ros.losses import TemporalConsistencyLoss
from flow2seg_ros.training import config, dataset, loop
from flow2seg_ros.training import model as training_model

TINY = {'widths': [8, 8, 16, 16], 'flow_widths': [4, 4, 8, 8], 'ppm_channels': 8,
        'fusion_channels': 8}


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('synth_tc')
    generate(root, sequences=2, frames=4, size=(128, 64), seed=4, split='train', progress=False,
             scenes='v2')
    generate(root, sequences=1, frames=3, size=(128, 64), seed=5, split='val', progress=False,
             scenes='v2')
    return root


def _cfg(data_root, tmp_path, **kw):
    values = {
        'data_root': str(data_root), 'preset': 'lite', 'model_kwargs': TINY,
        'input_size': [64, 128], 'crop_size': [48, 96], 'scale_range': [0.8, 1.2],
        'hflip': True, 'color_jitter': 0.2, 'batch_size': 2, 'workers': 0,
        'optimizer': 'adamw', 'lr': 0.01, 'steps': 4, 'warmup_steps': 0, 'threads': 1,
        'device': 'cpu', 'output_dir': str(tmp_path / 'run'), 'checkpoint_every': 0,
        'progress': False, 'loss_tc': 1.0, 'flow_preset': 'medium',
    }
    values.update(kw)
    path = tmp_path / 'c.yaml'
    path.write_text(yaml.safe_dump(values))
    return path


def test_loss_tc_defaults_to_off_and_must_not_be_negative():
    assert config.load_config(None).loss_tc == 0.0
    with pytest.raises(config.ConfigError, match='loss_tc must be >= 0'):
        config.load_config(None, {'loss_tc': -0.1})


def test_previous_frames_are_augmented_like_the_pair(data_root, tmp_path):
    cfg = config.load_config(_cfg(data_root, tmp_path))
    train_set, _ = dataset.make_train_set(cfg, cityscapes_classes(), torch.device('cpu'), 1)
    assert isinstance(train_set, dataset.TemporalPairDataset)
    names = [s[0] for s in train_set.raw_pairs.samples]
    # The pair's previous frame, augmented with the replayed draws, is the older pair's current.
    i = names.index(next(n for n in names if n.endswith('_000003')))
    raw = train_set.raw_pairs[i]
    older = train_set.raw_pairs[i - 1]
    assert older['name'].endswith('_000002')
    torch.manual_seed(7)
    a, b = train_set._augment([raw, {'image': raw['prev'], 'prev': older['prev'],
                                     'label': raw['label'], 'name': 'x'}])
    assert a['image'].shape == (48, 96, 3)
    np.testing.assert_array_equal(b['image'], a['prev'])
    assert not np.array_equal(b['prev'], a['prev'])
    # And the transform draws what it draws without the replay (the same crop of the pair).
    torch.manual_seed(7)
    np.testing.assert_array_equal(train_set.pairs.transform(raw)['image'], a['image'])

    sample = train_set[i]
    assert sample['prev_image'].shape == (3, 48, 96) and sample['tc_flow'].shape == (2, 48, 96)
    assert sample['tc_mask'].dtype == torch.bool and sample['tc_mask'].float().mean() > 0.5
    assert sample['prev_flow'].abs().sum() > 0
    # The second frame of a sequence has no frame before its previous one: no term for it.
    first = train_set[names.index(next(n for n in names if n.endswith('_000001')))]
    assert not first['tc_mask'].any() and not first['prev_flow'].any()


def test_image_only_samples_carry_flow_for_the_term(data_root, tmp_path):
    cfg = config.load_config(_cfg(data_root, tmp_path, use_flow=False))
    train_set, _ = dataset.make_train_set(cfg, cityscapes_classes(), torch.device('cpu'), 1)
    sample = train_set[0]
    assert 'flow' not in sample and 'prev_flow' not in sample
    assert sample['tc_mask'].any() and sample['tc_flow'].shape == (2, 48, 96)


def test_ground_truth_flow_for_the_term_is_augmented_with_the_pair(data_root, tmp_path):
    cfg = config.load_config(_cfg(data_root, tmp_path, tc_flow='ground_truth'))
    train_set, _ = dataset.make_train_set(cfg, cityscapes_classes(), torch.device('cpu'), 1)
    names = [s[0] for s in train_set.raw_pairs.samples]
    i = names.index(next(n for n in names if n.endswith('_000003')))
    raw = train_set.raw_pairs[i]
    gt = train_set._ground_truth(raw, train_set.raw_pairs.samples[i][1])
    torch.manual_seed(11)
    a, g = train_set._augment([raw, gt], [train_set.pairs.transform, train_set.flow_transform])
    # The flow transform drew the same scale, crop, flip and colour as the pair's transform.
    np.testing.assert_array_equal(g['cur'], a['image'])
    np.testing.assert_array_equal(g['prev'], a['prev'])
    torch.manual_seed(11)
    sample = train_set[i]
    flow, mask = sample['tc_flow'].numpy(), sample['tc_mask'].numpy()
    np.testing.assert_array_equal(flow, g['flow'])
    assert mask.mean() > 0.6
    # It is the motion of the augmented pair: frame t-1 warped by it matches frame t.
    h, w = mask.shape
    mx = (np.arange(w, dtype=np.float32)[None, :] + flow[0]).astype(np.float32)
    my = (np.arange(h, dtype=np.float32)[:, None] + flow[1]).astype(np.float32)
    warped = cv2.remap(a['prev'], mx, my, cv2.INTER_LINEAR).astype(np.float32)
    err = np.abs(warped - a['image'].astype(np.float32)).mean(-1)
    still = np.abs(a['prev'].astype(np.float32) - a['image'].astype(np.float32)).mean(-1)
    assert err[mask].mean() < 0.8 * still[mask].mean(), (err[mask].mean(), still[mask].mean())
    with pytest.raises(config.ConfigError, match='tc_flow'):
        config.load_config(None, {'tc_flow': 'exact'})


def test_ground_truth_flow_needs_the_flow_files(tmp_path):
    root = tmp_path / 'noflow'
    generate(root, sequences=1, frames=3, size=(128, 64), seed=6, split='train', progress=False,
             flow=False)
    cfg = config.load_config(_cfg(root, tmp_path, tc_flow='ground_truth'))
    with pytest.raises(DatasetError, match='flow files'):
        dataset.make_train_set(cfg, cityscapes_classes(), torch.device('cpu'), 1)


def test_moving_masks_are_read_and_augmented_with_the_pair(data_root, tmp_path):
    cfg = config.load_config(_cfg(data_root, tmp_path, tc_flow='ground_truth', loss_moving=2.0,
                                  loss_moving_heads=['flow', 'fused']))
    classes = cityscapes_classes()
    train_set, _ = dataset.make_train_set(cfg, classes, torch.device('cpu'), 1)
    names = [s[0] for s in train_set.raw_pairs.samples]
    i = names.index(next(n for n in names if n.endswith('_000003')))
    raw = train_set.raw_pairs[i]
    gt = train_set._ground_truth(raw, train_set.raw_pairs.samples[i][1])
    city = Path(train_set.raw_pairs.samples[i][1]).parent.name
    on_disk = cv2.imread(str(Path(data_root) / 'flow' / 'train' / city
                             / f"{raw['name']}_moving.png"), cv2.IMREAD_UNCHANGED) > 0
    np.testing.assert_array_equal(gt['moving'], on_disk)
    assert on_disk.any() and not on_disk.all()
    torch.manual_seed(11)
    _, g = train_set._augment([raw, gt], [train_set.pairs.transform, train_set.flow_transform])
    torch.manual_seed(11)
    sample = train_set[i]
    np.testing.assert_array_equal(sample['moving'].numpy(), g['moving'])
    assert sample['moving'].shape == sample['label'].shape
    # Moving pixels are those of objects: no road or sky among them in the unaugmented frame.
    labels = raw['label'][on_disk]
    assert not np.isin(labels, [classes.names.index('road'), classes.names.index('sky')]).any()
    criterion = training_model.make_criterion(cfg, classes)
    assert criterion.moving_weight == 2.0 and set(criterion.moving_heads) == {'flow', 'fused'}
    # A training step passes the batch's masks to the loss.
    out = train.train_model(['--config', str(_cfg(data_root, tmp_path, tc_flow='ground_truth',
                                                  loss_moving=2.0, steps=2))])
    assert len(out['losses']) == 2 and all(np.isfinite(out['losses']))


def test_loss_moving_is_validated():
    assert config.load_config(None).loss_moving == 0.0
    with pytest.raises(config.ConfigError, match='loss_moving must be >= 0'):
        config.load_config(None, {'loss_moving': -1})
    with pytest.raises(config.ConfigError, match='loss_moving_heads'):
        config.load_config(None, {'loss_moving_heads': ['optical']})
    with pytest.raises(config.ConfigError, match='tc_flow: ground_truth'):
        config.load_config(None, {'loss_moving': 1.0, 'loss_tc': 1.0, 'tc_flow': 'estimator'})
    with pytest.raises(config.ConfigError, match='loss_tc > 0'):
        config.load_config(None, {'loss_moving': 1.0, 'tc_flow': 'ground_truth'})


@pytest.mark.parametrize('use_flow', [True, False])
def test_the_term_joins_the_loss_of_a_step(data_root, tmp_path, use_flow):
    cfg = config.load_config(_cfg(data_root, tmp_path, use_flow=use_flow, hflip=False,
                                  scale_range=[1.0, 1.0], color_jitter=0.0))
    classes = cityscapes_classes()
    torch.manual_seed(0)
    model = training_model.build_model_from_config(cfg, classes)
    model.eval()           # no dropout: the two passes over the previous frame agree exactly
    train_set, _ = dataset.make_train_set(cfg, classes, torch.device('cpu'), 1)
    batch = torch.utils.data.default_collate([train_set[-1], train_set[-2]])
    flow = batch['flow'] if use_flow else None
    outputs = model(batch['image'], flow)
    term = loop._temporal_term(model, TemporalConsistencyLoss(), outputs, batch,
                               torch.device('cpu'), cfg)
    with torch.no_grad():
        prev = model(batch['prev_image'], batch['prev_flow'] if use_flow else None)
    expected = TemporalConsistencyLoss()(outputs['fused'], prev['fused'], batch['tc_flow'],
                                         batch['tc_mask'])
    assert term.item() == pytest.approx(expected.item(), rel=1e-5) and term.item() > 0
    term.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and sum(float(g.abs().sum()) for g in grads) > 0


@pytest.mark.parametrize('use_flow,tc_flow', [(True, 'estimator'), (False, 'ground_truth')])
def test_short_training_run_with_the_term(data_root, tmp_path, capsys, use_flow, tc_flow):
    out = train.train_model(['--config', str(_cfg(data_root, tmp_path, use_flow=use_flow,
                                                  tc_flow=tc_flow, steps=3, progress=True,
                                                  log_every=1))])
    assert len(out['losses']) == 3 and all(np.isfinite(out['losses']))
    assert (tmp_path / 'run' / 'model.safetensors').is_file()
    assert 'tc=' in capsys.readouterr().err          # the progress bar shows the term


def test_v2_config_trains_with_the_term():
    configs = Path(__file__).resolve().parents[1] / 'config'
    cfg = config.load_config(configs / 'train_synthetic_v2.yaml')
    assert cfg.loss_tc > 0 and cfg.use_flow and cfg.preset == 'lite'
    assert cfg.steps > config.load_config(configs / 'train_synthetic.yaml').steps
