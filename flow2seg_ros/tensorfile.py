"""Reading and writing safetensors files, checked first: never a pickle.

A leaf module (no model code imported), so that model code (backbone weights), the model loader
(:mod:`flow2seg_ros.weights`) and the flow estimators all read weights the same way.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
import struct
from typing import Any, Mapping, Optional, Union

from safetensors.torch import load_file, save_file
import torch

__all__ = ['WeightsError', 'card_path', 'read_safetensors', 'read_with_card',
           'write_safetensors', 'write_with_card']

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


def card_path(path: PathLike) -> Path:
    """The JSON card beside a weights file: same stem, ``.json``.

    Args:
        path: the ``.safetensors`` weights file.
    """
    return Path(path).with_suffix('.json')


def read_with_card(path: PathLike, *, what: str = 'weights',
                   card_what: str = 'model card') -> tuple[dict[str, torch.Tensor], Any, Path]:
    """The tensors of a weights file and the parsed JSON card beside it (every weights loader's
    first step: the segmentation model's and the learned flow's).

    Args:
        path: the ``.safetensors`` file.
        what: what the file is, for messages (``weights``, ``flow weights``).
        card_what: what the card is, for messages.

    Returns:
        ``(tensors, card, card path)``; the card is whatever the JSON holds (the caller checks it).

    Raises:
        WeightsError: a missing, pickled or corrupt weights file, a missing card or one that is
            not JSON; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f'{what} file not found: {path}')
    state = read_safetensors(path)
    cpath = card_path(path)
    if not cpath.is_file():
        raise WeightsError(f'{card_what} not found: {cpath} (it belongs beside {path})')
    try:
        card = json.loads(cpath.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise WeightsError(f'{card_what} {cpath} is not valid JSON: {exc}') from exc
    return state, card, cpath


def write_with_card(path: PathLike, tensors: Mapping[str, torch.Tensor], card: Mapping[str, Any],
                    *, metadata: Optional[Mapping[str, str]] = None) -> None:
    """Write tensors and their JSON card beside them, each atomically.

    Raises:
        WeightsError: the card is not JSON-serialisable (nothing is written then).
    """
    path = Path(path)
    try:
        text = json.dumps(card, indent=2)
    except TypeError as exc:
        raise WeightsError(f'card for {path} is not JSON-serialisable: {exc}') from exc
    write_safetensors(path, tensors, metadata=metadata)
    cpath = card_path(path)
    tmp = cpath.with_name(cpath.name + '.tmp')
    tmp.write_text(text + '\n')
    os.replace(tmp, cpath)
