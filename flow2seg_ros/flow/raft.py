"""torchvision RAFT optical flow, for GPUs.

Weights never download: pass a local ``.safetensors`` file, or put one in the torch hub cache as
``<torch hub dir>/checkpoints/raft_small.safetensors`` (or ``raft_large``). A missing file is an
error when the estimator is built (node start-up), not at the first frame. To make such a file
from torchvision's published ``.pth`` on a trusted, networked machine::

    python -c "import torchvision.models.optical_flow as m, safetensors.torch as s; \
s.save_file(m.raft_small(weights='DEFAULT').state_dict(), 'raft_small.safetensors')"
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from flow2seg_ros.flow.base import FlowEstimator

__all__ = ['RAFTFlow', 'find_raft_weights']


def find_raft_weights(arch: str, weights: str | Path | None) -> Path:
    """The local weights file for ``arch``; raises FileNotFoundError saying where to put one."""
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f'{arch} weights not found: {path}')
        return path
    cache = Path(torch.hub.get_dir()) / 'checkpoints'
    found = sorted(cache.glob(f'{arch}*.safetensors')) if cache.is_dir() else []
    if not found:
        raise FileNotFoundError(
            f'no {arch} weights: pass a local .safetensors file (flow weights parameter) or put '
            f'{cache / (arch + ".safetensors")}; nothing is downloaded at run time')
    return found[0]


class RAFTFlow(FlowEstimator):
    """torchvision's RAFT (small or large) on the given device.

    Args:
        arch: ``raft_small`` or ``raft_large``.
        device: where RAFT runs and the flow is returned.
        weights: local .safetensors file, or None to look in the torch hub cache.
        iterations: refinement iterations (default 12, as torchvision).
        model: an already built RAFT module (tests inject a tiny one); skips weight loading.
    """

    def __init__(self, arch: str = 'raft_small', *, device: str | torch.device = 'cpu',
                 weights: str | Path | None = None, iterations: int | None = None,
                 model: torch.nn.Module | None = None) -> None:
        super().__init__(device)
        from torchvision.models import optical_flow

        if arch not in ('raft_small', 'raft_large'):
            raise ValueError(f'unknown RAFT variant {arch!r}; choose raft_small or raft_large')
        self.name = arch
        self.iterations = iterations or 12
        if model is None:
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            path = find_raft_weights(arch, weights)
            model = getattr(optical_flow, arch)(weights=None, progress=False)
            try:
                state = load_file(str(path))
            except (SafetensorError, OSError, ValueError) as exc:
                raise ValueError(f'{path}: not a valid safetensors weights file ({exc})') from exc
            missing, unexpected = model.load_state_dict(state, strict=False)
            if missing or unexpected:
                raise ValueError(f'{path}: does not hold {arch} weights (missing '
                                 f'{len(missing)}, unexpected {len(unexpected)} tensors)')
        self.model = model.eval().to(self.device)

    def _prepare(self, rgb: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(rgb).to(self.device, non_blocking=True)
        return t.permute(2, 0, 1).unsqueeze(0).float().div_(127.5).sub_(1.0)

    @torch.inference_mode()
    def estimate(self, prev_rgb: np.ndarray, cur_rgb: np.ndarray) -> torch.Tensor:
        h, w = cur_rgb.shape[:2]
        cur, prev = self._prepare(cur_rgb), self._prepare(prev_rgb)
        # RAFT needs H and W divisible by 8: pad by replication, crop the flow back.
        ph, pw = (-h) % 8, (-w) % 8
        if ph or pw:
            cur = F.pad(cur, (0, pw, 0, ph), mode='replicate')
            prev = F.pad(prev, (0, pw, 0, ph), mode='replicate')
        flow = self.model(cur, prev, num_flow_updates=self.iterations)[-1]
        return flow[0, :, :h, :w].float()
