"""Reading and writing safetensors files, checked first: never a pickle.

A leaf module (no model code imported), so that model code (backbone weights), the model loader
(:mod:`flow2seg_ros.weights`) and the flow estimators all read weights the same way.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
import struct
from typing import Mapping, Optional, Union

from safetensors.torch import load_file, save_file
import torch

__all__ = ['WeightsError', 'read_safetensors', 'write_safetensors']

_MAX_HEADER_BYTES = 100 * 1024 * 1024

PathLike = Union[str, os.PathLike]


class WeightsError(ValueError):
    """A weights file or model card that cannot be used; the message names the file."""


def _describe_non_safetensors(head: bytes) -> str:
    if head.startswith(b'PK\x03\x04'):
        return ('a zip archive, such as a PyTorch checkpoint written by torch.save; it is refused '
                'because loading it means unpickling, which can run arbitrary code; convert it '
                'to safetensors with safetensors.torch.save_file(state_dict, path)')
    if head[:1] == b'\x80' and head[1:2] in (b'\x02', b'\x03', b'\x04', b'\x05'):
        return ('a Python pickle (e.g. an old torch.save checkpoint); it is refused because '
                'unpickling can run arbitrary code; convert it to safetensors with '
                'safetensors.torch.save_file(state_dict, path)')
    return 'not a safetensors file (no valid safetensors header)'


def _is_safetensors(path: Path) -> tuple[bool, bytes]:
    size = path.stat().st_size
    with open(path, 'rb') as f:
        head = f.read(8)
        if len(head) < 8:
            return False, head
        (length,) = struct.unpack('<Q', head)
        if length < 2 or length > _MAX_HEADER_BYTES or 8 + length > size:
            return False, head
        header = f.read(length)
    try:
        parsed = json.loads(header.decode('utf-8'))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False, head
    return isinstance(parsed, dict), head


def read_safetensors(path: PathLike, *,
                     device: Union[str, torch.device] = 'cpu') -> dict[str, torch.Tensor]:
    """Read tensors from a safetensors file after checking that it is one.

    Args:
        path: the file.
        device: where to put the tensors.

    Raises:
        WeightsError: the file is missing, a pickle/zip checkpoint or otherwise not safetensors.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f'weights file not found: {path}')
    ok, head = _is_safetensors(path)
    if not ok:
        raise WeightsError(f'{path} is {_describe_non_safetensors(head)}')
    try:
        return load_file(str(path), device=str(device))
    except Exception as exc:  # safetensors raises its own error types for corrupt payloads
        raise WeightsError(f'{path} is not a readable safetensors file: {exc}') from exc


def write_safetensors(path: PathLike, tensors: Mapping[str, torch.Tensor], *,
                      metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write tensors atomically (a temporary file renamed into place), contiguous and on the CPU.

    Args:
        path: destination file.
        tensors: name -> tensor.
        metadata: optional string metadata stored in the file's header.
    """
    path = Path(path)
    state = {k: v.detach().to('cpu').contiguous() for k, v in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    save_file(state, str(tmp), metadata=dict(metadata) if metadata else None)
    os.replace(tmp, path)
