"""Who runs the network: PyTorch or ONNX Runtime, behind one small interface.

The pipeline calls the model in three parts, so that the flow path can run in another thread
while the image path runs (see :mod:`flow2seg_ros.pipeline`):

* ``image_logits(x, shared=False)``: (N, 3, H, W) normalised image -> (N, C, H/8, W/8) logits;
  ``shared=True`` says another thread (the flow) is busy on one of the cores meanwhile;
* ``flow_logits(flow, shared=False)``: (N, 2, H, W) scaled flow -> (N, C, h', w') logits;
  ``shared=True`` when called from the flow thread (one thread);
* ``fuse(image_logits, flow_logits)`` -> (N, C, H/8, W/8) fused logits.

All take and return torch tensors; logits stay at the network's native strides (the pipeline
upsamples only what it needs).

Backends (:data:`BACKENDS`): ``torch`` (eager PyTorch, for training and GPUs), ``onnxruntime``
(ONNX Runtime on the CPU) and ``auto``, the one measured faster on the device: ONNX Runtime on
the CPU (about 2x faster than eager PyTorch for the lite model on 2 cores), PyTorch on CUDA.
ONNX Runtime runs the file :func:`flow2seg_ros.export.export_onnx` writes: one given by the
user, or one built on first use into a cache folder (:func:`default_cache_dir`), keyed by the
weights' digest and the input size. The three parts are cut from that one file by tensor names.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from flow2seg_ros.export import export_onnx, onnx_card_path, weights_digest

__all__ = ['BACKENDS', 'OnnxModelError', 'TorchRunner', 'OrtRunner', 'default_cache_dir',
           'cached_onnx', 'resolve_backend', 'make_runner']

log = logging.getLogger(__name__)

BACKENDS = ('auto', 'torch', 'onnxruntime')
#: What the onnxruntime backend needs: the runtime, and the exporter's packages.
ONNX_PACKAGES = ('onnxruntime', 'onnx', 'onnxscript')

PathLike = Union[str, os.PathLike]


class OnnxModelError(ValueError):
    """An ``.onnx`` file that is missing, unreadable or does not fit the model and size."""


def _onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:  # pragma: no cover - a pinned requirement
        raise ValueError('backend onnxruntime needs the onnxruntime package '
                         '(pip install -r requirements.txt)') from exc
    return onnxruntime


def resolve_backend(backend: str, device: torch.device) -> str:
    """``auto`` -> ``onnxruntime`` on the CPU, ``torch`` on CUDA; checks the others.

    ``auto`` also falls back to ``torch`` (with a warning) where the ONNX packages
    (:data:`ONNX_PACKAGES`) are not installed.

    Args:
        backend: one of :data:`BACKENDS`.
        device: the pipeline's torch device.

    Raises:
        ValueError: an unknown backend, or onnxruntime on a CUDA device.
    """
    if backend not in BACKENDS:
        raise ValueError(f'backend must be one of {BACKENDS}, got {backend!r}')
    if backend == 'auto':
        if device.type != 'cpu':
            return 'torch'
        missing = [name for name in ONNX_PACKAGES if importlib.util.find_spec(name) is None]
        if missing:
            log.warning('backend auto: %s not installed, running the network in torch',
                        ', '.join(missing))
            return 'torch'
        return 'onnxruntime'
    if backend == 'onnxruntime' and device.type != 'cpu':
        raise ValueError(f'backend onnxruntime runs on the CPU; device {device} needs backend '
                         f'torch (or auto)')
    return backend


def default_cache_dir() -> Path:
    """``$FLOW2SEG_CACHE``, else ``$XDG_CACHE_HOME/flow2seg_ros``, else ``~/.cache/...``."""
    if os.environ.get('FLOW2SEG_CACHE'):
        return Path(os.environ['FLOW2SEG_CACHE'])
    base = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
    return Path(base) / 'flow2seg_ros'


class TorchRunner:
    """The network in eager PyTorch.

    Args:
        model: a Flow2Seg model on its device, in eval mode.
        fp16: autocast to float16 (CUDA).
        threads: CPU threads for the network (0 = torch's setting); with ``shared=True`` the
            image path uses one fewer while the flow thread works.
    """

    name = 'torch'

    def __init__(self, model: nn.Module, *, fp16: bool = False, threads: int = 0) -> None:
        self.model = model
        self.fp16 = fp16
        self.threads = threads or torch.get_num_threads()
        self.has_flow = bool(getattr(model, 'has_flow', True))

    def _autocast(self) -> Any:
        return torch.autocast('cuda', dtype=torch.float16, enabled=self.fp16)

    def image_logits(self, x: torch.Tensor, *, shared: bool = False) -> torch.Tensor:
        cpu = x.device.type == 'cpu'
        if shared and cpu and self.threads > 1:
            torch.set_num_threads(self.threads - 1)
        try:
            with self._autocast():
                return self.model.image_logits(x)[0]
        finally:
            if shared and cpu and self.threads > 1:
                torch.set_num_threads(self.threads)

    def flow_logits(self, flow: torch.Tensor, *, shared: bool = False) -> torch.Tensor:
        # shared=True: called from the flow thread, which runs torch on one thread already
        with self._autocast():
            return self.model.flow_logits(flow)

    def fuse(self, image_logits: torch.Tensor, flow_logits: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self.model.fuse(image_logits, flow_logits)


def _shape(value_info: Any) -> list[Union[int, str]]:
    return [d.dim_value if d.HasField('dim_value') else (d.dim_param or '?')
            for d in value_info.type.tensor_type.shape.dim]


class OrtRunner:
    """The network in ONNX Runtime on the CPU, from a file :func:`export_onnx` wrote.

    Sessions: the image path and the flow path each with all threads (when they run alone) and
    with fewer (the image path with one thread fewer while the flow thread works, the flow path
    with one thread in the flow thread), the fusion with all threads. Idle session threads
    sleep instead of spinning: spinning ones take the cores from the flow thread and from any
    torch work in the process (measured with them spinning: torchvision's LRASPP beside the
    pipeline 40 ms -> 1.5 s, the pipeline itself slower too).

    Args:
        path: the ``.onnx`` file.
        input_size: the network input (H, W) the pipeline feeds.
        num_classes: the model's classes C.
        has_flow: whether the model has a flow path (the graph must then take ``flow``).
        digest: the weights' :func:`weights_digest`; checked against the card beside the file.
        threads: CPU threads (0 = torch's setting).

    Raises:
        OnnxModelError: naming the file, when it is missing, not ONNX, not an export of this
            project, of another size or class count, or of other weights.
    """

    name = 'onnxruntime'

    def __init__(self, path: PathLike, *, input_size: Sequence[int], num_classes: int,
                 has_flow: bool, digest: Optional[str] = None, threads: int = 0) -> None:
        import onnx
        import onnx.utils

        ort = _onnxruntime()
        self.path = path = Path(path)
        if not path.is_file():
            raise OnnxModelError(f'ONNX model {path} does not exist')
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # DecodeError and friends: not an ONNX file
            raise OnnxModelError(f'ONNX model {path} cannot be read ({type(exc).__name__}: '
                                 f'{exc}); export it again with flow2seg-export') from exc
        inputs = {i.name: _shape(i) for i in model.graph.input}
        outputs = {o.name: _shape(o) for o in model.graph.output}
        h, w = int(input_size[0]), int(input_size[1])
        if 'image' not in inputs or 'fused_logits' not in outputs \
                or 'image_logits' not in outputs:
            raise OnnxModelError(f'ONNX model {path} is not a flow2seg-export graph (inputs '
                                 f'{sorted(inputs)}, outputs {sorted(outputs)})')
        if list(inputs['image'][1:]) != [3, h, w]:
            got = inputs['image']
            raise OnnxModelError(f'ONNX model {path} takes {got[3]}x{got[2]} (WxH) images, '
                                 f'the pipeline feeds {w}x{h}: export it at that size')
        if outputs['fused_logits'][1] != num_classes:
            raise OnnxModelError(f'ONNX model {path} has {outputs["fused_logits"][1]} classes, '
                                 f'the model card {num_classes}')
        if has_flow != ('flow' in inputs and 'flow_logits' in outputs):
            raise OnnxModelError(f'ONNX model {path} ' + ('has no flow input but the model has '
                                                          'a flow path' if has_flow else
                                                          'takes flow but the model is '
                                                          'image-only'))
        card_file = onnx_card_path(path)
        if digest is not None and card_file.is_file():
            try:
                theirs = json.loads(card_file.read_text()).get('onnx', {}).get('weights_sha256')
            except (OSError, ValueError) as exc:
                raise OnnxModelError(f'card {card_file} of ONNX model {path} cannot be read: '
                                     f'{exc}') from exc
            if theirs and theirs != digest:
                raise OnnxModelError(f'ONNX model {path} was exported from other weights '
                                     f'(card {card_file}); export these weights again')
        batch = inputs['image'][0]
        self.batch = batch if isinstance(batch, int) and batch > 0 else None  # None = dynamic
        self.has_flow = has_flow
        self.threads = threads or torch.get_num_threads()

        def session(proto: Any, n_threads: int) -> Any:
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = max(1, n_threads)
            opts.inter_op_num_threads = 1
            opts.add_session_config_entry('session.intra_op.allow_spinning', '0')
            opts.log_severity_level = 3
            try:
                return ort.InferenceSession(proto.SerializeToString(), opts,
                                            providers=['CPUExecutionProvider'])
            except Exception as exc:  # ORT's own Fail / InvalidGraph errors
                raise OnnxModelError(f'ONNX Runtime cannot load {path}: {exc}') from exc

        extractor = onnx.utils.Extractor(model)
        image_part = extractor.extract_model(['image'], ['image_logits'])
        self._image = session(image_part, self.threads)
        self._image_shared = (session(image_part, self.threads - 1) if self.threads > 1
                              else self._image)
        if has_flow:
            flow_part = extractor.extract_model(['flow'], ['flow_logits'])
            self._flow = session(flow_part, 1)
            self._flow_all = session(flow_part, self.threads) if self.threads > 1 else self._flow
            self._fuse = session(extractor.extract_model(['image_logits', 'flow_logits'],
                                                         ['fused_logits']), self.threads)

    def _run(self, sess: Any, output: str, feeds: dict[str, torch.Tensor]) -> torch.Tensor:
        arrays = {k: v.detach().to('cpu', torch.float32).contiguous().numpy()
                  for k, v in feeds.items()}
        n = next(iter(arrays.values())).shape[0]
        b = self.batch
        if b is None or n == b:
            return torch.from_numpy(sess.run([output], arrays)[0])
        # a fixed batch of b: chunks of b frames, the last one padded with copies of its last
        outs = []
        for start in range(0, n, b):
            chunk = {k: a[start:start + b] for k, a in arrays.items()}
            m = next(iter(chunk.values())).shape[0]
            if m < b:
                chunk = {k: np.concatenate([a, np.repeat(a[-1:], b - m, axis=0)])
                         for k, a in chunk.items()}
            outs.append(torch.from_numpy(sess.run([output], chunk)[0][:m]))
        return torch.cat(outs)

    def image_logits(self, x: torch.Tensor, *, shared: bool = False) -> torch.Tensor:
        return self._run(self._image_shared if shared else self._image, 'image_logits',
                         {'image': x})

    def flow_logits(self, flow: torch.Tensor, *, shared: bool = False) -> torch.Tensor:
        return self._run(self._flow if shared else self._flow_all, 'flow_logits',
                         {'flow': flow})

    def fuse(self, image_logits: torch.Tensor, flow_logits: torch.Tensor) -> torch.Tensor:
        return self._run(self._fuse, 'fused_logits',
                         {'image_logits': image_logits, 'flow_logits': flow_logits})


def cached_onnx(model: nn.Module, card: dict[str, Any], input_size: Sequence[int], *,
                cache_dir: Optional[PathLike] = None, digest: Optional[str] = None) -> Path:
    """The model's ONNX export (dynamic batch) in the cache folder, exported on first use.

    Args:
        model: the Flow2Seg model.
        card: its model card.
        input_size: network input (H, W).
        cache_dir: the folder; None = :func:`default_cache_dir`.
        digest: :func:`weights_digest` of the model, if known.
    """
    digest = digest or weights_digest(model)
    h, w = int(input_size[0]), int(input_size[1])
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = folder / f'flow2seg_{digest[:16]}_{w}x{h}.onnx'
    if not (path.is_file() and onnx_card_path(path).is_file()):
        log.info('building the ONNX model %s (once for these weights and size)', path)
        try:
            export_onnx(model, card, path, input_size=(h, w), dynamic_batch=True, digest=digest)
        except OSError as exc:
            raise OnnxModelError(f'cannot write the ONNX model cache {folder} ({exc}); set '
                                 f'FLOW2SEG_CACHE to a writable folder, or export with '
                                 f'flow2seg-export and give the file') from exc
    return path


def make_runner(backend: str, model: nn.Module, card: dict[str, Any], *,
                device: torch.device, input_size: Sequence[int], fp16: bool = False,
                threads: int = 0, onnx_path: Optional[PathLike] = None,
                cache_dir: Optional[PathLike] = None) -> Union[TorchRunner, OrtRunner]:
    """The runner a pipeline uses.

    Args:
        backend: one of :data:`BACKENDS`.
        model: the Flow2Seg model (on ``device``).
        card: its model card.
        device: the pipeline's device.
        input_size: network input (H, W).
        fp16: autocast (torch on CUDA).
        threads: CPU threads (0 = torch's setting).
        onnx_path: an exported ``.onnx`` for these weights and size; None = build one into the
            cache on first use.
        cache_dir: the cache folder (None = :func:`default_cache_dir`).
    """
    backend = resolve_backend(backend, device)
    if backend == 'torch':
        if onnx_path is not None:
            log.warning('an .onnx file was given but the backend is torch; it is not used')
        return TorchRunner(model, fp16=fp16, threads=threads)
    digest = weights_digest(model)
    path = Path(onnx_path) if onnx_path is not None else cached_onnx(
        model, card, input_size, cache_dir=cache_dir, digest=digest)
    num_classes = int(getattr(model, 'num_classes', 0)) or len(card['classes']['names'])
    try:
        return OrtRunner(path, input_size=input_size, num_classes=num_classes,
                         has_flow=bool(getattr(model, 'has_flow', True)), digest=digest,
                         threads=threads)
    except OnnxModelError:
        if onnx_path is not None:
            raise
        # a damaged cache entry (an interrupted disk, say): build it again once
        log.warning('cached ONNX model %s is unusable; building it again', path)
        path.unlink(missing_ok=True)
        path = cached_onnx(model, card, input_size, cache_dir=cache_dir, digest=digest)
        return OrtRunner(path, input_size=input_size, num_classes=num_classes,
                         has_flow=bool(getattr(model, 'has_flow', True)), digest=digest,
                         threads=threads)
