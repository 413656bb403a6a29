"""save_model / load_model: bit-exact round trip, refusal of pickles, clear errors."""
import json
from pathlib import Path
import pickle
import shutil

import pytest
import torch

from flow2seg_ros import weights
from flow2seg_ros.classes import ClassSet
from flow2seg_ros.models import build_model
from flow2seg_ros.node_params import validate_parameters
from flow2seg_ros.weights import (
    bundled_model_path, card_path, load_model, make_card, save_model, WeightsError)

CLASSES = ClassSet(names=('road', 'car', 'person'),
                   colors=((128, 64, 128), (0, 0, 142), (220, 20, 60)))
SMALL = {'widths': (8, 16, 24, 32), 'flow_widths': (8, 8, 16, 16), 'ppm_channels': 16}


def _trained_looking_model(**kwargs):
    torch.manual_seed(0)
    model = build_model('lite', num_classes=CLASSES.num_classes, **{**SMALL, **kwargs})
    for p in model.parameters():  # every tensor non-trivial, including the zero-init fusion
        torch.nn.init.normal_(p, std=0.1)
    model.train()
    with torch.no_grad():  # move the BN running statistics away from their defaults
        model(torch.randn(2, 3, 64, 64), torch.randn(2, 2, 64, 64))
    return model.eval()


def _card(model):
    return make_card(model, CLASSES, input_size=(64, 64), mean=(0.485, 0.456, 0.406),
                     std=(0.229, 0.224, 0.225), flow_method='dis', flow_preset='ultrafast',
                     flow_scale=8.0, training={'steps': 0}, metrics={})


@pytest.fixture(scope='module')
def _saved_once(tmp_path_factory):
    model = _trained_looking_model()
    path = tmp_path_factory.mktemp('saved') / 'm.safetensors'
    save_model(model, path, _card(model))
    return model, path


@pytest.fixture
def saved(_saved_once, tmp_path):
    """A saved model and its files, copied into this test's tmp_path (free to edit)."""
    model, source = _saved_once
    shutil.copy(source, tmp_path / source.name)
    shutil.copy(card_path(source), card_path(tmp_path / source.name))
    return model, tmp_path / source.name


def _save(tmp_path, model, name='m.safetensors'):
    path = tmp_path / name
    save_model(model, path, _card(model))
    return model, path


def test_round_trip_is_bit_exact(saved, tmp_path):
    model, path = saved
    assert card_path(path) == tmp_path / 'm.json'
    loaded, card = load_model(path)
    assert not loaded.training
    theirs = loaded.state_dict()
    ours = model.state_dict()
    assert list(ours) == list(theirs)
    for key, value in ours.items():
        assert value.dtype == theirs[key].dtype, key
        assert torch.equal(value, theirs[key]), key
    assert card['preset'] == 'lite'
    assert card['model_kwargs'] == json.loads(json.dumps(model.model_kwargs))
    assert ClassSet.from_dict(card['classes']) == CLASSES
    assert card['flow'] == {'method': 'dis', 'preset': 'ultrafast', 'scale': 8.0}
    assert json.loads(card_path(path).read_text()) == card
    image, flow = torch.randn(1, 3, 64, 96), torch.randn(1, 2, 64, 96)
    with torch.no_grad():
        a, b = model(image, flow), loaded(image, flow)
    assert list(a) == list(b)
    for head in a:
        assert torch.equal(a[head], b[head]), head


def test_image_only_model_round_trip(tmp_path):
    model, path = _save(tmp_path, _trained_looking_model(use_flow=False))
    loaded, card = load_model(path, device='cpu')
    assert card['model_kwargs']['use_flow'] is False
    assert not loaded.has_flow
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x)['fused'], loaded(x)['fused'])


@pytest.mark.parametrize('zip_format', [True, False], ids=['zip', 'legacy-pickle'])
def test_torch_save_checkpoint_is_refused(saved, zip_format):
    model, path = saved
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=zip_format)
    kind = 'zip archive' if zip_format else 'Python pickle'
    with pytest.raises(WeightsError, match=rf'{path}.*{kind}.*torch\.save.*unpickl'):
        load_model(path)


def test_plain_pickle_and_random_bytes_are_refused(saved):
    _, path = saved
    path.write_bytes(pickle.dumps({'a': 1}, protocol=4))
    with pytest.raises(WeightsError, match=rf'{path} is a Python pickle'):
        load_model(path)
    path.write_bytes(bytes(range(256)) * 4)
    with pytest.raises(WeightsError, match=rf'{path} is not a safetensors file'):
        load_model(path)
    path.write_bytes(b'')
    with pytest.raises(WeightsError, match=rf'{path} is not a safetensors file'):
        load_model(path)


def test_missing_files_are_named(saved, tmp_path):
    missing = tmp_path / 'nope' / 'model.safetensors'
    with pytest.raises(WeightsError, match=rf'weights file not found: {missing}'):
        load_model(missing)
    _, path = saved
    card_path(path).unlink()
    with pytest.raises(WeightsError, match=rf'model card not found: {tmp_path / "m.json"}'):
        load_model(path)


def test_bundled_model(monkeypatch, tmp_path, _saved_once):
    assert bundled_model_path().name == 'flow2seg_lite_synthetic.safetensors'
    assert bundled_model_path().parent.name == 'bundled'
    assert bundled_model_path().parent.parent.name == 'flow2seg_ros'
    absent = tmp_path / 'flow2seg_lite_synthetic.safetensors'
    monkeypatch.setattr(weights, 'bundled_model_path', lambda: absent)
    with pytest.raises(WeightsError, match=rf'bundled model is missing: {absent}'):
        load_model()
    _save(tmp_path, _saved_once[0], name=absent.name)
    model, card = load_model(None)
    assert card['preset'] == 'lite' and model.num_classes == CLASSES.num_classes


@pytest.mark.parametrize('edit, message', [
    (lambda c: c.pop('classes'), r"lacks \['classes'\]"),
    (lambda c: c.update(format='other/9'), "format 'other/9'"),
    (lambda c: c.update(preset='huge'), "unknown model preset 'huge'"),
    (lambda c: c['model_kwargs'].update(depth=3), 'depth'),
    (lambda c: c['model_kwargs'].update(widths=[8, 16, 24, 48]), 'does not match its card'),
    (lambda c: c['classes']['names'].append('bike') or c['classes']['colors'].append([1, 2, 3]),
     'does not match its card'),
    (lambda c: c.update(input_size=[64]), r'input_size should be \[H, W\]'),
    (lambda c: c.update(normalization={'mean': [0.5]}), 'normalization should be'),
    (lambda c: c.update(normalization={'mean': 0.5, 'std': 0.2}), 'normalization should be'),
    (lambda c: c.update(flow={'method': 'dis'}), 'flow should be'),
])
def test_card_that_does_not_fit_is_refused(saved, edit, message):
    _, path = saved
    card = json.loads(card_path(path).read_text())
    edit(card)
    card_path(path).write_text(json.dumps(card))
    with pytest.raises(WeightsError, match=message) as info:
        load_model(path)
    assert 'm.json' in str(info.value) or 'm.safetensors' in str(info.value)


def test_card_not_json_is_refused(saved):
    _, path = saved
    card_path(path).write_text('{not json')
    with pytest.raises(WeightsError, match=r'm\.json is not valid JSON'):
        load_model(path)


def test_save_model_validates(tmp_path, _saved_once):
    model = _saved_once[0]
    card = _card(model)
    with pytest.raises(WeightsError, match=r'should end with \.safetensors, got .*m\.pt'):
        save_model(model, tmp_path / 'm.pt', card)
    wrong = {**card, 'classes': ClassSet(names=('a', 'b'), colors=((0, 0, 0),) * 2).to_dict()}
    with pytest.raises(WeightsError, match='2 classes but the model predicts 3'):
        save_model(model, tmp_path / 'm.safetensors', wrong)
    with pytest.raises(WeightsError, match="preset 'paper' does not match"):
        save_model(model, tmp_path / 'm.safetensors', {**card, 'preset': 'paper'})
    assert not (tmp_path / 'm.safetensors').exists()
    # A minimal card is completed from the model.
    written = save_model(model, tmp_path / 'sub' / 'm.safetensors', {'classes': CLASSES.to_dict()})
    assert written['preset'] == 'lite' and written['format'] == weights.CARD_FORMAT
    assert load_model(tmp_path / 'sub' / 'm.safetensors')[1] == written


def test_model_paths_name_bundled_models_or_files(tmp_path):
    """``model_path`` / ``--weights``: '' is the default, a bare name a bundled model, anything
    with a slash or a .safetensors ending a file; an unknown name lists the bundled ones."""
    assert weights.resolve_model_path('') == weights.resolve_model_path(None) == \
        bundled_model_path()
    v2 = weights.resolve_model_path('flow2seg_lite_synthetic_v2')
    assert v2 == bundled_model_path('flow2seg_lite_synthetic_v2') and v2.is_file()
    assert weights.resolve_model_path('m.safetensors') == Path('m.safetensors')
    assert weights.resolve_model_path(str(tmp_path / 'x')) == tmp_path / 'x'
    listed = r'\(flow2seg_lite_synthetic, flow2seg_lite_synthetic_v2'
    with pytest.raises(WeightsError, match="'v2' is neither a bundled model " + listed):
        weights.resolve_model_path('v2')
    with pytest.raises(WeightsError, match='neither a bundled model'):
        load_model('v2')
    assert validate_parameters({'model_path': 'flow2seg_lite_synthetic_v2'}) == []
    assert 'neither a bundled model' in validate_parameters({'model_path': 'v2'})[0]


def test_every_bundled_model_loads_by_name():
    for name in weights.BUNDLED_MODELS:
        model, card = load_model(name)
        assert model.num_classes == len(card['classes']['names'])
    assert load_model('flow2seg_lite_synthetic_v2')[0].num_classes == 19
