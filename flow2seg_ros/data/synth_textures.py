"""Procedural textures and colour families of the synthetic street scenes.

Every function draws from the scene's random generator in a fixed order, so a seed gives the same
textures (and, through them, byte-identical frames).
"""
from __future__ import annotations

import cv2
import numpy as np

TEX_SIZE = 64


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in [0, 1]: random cells upsampled smoothly to size x size."""
    small = rng.random((cells, cells)).astype(np.float32)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC).clip(0, 1)


def make_texture(rng: np.random.Generator, kind: str, color: np.ndarray,
                 size: int = TEX_SIZE) -> np.ndarray:
    """A (size, size, 3) uint8 RGB texture of one kind around a base colour."""
    c = np.asarray(color, np.float32)
    img = np.empty((size, size, 3), np.float32)
    img[:] = c
    if kind == 'noise':
        n = _smooth_noise(rng, size, int(rng.integers(4, 16)))
        img *= (0.75 + 0.5 * n)[..., None]
    elif kind == 'bricks':
        rows = int(rng.integers(6, 14))
        bh = size // rows
        bw = bh * 2
        mortar = np.array([200, 200, 190], np.float32) * rng.uniform(0.6, 1.0)
        for r in range(rows + 1):
            off = (bw // 2) * (r % 2)
            y0 = r * bh
            img[y0:y0 + 1] = mortar
            for x in range(-off, size, bw):
                img[y0:y0 + bh, max(x, 0):max(x, 0) + 1] = mortar
                shade = rng.uniform(0.8, 1.15)
                img[y0 + 1:y0 + bh, max(x + 1, 0):x + bw] *= shade
    elif kind == 'windows':
        nx, ny = int(rng.integers(2, 6)), int(rng.integers(2, 6))
        glass = np.array(rng.uniform(20, 110, 3), np.float32)
        for i in range(nx):
            for j in range(ny):
                x0 = int((i + 0.25) * size / nx)
                x1 = int((i + 0.75) * size / nx)
                y0 = int((j + 0.2) * size / ny)
                y1 = int((j + 0.7) * size / ny)
                img[y0:y1, x0:x1] = glass * rng.uniform(0.7, 1.4)
    elif kind == 'stripes':
        period = int(rng.integers(4, 16))
        band = (np.arange(size) // (period // 2 or 1)) % 2
        other = np.array(rng.uniform(0, 255, 3), np.float32)
        img[band.astype(bool)] = other if rng.random() < 0.5 else c * 0.6
        if rng.random() < 0.5:
            img = img.transpose(1, 0, 2).copy()
    elif kind == 'checker':
        k = int(rng.integers(4, 12))
        yy, xx = np.mgrid[0:size, 0:size]
        mask = ((yy * k // size + xx * k // size) % 2).astype(bool)
        img[mask] *= rng.uniform(0.5, 0.8)
    elif kind == 'leaves':
        n = _smooth_noise(rng, size, int(rng.integers(12, 24)))
        m = _smooth_noise(rng, size, int(rng.integers(20, 32)))
        img *= (0.5 + 0.8 * n * m + 0.2 * rng.random((size, size)))[..., None]
    # 'plain' keeps the base colour; every kind gets a little grain.
    img *= (0.92 + 0.16 * rng.random((size, size)))[..., None]
    return img.clip(0, 255).astype(np.uint8)


def base_color(rng: np.random.Generator, family: str) -> np.ndarray:
    """A base colour of a family of appearances."""
    if family == 'grey':
        v = rng.uniform(60, 200)
        return np.array([v, v, v]) * rng.uniform(0.9, 1.1, 3)
    if family == 'dark':
        v = rng.uniform(25, 90)
        return np.array([v, v, v]) * rng.uniform(0.9, 1.1, 3)
    if family == 'beige':
        return np.array([rng.uniform(150, 230), rng.uniform(120, 200), rng.uniform(80, 160)])
    if family == 'brick':
        return np.array([rng.uniform(120, 200), rng.uniform(50, 100), rng.uniform(30, 80)])
    if family == 'green':
        return np.array([rng.uniform(30, 110), rng.uniform(80, 170), rng.uniform(20, 80)])
    if family == 'grass':
        return np.array([rng.uniform(80, 150), rng.uniform(120, 200), rng.uniform(50, 110)])
    if family == 'vivid':
        rgb = rng.uniform(20, 240, 3)
        rgb[rng.integers(3)] = rng.uniform(180, 255)
        return rgb
    raise ValueError(f'unknown colour family {family!r}')


#: Colour families and texture kinds of the classes ``v2`` scenes add (and the wider choices it
#: gives pedestrians); ``v1`` scenes keep their own tables (synth_world).
V2_FAMILIES = {
    'person': ['vivid', 'dark', 'beige', 'grey', 'green', 'brick'],
    'fence': ['grey', 'dark', 'green', 'beige'], 'traffic_light': ['dark', 'grey'],
    'traffic_sign': ['vivid', 'grey'], 'truck': ['vivid', 'grey', 'dark', 'beige'],
    'bus': ['vivid', 'grey', 'beige'], 'train': ['vivid', 'grey', 'beige'],
    'rider': ['vivid', 'dark', 'beige', 'grey'], 'motorcycle': ['dark', 'vivid', 'grey'],
    'bicycle': ['dark', 'vivid', 'grey'],
}
V2_KINDS = {
    'person': ['plain', 'noise', 'stripes', 'checker', 'bricks'],
    'fence': ['stripes', 'checker'], 'traffic_light': ['plain', 'noise'],
    'traffic_sign': ['plain', 'stripes'], 'truck': ['plain', 'noise', 'stripes'],
    'bus': ['windows', 'stripes', 'plain'], 'train': ['windows', 'stripes', 'plain'],
    'rider': ['plain', 'noise', 'stripes', 'checker'], 'motorcycle': ['plain', 'noise'],
    'bicycle': ['plain', 'stripes'],
}
