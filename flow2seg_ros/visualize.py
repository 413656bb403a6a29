"""Pictures: colour masks, overlays, flow pictures and contact sheets (OpenCV, uint8 RGB)."""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

__all__ = ['colorize', 'overlay', 'flow_to_rgb', 'contact_sheet', 'label_tile']


def colorize(labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
    """(H, W) uint8 labels -> (H, W, 3) uint8 RGB through a (256, 3) palette (one LUT pass)."""
    lut = palette.reshape(256, 1, 3)
    return cv2.LUT(cv2.merge((labels, labels, labels)), lut)


def overlay(rgb: np.ndarray, color_mask: np.ndarray, alpha: float) -> np.ndarray:
    """Blend the colour mask over the image: ``(1 - alpha) * rgb + alpha * mask``."""
    return cv2.addWeighted(rgb, 1.0 - alpha, color_mask, alpha, 0.0)


def flow_to_rgb(flow: np.ndarray, max_magnitude: float | None = None) -> np.ndarray:
    """(2, H, W) or (H, W, 2) flow in pixels -> (H, W, 3) uint8 picture (hue = direction).

    For display only. ``max_magnitude`` fixes the brightness scale so that pictures of a stream
    are comparable; None scales each picture by its own largest motion.
    """
    if flow.ndim == 3 and flow.shape[0] == 2:
        flow = flow.transpose(1, 2, 0)
    mag, ang = cv2.cartToPolar(np.ascontiguousarray(flow[..., 0]),
                               np.ascontiguousarray(flow[..., 1]), angleInDegrees=True)
    top = float(max_magnitude) if max_magnitude else max(float(mag.max()), 1e-6)
    hsv = np.empty(flow.shape[:2] + (3,), np.uint8)
    hsv[..., 0] = (ang / 2).astype(np.uint8)
    hsv[..., 1] = 255
    hsv[..., 2] = np.clip(mag * (255.0 / top), 0, 255).astype(np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def label_tile(rgb: np.ndarray, text: str) -> np.ndarray:
    """A copy of ``rgb`` with a caption in its top-left corner."""
    out = np.ascontiguousarray(rgb).copy()
    cv2.rectangle(out, (0, 0), (8 + 9 * len(text), 20), (0, 0, 0), -1)
    cv2.putText(out, text, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1,
                cv2.LINE_AA)
    return out


def contact_sheet(rows: Sequence[Sequence[np.ndarray]], captions: Sequence[str] | None = None,
                  tile_width: int = 320) -> np.ndarray:
    """Grid of RGB tiles, each resized to ``tile_width``; captions label the first row's columns.

    Args:
        rows: a list of rows, each a list of (H, W, 3) uint8 images (one row per frame).
        captions: one caption per column.
        tile_width: width of each tile in pixels.
    """
    out_rows = []
    for r, row in enumerate(rows):
        tiles = []
        for c, img in enumerate(row):
            h = max(1, round(img.shape[0] * tile_width / img.shape[1]))
            tile = cv2.resize(img, (tile_width, h), interpolation=cv2.INTER_AREA)
            if captions and r == 0:
                tile = label_tile(tile, captions[c])
            tiles.append(tile)
        height = max(t.shape[0] for t in tiles)
        tiles = [cv2.copyMakeBorder(t, 0, height - t.shape[0], 0, 2, cv2.BORDER_CONSTANT)
                 for t in tiles]
        out_rows.append(cv2.hconcat(tiles))
    width = max(r.shape[1] for r in out_rows)
    out_rows = [cv2.copyMakeBorder(r, 0, 2, 0, width - r.shape[1], cv2.BORDER_CONSTANT)
                for r in out_rows]
    return cv2.vconcat(out_rows)
