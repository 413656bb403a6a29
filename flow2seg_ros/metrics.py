"""Segmentation metrics: confusion matrix (mIoU), temporal consistency, and a per-head evaluator.

Shapes: label maps are (H, W) integer arrays of train ids with 255 = ignore; flow is (2, H, W) or
(H, W, 2) float pixels.
"""
from __future__ import annotations

from typing import Callable, Iterable, Optional

import cv2
import numpy as np

from flow2seg_ros.classes import ClassSet, IGNORE_INDEX
from flow2seg_ros.flow import DISFlow
from flow2seg_ros.models import HEADS

__all__ = ['ConfusionMatrix', 'TemporalConsistency', 'HeadsEvaluator', 'warp_nearest']


class ConfusionMatrix:
    """Accumulated C x C confusion matrix (rows = ground truth, columns = prediction).

    Args:
        num_classes: C.
        ignore_index: target value that is skipped.
    """

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        # One extra column counts predictions outside the classes (e.g. ignore): they are wrong
        # for the true class but belong to no class's false positives.
        self._m = np.zeros((num_classes, num_classes + 1), np.int64)

    @property
    def matrix(self) -> np.ndarray:
        """(C, C) counts, rows = ground truth, columns = prediction."""
        return self._m[:, :self.num_classes]

    def update(self, pred: np.ndarray, target: np.ndarray) -> None:
        """Add one (H, W) prediction against its (H, W) target."""
        if pred.shape != target.shape:
            raise ValueError(f'prediction {pred.shape} and target {target.shape} differ in size')
        t = target.reshape(-1).astype(np.int64)
        p = np.minimum(pred.reshape(-1).astype(np.int64), self.num_classes)
        keep = t < self.num_classes  # drops ignore (255) and anything else outside the classes
        n = self.num_classes + 1
        self._m += np.bincount(t[keep] * n + p[keep], minlength=self.num_classes * n) \
            .reshape(self.num_classes, n)

    def iou(self) -> np.ndarray:
        """(C,) IoU per class; nan for a class absent from both truth and prediction."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self._m.sum(1) + self.matrix.sum(0) - tp
        with np.errstate(invalid='ignore', divide='ignore'):
            return np.where(union > 0, tp / np.maximum(union, 1), np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes that appear (in truth or prediction)."""
        iou = self.iou()
        return float(np.nanmean(iou)) if np.isfinite(iou).any() else float('nan')

    def pixel_accuracy(self) -> float:
        total = self._m.sum()
        return float(np.diag(self.matrix).sum() / total) if total else float('nan')


def warp_nearest(labels: np.ndarray, flow: np.ndarray,
                 fill: int = IGNORE_INDEX) -> np.ndarray:
    """Sample ``labels`` at ``x + flow(x)`` with nearest interpolation; outside -> ``fill``.

    Args:
        labels: (H, W) uint8 label map to sample from.
        flow: (2, H, W) or (H, W, 2) offsets in pixels, on the grid of the output.
    """
    if flow.ndim == 3 and flow.shape[0] == 2:
        flow = flow.transpose(1, 2, 0)
    h, w = flow.shape[:2]
    gx, gy = np.meshgrid(np.arange(w, dtype=np.float32), np.arange(h, dtype=np.float32))
    map_x = gx + flow[..., 0]
    map_y = gy + flow[..., 1]
    return cv2.remap(labels, map_x, map_y, cv2.INTER_NEAREST,
                     borderMode=cv2.BORDER_CONSTANT, borderValue=fill)


class TemporalConsistency:
    """Temporal consistency (TC): mIoU between the prediction of t and that of t+1 warped to t.

    Intersections and unions are accumulated over all pairs, then averaged over classes, as in
    "Efficient Semantic Video Segmentation with Per-frame Inference". Higher is steadier.
    """

    def __init__(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.inter = np.zeros(num_classes, np.int64)
        self.union = np.zeros(num_classes, np.int64)
        self.pairs = 0

    def update(self, pred_t: np.ndarray, pred_t1: np.ndarray, flow_t_to_t1: np.ndarray) -> None:
        """Add one pair; ``flow_t_to_t1`` lies on frame t's grid and points into frame t+1."""
        warped = warp_nearest(pred_t1, flow_t_to_t1)
        valid = (warped != IGNORE_INDEX) & (pred_t < self.num_classes)
        a = pred_t[valid].astype(np.int64)
        b = warped[valid].astype(np.int64)
        n = self.num_classes
        count_a = np.bincount(a, minlength=n)[:n]
        count_b = np.bincount(b[b < n], minlength=n)[:n]
        inter = np.bincount(a[a == b], minlength=n)[:n]
        self.inter += inter
        self.union += count_a + count_b - inter
        self.pairs += 1

    def value(self) -> float:
        ok = self.union > 0
        return float(np.mean(self.inter[ok] / self.union[ok])) if ok.any() else float('nan')


class HeadsEvaluator:
    """mIoU, per-class IoU, pixel accuracy and TC for each head of a stream of predictions.

    One accumulator shared by ``flow2seg-evaluate``, bag evaluation and the demo. Feed frames in
    stream order; call :meth:`new_sequence` between sequences so no TC pair spans two of them.

    Args:
        classes: the class set (names for the per-class table).
        heads: which heads to score.
        tc_flow: flow estimator for TC, called as ``tc_flow(prev_rgb, cur_rgb)`` with the usual
            current->previous convention; default DIS medium on the CPU.
        temporal: measure TC; False scores frames one by one (independent frame pairs, as in
            training-time validation): ``rgb`` may then be None and TC is None.
    """

    def __init__(self, classes: ClassSet, heads: Iterable[str] = HEADS,
                 tc_flow: Optional[Callable] = None, *, temporal: bool = True) -> None:

        self.classes = classes
        self.heads = tuple(heads)
        self.temporal = temporal
        self.tc_flow = (tc_flow or DISFlow('medium')) if temporal else None
        self.cm = {h: ConfusionMatrix(classes.num_classes, classes.ignore_index)
                   for h in self.heads}
        self.tc = {h: TemporalConsistency(classes.num_classes) for h in self.heads}
        self.frames = 0
        self.labelled = 0
        self._prev: Optional[tuple[np.ndarray, dict[str, np.ndarray]]] = None

    def new_sequence(self) -> None:
        self._prev = None

    def update(self, rgb: Optional[np.ndarray], head_labels: dict[str, Optional[np.ndarray]],
               target: Optional[np.ndarray] = None) -> None:
        """Add one frame: its RGB image, each head's (H, W) labels, and its target or None.

        A head whose labels are None (the flow head on a first frame) is left out of this frame.
        """
        self.frames += 1
        if target is not None:
            self.labelled += 1
            for h in self.heads:
                if head_labels.get(h) is not None:
                    self.cm[h].update(head_labels[h], target)
        if not self.temporal:
            return
        if self._prev is not None:
            prev_rgb, prev_labels = self._prev
            if prev_rgb.shape == rgb.shape:
                # flow from t (prev) to t+1 (current) on t's grid: call with the roles swapped.
                flow = self.tc_flow(rgb, prev_rgb).cpu().numpy()
                for h in self.heads:
                    a, b = prev_labels.get(h), head_labels.get(h)
                    if a is not None and b is not None:
                        self.tc[h].update(a, b, flow)
        self._prev = (rgb, dict(head_labels))

    def summary(self) -> dict:
        """Per head: miou, per_class_iou {name: iou or None}, pixel_accuracy, tc, tc_pairs."""
        out = {'frames': self.frames, 'labelled_frames': self.labelled, 'heads': {}}
        for h in self.heads:
            iou = self.cm[h].iou()
            out['heads'][h] = {
                'miou': _num(self.cm[h].miou()),
                'per_class_iou': {n: _num(v) for n, v in zip(self.classes.names, iou)},
                'pixel_accuracy': _num(self.cm[h].pixel_accuracy()),
                'tc': _num(self.tc[h].value()),
                'tc_pairs': self.tc[h].pairs,
            }
        return out

    def table(self) -> str:
        """The summary as a text table (rows: heads; columns: mIoU, TC, pixel accuracy), in %."""
        s = self.summary()['heads']
        lines = [f'{"head":<8} {"mIoU":>7} {"TC":>7} {"pixAcc":>7}']
        for h, r in s.items():
            lines.append(f'{h:<8} {_pct(r["miou"])} {_pct(r["tc"])} {_pct(r["pixel_accuracy"])}')
        return '\n'.join(lines)


def _num(x: float) -> Optional[float]:
    return None if x is None or not np.isfinite(x) else float(x)


def _pct(x: Optional[float]) -> str:
    return f'{"-":>7}' if x is None else f'{100 * x:7.2f}'
