"""Optical flow behind one small interface.

Every estimator is called as ``estimator(prev_rgb, cur_rgb)`` with two (H, W, 3) uint8 RGB frames
at the network's input size and returns a (2, H, W) float32 tensor on its device: the flow **from
the current frame to the previous one**, in pixels (for each pixel of the current frame, the
offset (dx, dy) to where it was in the previous frame). The flow therefore lies on the current
frame's grid, like the labels the network predicts for it.

Methods:
    ``dis`` (OpenCV DIS; presets ultrafast/fast/medium; the CPU default),
    ``farneback`` (OpenCV Farneback, the paper's "GF-flow"),
    ``raft_small`` / ``raft_large`` (torchvision RAFT, for GPUs; weights from a local file),
    ``learned`` (the bundled small network of :mod:`flow2seg_ros.flow.learned`; CPU or GPU),
    ``mixed`` (training only: each call answered by one of several methods at random, e.g.
    ``dis/medium+learned``, so that one model learns to use either flow).
"""
from flow2seg_ros.flow.base import FlowEstimator, scale_flow
from flow2seg_ros.flow.learned import LearnedFlow, resolve_flow_weights
from flow2seg_ros.flow.mixed import MixedFlow, parse_mix
from flow2seg_ros.flow.opencv import DISFlow, FarnebackFlow
from flow2seg_ros.flow.raft import RAFTFlow

__all__ = ['FLOW_METHODS', 'INFERENCE_FLOW_METHODS', 'FlowEstimator', 'DISFlow', 'FarnebackFlow',
           'LearnedFlow', 'MixedFlow', 'RAFTFlow', 'make_flow_estimator', 'scale_flow']

FLOW_METHODS = ('dis', 'farneback', 'raft_small', 'raft_large', 'learned', 'mixed')
#: The methods a running pipeline takes: ``mixed`` draws each frame's flow at random, so a node or
#: an evaluation given it would label every frame from another flow.
INFERENCE_FLOW_METHODS = tuple(m for m in FLOW_METHODS if m != 'mixed')


def make_flow_estimator(method: str = 'dis', preset: str = 'ultrafast', *,
                        device: str = 'cpu', weights: str | None = None) -> FlowEstimator:
    """Build a flow estimator by name.

    Args:
        method: one of ``dis``, ``farneback``, ``raft_small``, ``raft_large``, ``learned``.
        preset: DIS preset (``ultrafast``, ``fast``, ``medium``); for RAFT the number of
            refinement iterations as a string (``''`` = the method's default); for ``learned``
            the weights: ``''`` (the bundled default), the name of a bundled weights file
            (``flowlite_synthetic``) or a ``.safetensors`` path; for ``mixed`` the parts,
            ``method/preset`` joined by ``+`` (``''`` = ``dis/medium+learned``); ignored by
            Farneback.
        device: torch device of the returned flow (RAFT and the learned network run there).
        weights: RAFT weights, a local .safetensors file (None looks in the torch hub cache);
            for ``learned``, a weights file that takes precedence over ``preset``.
    """
    if method == 'dis':
        return DISFlow(preset or 'ultrafast', device=device)
    if method == 'farneback':
        return FarnebackFlow(device=device)
    if method in ('raft_small', 'raft_large'):
        iters = int(preset) if preset and str(preset).isdigit() else None
        return RAFTFlow(method, device=device, weights=weights, iterations=iters)
    if method == 'learned':
        return LearnedFlow(weights or resolve_flow_weights(preset), device=device)
    if method == 'mixed':
        parts = parse_mix(preset)
        return MixedFlow([make_flow_estimator(m, p, device=device, weights=weights)
                          for m, p in parts], [f'{m}/{p}' if p else m for m, p in parts])
    raise ValueError(f'unknown flow method {method!r}; choose one of {", ".join(FLOW_METHODS)}')
