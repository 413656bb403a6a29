"""flow2seg-export: a Flow2Seg model as ONNX, for ONNX Runtime and TensorRT, beside its JSON card.

The graph has a fixed input size (the network's ``H x W``) and a batch dimension that is fixed
(``--batch N``, one slot per camera) or dynamic (``--dynamic-batch``). Exported with
``torch.onnx.export(..., dynamo=True)`` (the older TorchScript exporter refuses the pyramid
pooling's adaptive pooling at bin sizes that do not divide the feature map).

Inputs (float32):
    ``image`` (N, 3, H, W): RGB in [0, 1] normalised with the card's ``normalization`` mean/std.
    ``flow`` (N, 2, H, W): optical flow from each frame to the one before it, in pixels of the
        H x W input, times ``flow.scale / W`` (the card's scale; see :mod:`flow2seg_ros.flow`).
        Absent from an image-only model's graph.

Outputs (float32 logits at the network's native stride, not upsampled):
    ``fused_logits`` (N, C, H/8, W/8): the labels are the argmax over C after a bilinear upsampling
        to H x W (``align_corners=False``); on a first frame (no flow) use ``image_logits``.
    ``image_logits`` (N, C, H/8, W/8): the image path alone.
    ``flow_logits`` (N, C, h', w'): the flow path alone (its own stride, 16 for the lite preset).

The JSON card beside the ``.onnx`` (same stem) is the model card plus an ``onnx`` section that
records the above, the exported size and batch, and the weights' digest, so a runtime can check
that an ``.onnx`` belongs to the weights it was given.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import logging
import os
from pathlib import Path
import sys
import tempfile
from typing import Any, Optional, Sequence, Union
import warnings

import torch
from torch import nn

from flow2seg_ros.cli import cli_main, size_arg
from flow2seg_ros.models.flow2seg import MIN_INPUT_SIZE
from flow2seg_ros.weights import load_model

__all__ = ['ONNX_FORMAT', 'DEFAULT_OPSET', 'INPUTS', 'OUTPUTS', 'OnnxGraph', 'weights_digest',
           'export_onnx', 'onnx_card_path', 'get_args_parser', 'main']

log = logging.getLogger(__name__)

#: Value of the card's ``onnx.format`` key.
ONNX_FORMAT = 'flow2seg-onnx/1'
#: Graph inputs (an image-only model has no ``flow``).
INPUTS = ('image', 'flow')
#: Graph outputs (an image-only model has no ``flow_logits``).
OUTPUTS = ('fused_logits', 'image_logits', 'flow_logits')
#: ONNX operator set written by default.
DEFAULT_OPSET = 18

PathLike = Union[str, os.PathLike]


class OnnxGraph(nn.Module):
    """What is exported: the model's three parts at their native strides, no upsampling.

    Args:
        model: a Flow2Seg model (``image_logits``, ``flow_logits``, ``fuse``, ``has_flow``).
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor,
                flow: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, ...]:
        # (fused_logits, image_logits[, flow_logits]) at native strides
        image_logits, _ = self.model.image_logits(image)
        if flow is None:
            return image_logits, image_logits
        flow_logits = self.model.flow_logits(flow)
        return self.model.fuse(image_logits, flow_logits), image_logits, flow_logits


def weights_digest(model: nn.Module) -> str:
    """SHA-256 over the model's parameters and buffers (names, dtypes, shapes and bytes).

    Args:
        model: any module; the same weights give the same digest on any device.
    """
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to('cpu').contiguous()
        h.update(f'{name}:{t.dtype}:{tuple(t.shape)};'.encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b'')
    return h.hexdigest()


def onnx_card_path(path: PathLike) -> Path:
    """The JSON card beside an ``.onnx`` file: same stem, ``.json``."""
    return Path(path).with_suffix('.json')


def export_onnx(model: nn.Module, card: dict[str, Any], path: PathLike, *,
                input_size: Optional[Sequence[int]] = None, batch: int = 1,
                dynamic_batch: bool = False, digest: Optional[str] = None,
                opset: int = DEFAULT_OPSET) -> dict[str, Any]:
    """Write ``path`` (.onnx) and its JSON card beside it; return the card.

    The file is written to a temporary name in the same folder and renamed, so a reader never
    sees half a file (several processes may build the same cached model at once).

    Args:
        model: the Flow2Seg model (any device; exported on the CPU in fp32).
        card: its model card.
        input_size: network input (H, W); None = the card's.
        batch: the batch size N of a fixed-batch graph (and of the example input).
        dynamic_batch: make N dynamic (1..64) instead of fixed.
        digest: :func:`weights_digest` of the model, if already known.
        opset: ONNX operator set, >= 18 (the dynamo exporter's oldest; 18 is what TensorRT 10
            parses and ONNX Runtime runs).

    Raises:
        ValueError: a bad size or batch.
    """
    size = input_size or card.get('input_size')
    if not size:
        raise ValueError('no network input size: neither the arguments nor the model card '
                         'give one')
    h, w = int(size[0]), int(size[1])
    if h < MIN_INPUT_SIZE or w < MIN_INPUT_SIZE or h % 8 or w % 8:
        raise ValueError(f'network input size must be multiples of 8 and >= {MIN_INPUT_SIZE}, '
                         f'got {w}x{h} (WxH)')
    if batch < 1:
        raise ValueError(f'batch must be >= 1, got {batch}')
    if opset < 18:
        raise ValueError(f'opset must be >= 18 (the oldest the exporter writes), got {opset}')
    path = Path(path)
    if path.suffix != '.onnx':
        raise ValueError(f'the output must end in .onnx, got {path}')
    cpu_model = copy.deepcopy(model).to('cpu').float().eval()
    digest = digest or weights_digest(cpu_model)
    has_flow = bool(getattr(cpu_model, 'has_flow', False))
    graph = OnnxGraph(cpu_model).eval()
    image = torch.zeros(batch, 3, h, w)
    inputs: tuple[torch.Tensor, ...] = (image,)
    input_names = ['image']
    output_names = list(OUTPUTS[:2])
    if has_flow:
        inputs += (torch.zeros(batch, 2, h, w),)
        input_names.append('flow')
        output_names.append('flow_logits')
    dynamic_shapes = None
    if dynamic_batch:
        n = torch.export.Dim('batch', min=1, max=64)
        dynamic_shapes = {name: {0: n} for name in input_names}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.stem + '.', suffix='.onnx.tmp', dir=path.parent)
    os.close(fd)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter('ignore')
            program = torch.onnx.export(graph, inputs, dynamo=True, input_names=input_names,
                                        output_names=output_names, opset_version=opset,
                                        dynamic_shapes=dynamic_shapes, verbose=False)
            program.save(tmp, external_data=False)
        with torch.no_grad():
            outs = graph(*inputs)
        out_shapes = {name: ['N' if dynamic_batch else batch] + list(o.shape[1:])
                      for name, o in zip(output_names, outs)}
        onnx_card = dict(card)
        onnx_card['input_size'] = [h, w]
        onnx_card['onnx'] = {
            'format': ONNX_FORMAT,
            'file': path.name,
            'input_size': [h, w],
            'batch': 'dynamic' if dynamic_batch else batch,
            'inputs': {name: ['N' if dynamic_batch else batch, 3 if name == 'image' else 2, h, w]
                       for name in input_names},
            'outputs': out_shapes,
            'weights_sha256': digest,
            'opset': opset,
            'exporter': f'torch {torch.__version__} (dynamo)',
        }
        card_tmp = Path(tmp).with_suffix('.json.tmp')
        card_tmp.write_text(json.dumps(onnx_card, indent=2))
        os.replace(tmp, path)
        os.replace(card_tmp, onnx_card_path(path))
    finally:
        for leftover in (Path(tmp), Path(tmp).with_suffix('.json.tmp')):
            if leftover.exists():
                leftover.unlink()
    log.info('exported %s (%dx%d, batch %s)', path, w, h, onnx_card['onnx']['batch'])
    return onnx_card


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='flow2seg-export',
        description='Export a Flow2Seg model (image and flow inputs, fused, image and flow '
                    'logits) as ONNX beside its JSON card, for ONNX Runtime and TensorRT.',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--weights', default=None,
                        help='model .safetensors (with its .json card) or a bundled model name; '
                             'default: the bundled model')
    parser.add_argument('--size', type=size_arg(MIN_INPUT_SIZE), default=None,
                        help="network input WxH (multiples of 8); default: the card's")
    group = parser.add_mutually_exclusive_group()
    group.add_argument('--batch', type=int, default=1,
                       help='fixed batch size (one slot per camera)')
    group.add_argument('--dynamic-batch', action='store_true',
                       help='a dynamic batch dimension instead of a fixed one')
    parser.add_argument('--opset', type=int, default=DEFAULT_OPSET,
                        help='ONNX operator set (>= 18)')
    parser.add_argument('--out', default=None,
                        help='output .onnx (the card goes beside it as .json); default: '
                             'flow2seg_<preset>_<W>x<H>.onnx here')
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = get_args_parser().parse_args(argv)

    def run() -> None:
        model, card = load_model(args.weights)
        if args.size is not None:
            size = (args.size[1], args.size[0])
        else:
            size = tuple(card.get('input_size') or ())
            if len(size) != 2:
                raise ValueError('the model card gives no input size: pass --size WxH')
        out = Path(args.out or f'flow2seg_{card.get("preset", "model")}_{size[1]}x{size[0]}.onnx')
        written = export_onnx(model, card, out, input_size=size, batch=args.batch,
                              dynamic_batch=args.dynamic_batch, opset=args.opset)
        info = written['onnx']
        print(f'wrote {out} and {onnx_card_path(out)}: input {size[1]}x{size[0]}, batch '
              f'{info["batch"]}, inputs {", ".join(info["inputs"])}, outputs '
              f'{", ".join(info["outputs"])}')

    return cli_main('flow2seg-export', run)


if __name__ == '__main__':
    sys.exit(main())
