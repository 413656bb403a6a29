"""Flow2Seg models: shapes, heads, fusion, dilation, presets, backbone weights."""
import json

import pytest
from safetensors.torch import save_file
import torch
import torch.nn.functional as F
import torchvision

from flow2seg_ros.models import build_model, flow2seg_lite, flow2seg_paper
from flow2seg_ros.models.backbones import resnet_backbone, slim_resnet_backbone
from flow2seg_ros.weights import WeightsError

NUM_CLASSES = 5

# (factory, kwargs): every preset/factory, kept tiny where the real one is slow.
FACTORIES = [
    pytest.param(flow2seg_lite, {}, id='lite'),
    pytest.param(flow2seg_lite, {'output_stride': 8, 'skip': False, 'stem': 'resnet'},
                 id='lite-os8-resnet-stem'),
    pytest.param(flow2seg_paper, {'image_backbone': 'resnet18', 'ppm_channels': 32,
                                  'fusion_channels': 16}, id='paper-r18'),
    pytest.param(lambda **kw: build_model('lite', **kw), {'widths': (8, 16, 24, 32)},
                 id='build_model-lite'),
    pytest.param(flow2seg_lite, {'flow_input_stride': 2, 'flow_output_stride': 8},
                 id='lite-flow-pooled'),
]


def _inputs(n=2, h=64, w=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, h, w, generator=g), torch.randn(n, 2, h, w, generator=g) * 0.1


@pytest.mark.parametrize('factory, kwargs', FACTORIES)
def test_train_forward_backward(factory, kwargs):
    torch.manual_seed(0)
    model = factory(num_classes=NUM_CLASSES, **kwargs).train()
    image, flow = _inputs()
    out = model(image, flow)
    assert list(out) == ['fused', 'image', 'flow', 'aux']
    for name, logits in out.items():
        assert logits.shape == (2, NUM_CLASSES, 64, 64), name
    sum(v.mean() for v in out.values()).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None]
    assert not no_grad, f'parameters without gradient: {no_grad}'
    for part in ('image_backbone', 'flow_backbone', 'image_head', 'flow_head', 'aux_head'):
        grads = [p.grad.abs().sum() for p in getattr(model, part).parameters()]
        assert sum(grads) > 0, f'{part} received no gradient'


@pytest.mark.parametrize('factory, kwargs', FACTORIES)
def test_eval_keys_with_and_without_flow(factory, kwargs):
    model = factory(num_classes=NUM_CLASSES, **kwargs).eval()
    image, flow = _inputs(n=1, h=64, w=96)
    with torch.no_grad():
        with_flow = model(image, flow)
        without = model(image)
    assert list(with_flow) == ['fused', 'image', 'flow']
    assert list(without) == ['fused', 'image']
    assert without['fused'].shape == (1, NUM_CLASSES, 64, 96)
    assert without['fused'] is without['image']
    torch.testing.assert_close(with_flow['image'], without['image'])
    # Only the requested heads are upsampled.
    with torch.no_grad():
        only = model(image, flow, heads=('fused',))
    assert list(only) == ['fused']
    torch.testing.assert_close(only['fused'], with_flow['fused'])


@pytest.mark.parametrize('factory, kwargs', FACTORIES)
def test_image_only_model(factory, kwargs):
    model = factory(num_classes=NUM_CLASSES, use_flow=False, **kwargs)
    assert not model.has_flow
    assert model.flow_backbone is None and model.fusion is None
    image, flow = _inputs()
    out = model.train()(image, flow)
    assert list(out) == ['fused', 'image', 'aux']
    assert out['fused'] is out['image']
    assert not any(name.startswith(('flow_', 'fusion')) for name, _ in model.named_parameters())


@pytest.mark.parametrize('factory, kwargs', FACTORIES)
def test_fused_is_image_plus_fusion_residual(factory, kwargs):
    torch.manual_seed(1)
    model = factory(num_classes=NUM_CLASSES, **kwargs).eval()
    # The fusion's last conv starts at zero; give it weights so the residual is not trivial.
    torch.nn.init.normal_(model.fusion.out.weight, std=0.5)
    torch.nn.init.normal_(model.fusion.out.bias, std=0.5)
    native = {}
    model.image_head.register_forward_hook(lambda m, i, o: native.__setitem__('image', o))
    model.flow_head.register_forward_hook(lambda m, i, o: native.__setitem__('flow', o))
    image, flow = _inputs(n=1, h=64, w=96)
    with torch.no_grad():
        out = model(image, flow)
        image_native = native['image']
        if model.skip_head is not None:
            low = model.image_backbone(image)['low']
            image_native = F.interpolate(image_native, size=low.shape[-2:], mode='bilinear',
                                         align_corners=False) + model.skip_head(low)
        residual = model.fusion(image_native, native['flow'])
    assert residual.shape == image_native.shape
    assert residual.abs().max() > 1e-3
    expected = F.interpolate(image_native + residual, size=(64, 96), mode='bilinear',
                             align_corners=False)
    torch.testing.assert_close(out['fused'], expected)
    torch.testing.assert_close(out['fused'], out['image'] + F.interpolate(
        residual, size=(64, 96), mode='bilinear', align_corners=False), atol=1e-5, rtol=1e-5)


def test_fresh_fusion_leaves_image_logits_unchanged():
    model = flow2seg_lite(num_classes=NUM_CLASSES).eval()
    image, flow = _inputs(n=1)
    with torch.no_grad():
        out = model(image, flow)
    torch.testing.assert_close(out['fused'], out['image'])


_R18 = lambda os_: resnet_backbone('resnet18', output_stride=os_)  # noqa: E731
_R50 = lambda os_: resnet_backbone('resnet50', output_stride=os_)  # noqa: E731
_SLIM = lambda os_: slim_resnet_backbone(widths=(8, 8, 16, 16), blocks=(1, 2, 2, 2),  # noqa: E731
                                         output_stride=os_)


@pytest.mark.parametrize('make, output_stride', [
    pytest.param(_R18, 8, id='resnet18-os8'),
    pytest.param(_R18, 16, id='resnet18-os16'),
    pytest.param(_R50, 8, id='resnet50-os8'),
    pytest.param(_SLIM, 8, id='slim-os8'),
    pytest.param(_SLIM, 16, id='slim-os16'),
])
def test_dilation_is_equivalent_to_stride(make, output_stride):
    # Atrous convolution: the dilated trunk's output sampled every (32 / OS) pixels is the
    # undilated trunk's output, exactly (inputs divisible by 32, eval-mode BN).
    torch.manual_seed(0)
    strided = make(32).eval()
    dilated = make(output_stride).eval()
    dilated.load_state_dict(strided.state_dict())
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        a = strided(x)['out']
        b = dilated(x)['out']
    assert a.shape[-2:] == (2, 3)
    assert b.shape[-2:] == (64 // output_stride, 96 // output_stride)
    step = 32 // output_stride
    torch.testing.assert_close(b[..., ::step, ::step], a, atol=1e-4 * a.abs().max().item(),
                               rtol=1e-4)


@pytest.mark.parametrize('factory, kwargs', FACTORIES[:3])
def test_model_kwargs_rebuild_the_model(factory, kwargs):
    model = factory(num_classes=NUM_CLASSES, **kwargs)
    recorded = json.loads(json.dumps(model.model_kwargs))  # what a model card stores
    rebuilt = build_model(model.preset, num_classes=NUM_CLASSES, **recorded)
    assert rebuilt.model_kwargs == recorded
    ours = {k: v.shape for k, v in model.state_dict().items()}
    theirs = {k: v.shape for k, v in rebuilt.state_dict().items()}
    assert ours == theirs


def test_real_paper_preset_tiny_forward():
    model = build_model('paper', num_classes=19).eval()
    assert model.model_kwargs['image_backbone'] == 'resnet101'
    assert model.model_kwargs['flow_backbone'] == 'resnet18'
    assert model.image_backbone.output_stride == 8
    assert model.image_head.bins == (1, 2, 3, 6)
    image, flow = _inputs(n=1, h=64, w=64)
    with torch.no_grad():
        out = model(image, flow)
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        k: (1, 19, 64, 64) for k in ('fused', 'image', 'flow')}


def test_lite_is_small():
    model = flow2seg_lite(num_classes=19)
    params = sum(p.numel() for p in model.parameters())
    assert params < 1_000_000, params
    # 4 bytes per float32 parameter plus buffers: well under the 20 MB bundle limit.
    assert params * 4 < 20e6


@pytest.mark.parametrize('bad, message', [
    (lambda: torch.randn(1, 4, 64, 64), r'\(N, 3, H, W\).*\(1, 4, 64, 64\)'),
    (lambda: torch.randn(3, 64, 64), r'\(N, 3, H, W\).*\(3, 64, 64\)'),
    (lambda: torch.zeros(1, 3, 64, 64, dtype=torch.uint8), 'float.*uint8'),
    (lambda: torch.randn(1, 3, 16, 64), 'at least 32, got 16 and 64'),
])
def test_bad_image_is_refused(bad, message):
    model = flow2seg_lite(num_classes=NUM_CLASSES).eval()
    with pytest.raises(ValueError, match=message):
        model(bad())


def test_bad_flow_is_refused():
    model = flow2seg_lite(num_classes=NUM_CLASSES).eval()
    image = torch.randn(1, 3, 64, 64)
    with pytest.raises(ValueError, match=r'\(N, 2, H, W\).*\(1, 3, 64, 64\)'):
        model(image, torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r'flow \(1, 2, 64, 32\) should match'):
        model(image, torch.randn(1, 2, 64, 32))
    with pytest.raises(ValueError, match='unknown heads'):
        model(image, heads=('fused', 'depth'))


def test_flow_path_reads_the_pooled_flow():
    # flow_input_stride 2: the flow trunk sees the flow averaged over 2x2 cells, so its logits
    # equal those of the same trunk fed that pooled flow, on the same (stride-16) grid as the
    # full-resolution trunk at output stride 16.
    torch.manual_seed(0)
    pooled = flow2seg_lite(num_classes=NUM_CLASSES, flow_input_stride=2,
                           flow_output_stride=8).eval()
    plain = flow2seg_lite(num_classes=NUM_CLASSES, flow_output_stride=8).eval()
    plain.load_state_dict(pooled.state_dict())
    _, flow = _inputs(h=64, w=96)
    with torch.no_grad():
        got = pooled.flow_logits(flow)
        want = plain.flow_logits(F.avg_pool2d(flow, 2))
        full = flow2seg_lite(num_classes=NUM_CLASSES).eval().flow_logits(flow)
    torch.testing.assert_close(got, want)
    assert got.shape[-2:] == full.shape[-2:] == (4, 6)
    assert pooled.model_kwargs['flow_input_stride'] == 2
    with pytest.raises(ValueError, match='flow_input_stride must be 1, 2 or 4, got 3'):
        flow2seg_lite(num_classes=3, flow_input_stride=3)


def test_bad_presets_and_arguments():
    with pytest.raises(ValueError, match="unknown model preset 'huge'.*lite.*paper"):
        build_model('huge', num_classes=3)
    with pytest.raises(TypeError, match="preset 'lite'.*depth"):
        build_model('lite', num_classes=3, depth=3)
    with pytest.raises(ValueError, match="unknown backbone 'resnet9'"):
        flow2seg_paper(num_classes=3, image_backbone='resnet9')
    with pytest.raises(ValueError, match='output_stride must be 8, 16 or 32, got 4'):
        flow2seg_lite(num_classes=3, output_stride=4)


def _save_torchvision_resnet18(path):
    net = torchvision.models.resnet18(weights=None)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return net.state_dict()


def test_backbone_weights_from_local_safetensors(tmp_path):
    path = tmp_path / 'resnet18.safetensors'
    reference = _save_torchvision_resnet18(path)
    backbone = resnet_backbone('resnet18', weights=path)
    assert torch.equal(backbone.stem[0].weight, reference['conv1.weight'])
    assert torch.equal(backbone.stem[1].running_var, reference['bn1.running_var'])
    assert torch.equal(backbone.layer4[1].conv2.weight, reference['layer4.1.conv2.weight'])
    model = flow2seg_paper(num_classes=3, image_backbone='resnet18', backbone_weights=path,
                           flow_backbone_weights=path)
    assert torch.equal(model.image_backbone.layer3[0].conv1.weight,
                       reference['layer3.0.conv1.weight'])
    assert torch.equal(model.flow_backbone.layer2[0].conv1.weight,
                       reference['layer2.0.conv1.weight'])
    assert model.flow_backbone.stem[0].in_channels == 2
    assert 'backbone_weights' not in model.model_kwargs


def test_backbone_weights_from_torch_hub_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, 'get_dir', lambda: str(tmp_path / 'hub'))
    with pytest.raises(WeightsError, match=r'not found: .*hub/checkpoints/resnet18\.safetensors'):
        resnet_backbone('resnet18', weights='imagenet')
    (tmp_path / 'hub' / 'checkpoints').mkdir(parents=True)
    reference = _save_torchvision_resnet18(tmp_path / 'hub' / 'checkpoints' /
                                           'resnet18.safetensors')
    backbone = resnet_backbone('resnet18', weights='imagenet')
    assert torch.equal(backbone.layer1[0].conv1.weight, reference['layer1.0.conv1.weight'])


def test_backbone_weights_missing_or_pickled(tmp_path):
    missing = tmp_path / 'nowhere' / 'resnet101.safetensors'
    with pytest.raises(WeightsError, match=r'resnet101 not found: .*nowhere.*save_file'):
        flow2seg_paper(num_classes=3, backbone_weights=missing, use_flow=False)
    pickled = tmp_path / 'resnet18.safetensors'
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), pickled)
    with pytest.raises(WeightsError, match=r'resnet18\.safetensors is a zip.*torch\.save'):
        resnet_backbone('resnet18', weights=pickled)
    pth = tmp_path / 'resnet18.pth'
    pth.write_bytes(b'x')
    with pytest.raises(WeightsError, match=r'must be a \.safetensors file.*resnet18\.pth'):
        resnet_backbone('resnet18', weights=pth)
    wrong = tmp_path / 'resnet50.safetensors'
    _save_torchvision_resnet18(wrong)
    with pytest.raises(WeightsError, match='do not fit resnet50'):
        resnet_backbone('resnet50', weights=wrong)
