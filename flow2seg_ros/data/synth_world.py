"""The world of a synthetic street sequence: road path, static scene and moving objects.

:class:`SceneBuilder` builds one sequence's scene in a pybullet client: a road that runs straight
or curves, with sidewalks, buildings, walls, poles, trees and grass, sometimes a side street, and
cars and pedestrians that move on their own (same direction at other speeds, oncoming, crossing,
walking along the sidewalk). Every body is registered with its Cityscapes label id. Appearance
(textures, colours, light, sky, exposure, noise) is drawn per sequence; moving cars and pedestrians
sometimes wear the textures of static classes.

Two scene families: ``v1`` (the scenes above, ten classes) and ``v2``, which adds the other
Cityscapes classes and wider variation through the hooks of
:class:`~flow2seg_ros.data.synth_props.PropsBuilder` (the class :class:`SceneBuilder`'s ``v2``
branches call). ``v1`` never takes those branches, so its frames stay byte-identical for a seed.

All scene choices come from the sequence's random generator in a fixed order: changing that order
changes every generated frame, so new features must not draw from it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
import math
import os
from typing import Callable, Optional, Sequence

import cv2
import numpy as np

from flow2seg_ros.data.synth_textures import base_color as _color, make_texture as _texture

__all__ = ['FPS', 'HFOV_DEG', 'LABEL_IDS', 'LABEL_IDS_V2', 'MOVING_LABEL_IDS',
           'MOVING_LABEL_IDS_V2', 'Mover', 'SCENES', 'SceneBuilder']

#: Camera rate of the generated sequences in frames per second (Cityscapes records at 17 Hz).
FPS = 17.0

#: The Cityscapes label ids the generator renders.
LABEL_IDS = {
    'road': 7, 'sidewalk': 8, 'building': 11, 'wall': 12, 'pole': 17, 'vegetation': 21,
    'terrain': 22, 'sky': 23, 'person': 24, 'car': 26,
}
MOVING_LABEL_IDS = (LABEL_IDS['person'], LABEL_IDS['car'])

#: The label ids of ``v2`` scenes: the 19 Cityscapes classes a street scene can show.
LABEL_IDS_V2 = {
    **LABEL_IDS, 'fence': 13, 'traffic_light': 19, 'traffic_sign': 20, 'rider': 25, 'truck': 27,
    'bus': 28, 'train': 31, 'motorcycle': 32, 'bicycle': 33,
}
MOVING_LABEL_IDS_V2 = tuple(LABEL_IDS_V2[k] for k in (
    'person', 'rider', 'car', 'truck', 'bus', 'train', 'motorcycle', 'bicycle'))

#: The scene families of the generator.
SCENES = ('v1', 'v2')

# Camera ranges of the scene families: speed [m/s], height [m], pitch [deg].
_CAMERA = {
    'v1': {'speed': (3.0, 8.5), 'height': (1.25, 1.7), 'pitch': (-2.5, 0.5)},
    'v2': {'speed': (1.5, 13.0), 'height': (1.1, 2.4), 'pitch': (-4.0, 1.0)},
}

HFOV_DEG = 50.0      # about Cityscapes' camera (fx 2262 px at 2048 px width)

Vec3 = tuple[float, float, float]


# --------------------------------------------------------------------------------------------
# Scene description
# --------------------------------------------------------------------------------------------

@dataclass
class _Path:
    """Road centre line sampled every ``step`` metres of arc length."""

    s: np.ndarray
    x: np.ndarray
    y: np.ndarray
    heading: np.ndarray

    @classmethod
    def random(cls, rng: np.random.Generator, length: float, step: float = 0.5) -> '_Path':
        n = int(math.ceil(length / step)) + 2
        curv = np.zeros(n)
        i = 0
        while i < n:
            seg = int(rng.uniform(25, 80) / step)
            if rng.random() < 0.45:
                radius = rng.uniform(35, 120)
                curv[i:i + seg] = rng.choice([-1, 1]) / radius
            i += seg
        # Smooth the curvature so the camera's yaw rate changes gradually.
        k = int(8 / step) | 1
        curv = np.convolve(curv, np.ones(k) / k, mode='same')
        heading = np.concatenate([[0.0], np.cumsum(curv[:-1] * step)])
        heading += rng.uniform(-math.pi, math.pi)
        x = np.concatenate([[0.0], np.cumsum(np.cos(heading[:-1]) * step)])
        y = np.concatenate([[0.0], np.cumsum(np.sin(heading[:-1]) * step)])
        return cls(np.arange(n) * step, x, y, heading)

    def at(self, s: float, lateral: float = 0.0) -> tuple[float, float, float]:
        """(x, y, heading) at arc length s, ``lateral`` metres to the left of the centre line."""
        h = float(np.interp(s, self.s, self.heading))
        x = float(np.interp(s, self.s, self.x)) - math.sin(h) * lateral
        y = float(np.interp(s, self.s, self.y)) + math.cos(h) * lateral
        return x, y, h


@dataclass
class Mover:
    """An independently moving object: rigid parts following a trajectory in the ground plane."""

    label: int
    parts: list[tuple[int, Vec3]]                  # (body id, offset in the object's frame)
    trajectory: Callable[[float], tuple[float, float, float]]   # t [s] -> x, y, yaw
    gait: float = 0.0                              # leg swing amplitude for pedestrians [m]
    legs: tuple[int, ...] = ()                     # indices into parts that swing
    phase: float = 0.0
    # Articulated objects (v2): t [s] -> per part (offset, roll, pitch) in the object's frame,
    # the part's orientation being yaw (of the trajectory), then pitch, then roll.
    animate: Optional[Callable[[float], Sequence[tuple[Vec3, float, float]]]] = None

    def pose(self, t: float) -> tuple[float, float, float]:
        return self.trajectory(t)


@dataclass
class _Style:
    """The appearance choices of one sequence."""

    textures: dict[str, list[int]] = field(default_factory=dict)
    colors: dict[str, list[np.ndarray]] = field(default_factory=dict)


class SceneBuilder:
    """Builds the scene of one sequence (the base of ``synth_scene.SynthSequence``).

    The subclass sets ``_p`` (the pybullet module), ``_client``, ``rng``, ``frames``, ``_tex_dir``,
    ``_tex_count``, ``_labels`` (body id -> label id), ``movers``, ``static_bodies`` and
    ``scenes`` (``v1`` or ``v2``), then calls :meth:`_build`. The ``v2`` branches call the hooks
    of :class:`~flow2seg_ros.data.synth_props.PropsBuilder` (``_v2_*``).
    """

    # ---- building blocks ----
    def _load_texture(self, kind: str, color: np.ndarray) -> int:
        tex = _texture(self.rng, kind, color)
        path = self._tex_dir / f'tex_{os.getpid()}_{id(self)}_{self._tex_count}.png'
        self._tex_count += 1
        cv2.imwrite(str(path), cv2.cvtColor(tex, cv2.COLOR_RGB2BGR))
        return self._p.loadTexture(str(path), physicsClientId=self._client)

    def _body(self, label: int, shape: str, dims: Sequence[float], pos: Vec3, yaw: float,
              texture: Optional[int], rgba: Sequence[float], static: bool = True,
              roll: float = 0.0, pitch: float = 0.0) -> int:
        p = self._p
        if shape == 'box':
            vis = p.createVisualShape(p.GEOM_BOX, halfExtents=list(dims), rgbaColor=list(rgba),
                                      physicsClientId=self._client)
        elif shape == 'cylinder':
            vis = p.createVisualShape(p.GEOM_CYLINDER, radius=dims[0], length=dims[1],
                                      rgbaColor=list(rgba), physicsClientId=self._client)
        elif shape == 'sphere':
            vis = p.createVisualShape(p.GEOM_SPHERE, radius=dims[0], rgbaColor=list(rgba),
                                      physicsClientId=self._client)
        else:
            raise ValueError(f'unknown shape {shape!r}')
        body = p.createMultiBody(baseMass=0, baseVisualShapeIndex=vis, basePosition=list(pos),
                                 baseOrientation=p.getQuaternionFromEuler([roll, pitch, yaw]),
                                 physicsClientId=self._client)
        if texture is not None:
            p.changeVisualShape(body, -1, textureUniqueId=texture, rgbaColor=list(rgba),
                                physicsClientId=self._client)
        self._labels[body] = label
        if static:
            self.static_bodies.append(body)
        return body

    def _quad_flat(self, s0: float, s1: float, lat0: float, lat1: float, z: float) -> np.ndarray:
        """Corners of a horizontal quad between arc lengths s0..s1 and laterals lat0 < lat1."""
        pts = [self.path.at(s0, lat0), self.path.at(s1, lat0), self.path.at(s1, lat1),
               self.path.at(s0, lat1)]
        return np.array([[x, y, z] for x, y, _ in pts])

    def _quad_kerb(self, s0: float, s1: float, lat: float, z: float, facing: int) -> np.ndarray:
        """Corners of a vertical kerb face at a lateral, facing left (+1) or right (-1)."""
        (x0, y0, _), (x1, y1, _) = self.path.at(s0, lat), self.path.at(s1, lat)
        quad = np.array([[x0, y0, 0.0], [x1, y1, 0.0], [x1, y1, z], [x0, y0, z]])
        return quad if facing < 0 else quad[::-1].copy()

    def _mesh(self, label: int, quads: Sequence[np.ndarray], texture: Optional[int],
              rgba: Sequence[float], chunk: int = 64) -> None:
        """Static bodies made of textured quads (counter-clockwise seen from the front)."""
        p = self._p
        for i in range(0, len(quads), chunk):
            part = quads[i:i + chunk]
            if not part:
                continue
            verts, idx, uvs, normals = [], [], [], []
            for q in part:
                n = np.cross(q[1] - q[0], q[2] - q[0])
                n = n / (np.linalg.norm(n) + 1e-12)
                k = len(verts)
                verts.extend(q.tolist())
                idx.extend([k, k + 1, k + 2, k, k + 2, k + 3])
                uvs.extend([[0, 0], [1, 0], [1, 1], [0, 1]])
                normals.extend([n.tolist()] * 4)
            vis = p.createVisualShape(p.GEOM_MESH, vertices=verts, indices=idx, uvs=uvs,
                                      normals=normals, rgbaColor=list(rgba),
                                      physicsClientId=self._client)
            body = p.createMultiBody(baseMass=0, baseVisualShapeIndex=vis,
                                     physicsClientId=self._client)
            if texture is not None:
                p.changeVisualShape(body, -1, textureUniqueId=texture, rgbaColor=list(rgba),
                                    physicsClientId=self._client)
            self._labels[body] = label
            self.static_bodies.append(body)

    def _pick(self, cls: str) -> tuple[Optional[int], list[float]]:
        """A texture and a tint for a class, from this sequence's style."""
        rng = self.rng
        tex = self.style.textures[cls][int(rng.integers(len(self.style.textures[cls])))]
        tint = rng.uniform(0.8, 1.0, 3).tolist() + [1.0]
        return tex, tint

    # ---- the scene ----
    def _build(self) -> None:
        rng = self.rng
        v2 = self.scenes == 'v2'
        cam = _CAMERA[self.scenes]
        self.speed = float(rng.uniform(*cam['speed']))            # camera speed [m/s]
        self.duration = self.frames / FPS
        travel = self.speed * self.duration
        self.cam_s0 = 15.0
        lanes = int(rng.choice([1, 2], p=[0.6, 0.4]))            # lanes per direction
        self.lane_w = 3.4
        self.road_hw = lanes * self.lane_w
        self.sidewalk_w = float(rng.uniform(2.0, 4.5))
        self.cam_lateral = -(self.lane_w * (lanes - 1) + self.lane_w / 2)
        self.cam_height = float(rng.uniform(*cam['height']))
        self.cam_pitch = math.radians(rng.uniform(*cam['pitch']))
        if v2:
            self.hfov = float(rng.uniform(40.0, 80.0))
        length = self.cam_s0 + travel + 110.0
        self.path = _Path.random(rng, length)
        self.s_end = length - 5.0

        # Appearance of this sequence; cars and pedestrians sometimes wear static textures.
        style = _Style()
        fam = {
            'road': ['dark'], 'sidewalk': ['grey', 'beige', 'brick'],
            'building': ['grey', 'beige', 'brick', 'vivid'], 'wall': ['grey', 'beige', 'brick'],
            'pole': ['grey', 'dark', 'green'], 'vegetation': ['green'],
            'terrain': ['grass', 'beige'], 'car': ['vivid', 'grey', 'dark'],
            'person': ['vivid', 'dark', 'beige'],
        }
        kinds = {
            'road': ['noise'], 'sidewalk': ['checker', 'bricks', 'noise'],
            'building': ['windows', 'bricks', 'noise', 'stripes', 'plain'],
            'wall': ['bricks', 'noise', 'plain', 'stripes'], 'pole': ['plain', 'noise', 'stripes'],
            'vegetation': ['leaves'], 'terrain': ['noise', 'leaves'],
            'car': ['plain', 'noise', 'stripes', 'windows'],
            'person': ['plain', 'noise', 'stripes', 'checker'],
        }
        if v2:
            self._v2_style_classes(fam, kinds)
        for cls in fam:
            n = 1 if cls in ('road', 'terrain') else int(rng.integers(2, 4))
            style.textures[cls] = []
            for _ in range(n):
                color = _color(rng, str(rng.choice(fam[cls])))
                style.textures[cls].append(self._load_texture(str(rng.choice(kinds[cls])), color))
        share = float(rng.uniform(0.5, 0.9))
        for cls, donors in (('car', ('building', 'wall')),
                            ('person', ('pole', 'vegetation', 'building'))):
            for d in donors:
                if rng.random() < share:
                    style.textures[cls].extend(style.textures[d])
        self.style = style
        if v2:
            self._v2_camouflage()

        lid = LABEL_IDS
        # Side street: an intersection ahead of the camera's last position.
        self.cross_s = None
        self.cross_hw = 0.0
        cam_end = self.cam_s0 + travel
        if rng.random() < (0.7 if v2 else 0.5):
            self.cross_s = float(cam_end + rng.uniform(14, 45))
            self.cross_hw = float(rng.uniform(3.0, 6.0))

        def in_cross(s: float, margin: float) -> bool:
            return self.cross_s is not None and abs(s - self.cross_s) < self.cross_hw + margin

        # Ground surfaces as textured quads (one per 4 m of road; only the faces one can see).
        seg = 4.0
        kerb = float(rng.uniform(0.08, 0.18))
        edge = self.road_hw + self.sidewalk_w
        road_q: list[np.ndarray] = []
        mark_q: list[np.ndarray] = []
        walk_q: dict[int, list[np.ndarray]] = {-1: [], 1: []}
        grass_q: dict[int, list[np.ndarray]] = {-1: [], 1: []}
        s = self.cam_s0 - seg          # nothing behind the camera is ever in view
        while s < self.s_end:
            s1 = s + seg
            crossing = in_cross(s + seg / 2, seg / 2)
            if not crossing:
                road_q.append(self._quad_flat(s, s1 + 0.05, -self.road_hw, self.road_hw, 0.01))
                if int(s / seg) % 2 == 0:
                    for lane in range(-lanes + 1, lanes):
                        lat = lane * self.lane_w
                        mark_q.append(self._quad_flat(s, s + seg / 2, lat - 0.07, lat + 0.07,
                                                      0.015))
            if not in_cross(s + seg / 2, seg / 2 + 0.5):
                for side in (-1, 1):
                    lo, hi = sorted((side * self.road_hw, side * edge))
                    walk_q[side].append(self._quad_flat(s, s1 + 0.05, lo, hi, kerb))
                    walk_q[side].append(self._quad_kerb(s, s1 + 0.05, side * self.road_hw, kerb,
                                                        -side))
                    lo, hi = sorted((side * edge, side * (edge + 70)))
                    grass_q[side].append(self._quad_flat(s, s1 + 0.05, lo, hi, 0.0))
            s = s1
        tex, tint = self._pick('road')
        self._mesh(lid['road'], road_q, tex, tint)
        mark = float(rng.uniform(0.75, 0.95))
        self._mesh(lid['road'], mark_q, None, [mark, mark, mark, 1])
        for side in (-1, 1):
            tex, tint = self._pick('sidewalk')
            self._mesh(lid['sidewalk'], walk_q[side], tex, tint)
            tex, tint = self._pick('terrain')
            self._mesh(lid['terrain'], grass_q[side], tex, tint)
        if self.cross_s is not None:
            tex, tint = self._pick('road')
            x, y, h = self.path.at(self.cross_s)
            c, sn = math.cos(h), math.sin(h)
            corners = [(-self.cross_hw, -70), (self.cross_hw, -70), (self.cross_hw, 70),
                       (-self.cross_hw, 70)]
            quad = np.array([[x + c * a - sn * b, y + sn * a + c * b, 0.012] for a, b in corners])
            self._mesh(lid['road'], [quad], tex, tint)

        # Road side: buildings, walls, vegetation, poles.
        for side in (-1, 1):
            s = self.cam_s0 - float(rng.uniform(5, 15))
            while s < self.s_end:
                if v2:
                    kind = rng.choice(['building', 'trees', 'wall', 'open', 'fence'],
                                      p=[0.5, 0.14, 0.12, 0.08, 0.16])
                else:
                    kind = rng.choice(['building', 'trees', 'wall', 'open'],
                                      p=[0.62, 0.18, 0.12, 0.08])
                width = float(rng.uniform(6, 22))
                mid = s + width / 2
                if in_cross(mid, width / 2 + 1):
                    s += width
                    continue
                if kind == 'building':
                    setback = float(rng.uniform(0.0, 3.0))
                    depth = float(rng.uniform(8, 16))
                    height = float(rng.uniform(5, 26))
                    x, y, h = self.path.at(mid, side * (edge + setback + depth / 2))
                    tex, tint = self._pick('building')
                    self._body(lid['building'], 'box', (width / 2, depth / 2, height / 2),
                               (x, y, height / 2), h, tex, tint)
                elif kind == 'wall':
                    hw = float(rng.uniform(0.6, 2.6))
                    x, y, h = self.path.at(mid, side * (edge + 0.5))
                    tex, tint = self._pick('wall')
                    self._body(lid['wall'], 'box', (width / 2, 0.15, hw / 2), (x, y, hw / 2), h,
                               tex, tint)
                    if rng.random() < 0.7:
                        self._tree(mid, side * (edge + rng.uniform(3, 8)))
                elif kind == 'fence':
                    self._v2_fence(s, s + width, side * (edge + 0.3))
                elif kind == 'trees':
                    for _ in range(int(rng.integers(1, 4))):
                        self._tree(mid + rng.uniform(-width / 2, width / 2),
                                   side * (edge + rng.uniform(1.0, 8.0)))
                    if rng.random() < 0.4:
                        hh = float(rng.uniform(0.6, 1.5))
                        x, y, h = self.path.at(mid, side * (edge + 0.8))
                        tex, tint = self._pick('vegetation')
                        self._body(lid['vegetation'], 'box', (width / 2, 0.5, hh / 2),
                                   (x, y, hh / 2), h, tex, tint)
                s += width + float(rng.uniform(0, 4))
            # Poles near the kerb, street trees on the sidewalk.
            s = self.cam_s0 + float(rng.uniform(-5, 10))
            gap = float(rng.uniform(12, 30))
            while s < self.s_end:
                if not in_cross(s, 1.5):
                    height = float(rng.uniform(3.5, 8.0))
                    radius = float(rng.uniform(0.07, 0.16))
                    x, y, h = self.path.at(s, side * (self.road_hw + 0.5))
                    tex, tint = self._pick('pole')
                    self._body(lid['pole'], 'cylinder', (radius, height), (x, y, height / 2), h,
                               tex, tint)
                    if v2:
                        self._v2_pole_fixture(s, side, height, radius)
                    if rng.random() < 0.3:
                        self._tree(s + gap / 2, side * (self.road_hw + self.sidewalk_w * 0.6))
                s += gap * float(rng.uniform(0.8, 1.2))

        if v2:
            self._v2_streetside(lanes, cam_end)
            self._v2_add_movers(lanes, cam_end)
            self._v2_appearance()
        else:
            self._add_movers(lanes, cam_end)
        self._make_lut()

    def _tree(self, s: float, lateral: float) -> None:
        rng = self.rng
        lid = LABEL_IDS['vegetation']
        trunk_h = float(rng.uniform(1.5, 3.5))
        x, y, h = self.path.at(s, lateral)
        tex, tint = self._pick('vegetation')
        self._body(lid, 'cylinder', (float(rng.uniform(0.1, 0.25)), trunk_h), (x, y, trunk_h / 2),
                   h, self._pick('pole')[0] if rng.random() < 0.5 else tex, tint)
        r = float(rng.uniform(1.2, 3.0))
        self._body(lid, 'sphere', (r,), (x, y, trunk_h + r * 0.8), h, tex, tint)

    # ---- moving objects ----
    def _car(self, trajectory: Callable[[float], tuple[float, float, float]]) -> None:
        rng = self.rng
        length = float(rng.uniform(3.6, 5.6))
        width = float(rng.uniform(1.6, 2.1))
        body_h = float(rng.uniform(0.6, 1.1))
        cabin_h = float(rng.uniform(0.45, 1.2))
        clearance = 0.25
        tex, tint = self._pick('car')
        lid = LABEL_IDS['car']
        parts = []
        b = self._body(lid, 'box', (length / 2, width / 2, body_h / 2), (0, 0, -50), 0, tex, tint,
                       static=False)
        parts.append((b, (0.0, 0.0, clearance + body_h / 2)))
        cabin_l = length * float(rng.uniform(0.45, 0.75))
        tex2, _ = self._pick('car') if rng.random() < 0.3 else (tex, None)
        glass = rng.uniform(0.3, 0.9) if rng.random() < 0.5 else 1.0
        b = self._body(lid, 'box', (cabin_l / 2, width / 2 - 0.08, cabin_h / 2), (0, 0, -50), 0,
                       tex2, [glass * c for c in tint[:3]] + [1.0], static=False)
        parts.append((b, (-length * 0.08, 0.0, clearance + body_h + cabin_h / 2)))
        for fx in (-1, 1):
            for fy in (-1, 1):
                b = self._body(lid, 'box', (0.32, 0.12, 0.32), (0, 0, -50), 0, None,
                               [0.08, 0.08, 0.08, 1], static=False)
                parts.append((b, (fx * length * 0.33, fy * (width / 2 - 0.1), 0.32)))
        self.movers.append(Mover(lid, parts, trajectory))

    def _person(self, trajectory: Callable[[float], tuple[float, float, float]],
                walking: bool = True) -> None:
        rng = self.rng
        height = float(rng.uniform(1.5, 1.95))
        girth = float(rng.uniform(0.8, 1.3))
        leg_h = height * 0.47
        torso_h = height * 0.36
        head_r = height * 0.065
        lid = LABEL_IDS['person']
        tex, tint = self._pick('person')
        pants = self._pick('person') if rng.random() < 0.7 else (None, [0.15, 0.15, 0.2, 1])
        skin = [float(v) for v in rng.uniform(0.35, 0.95) * np.array([1.0, 0.8, 0.65])] + [1]
        parts = []
        b = self._body(lid, 'box', (0.12 * girth, 0.22 * girth, torso_h / 2), (0, 0, -50), 0, tex,
                       tint, static=False)
        parts.append((b, (0.0, 0.0, leg_h + torso_h / 2)))
        b = self._body(lid, 'sphere', (head_r,), (0, 0, -50), 0, None, skin, static=False)
        parts.append((b, (0.0, 0.0, leg_h + torso_h + head_r)))
        legs = []
        for fy in (-1, 1):
            b = self._body(lid, 'box', (0.08 * girth, 0.08 * girth, leg_h / 2), (0, 0, -50), 0,
                           pants[0], pants[1], static=False)
            legs.append(len(parts))
            parts.append((b, (0.0, fy * 0.1 * girth, leg_h / 2)))
        self.movers.append(Mover(lid, parts, trajectory, gait=0.18 if walking else 0.0,
                                 legs=tuple(legs), phase=float(rng.uniform(0, 2 * math.pi))))

    def _add_movers(self, lanes: int, cam_end: float) -> None:
        rng = self.rng
        path = self.path
        v_cam = self.speed
        dur = self.duration
        lane_w = self.lane_w

        def along(s0: float, v: float, lateral: float, back: bool = False) -> Callable:
            def traj(t: float) -> tuple[float, float, float]:
                x, y, h = path.at(s0 + v * t, lateral)
                return x, y, h + (math.pi if back else 0.0)
            return traj

        def across(s: float, u0: float, v: float) -> Callable:
            x0, y0, h = path.at(s)

            def traj(t: float) -> tuple[float, float, float]:
                u = u0 + v * t
                return (x0 - math.sin(h) * u, y0 + math.cos(h) * u,
                        h + math.copysign(math.pi / 2, v))
            return traj

        n_cars = int(rng.integers(3, 10))
        for _ in range(n_cars):
            kind = rng.choice(['same', 'oncoming', 'crossing'], p=[0.4, 0.45, 0.15])
            if kind == 'crossing' and self.cross_s is None:
                kind = 'oncoming'
            if kind == 'same':
                lane = int(rng.integers(lanes))
                lateral = -(lane * lane_w + lane_w / 2)
                v = float(rng.uniform(0.3, 1.5)) * v_cam
                if abs(lateral - self.cam_lateral) < 0.1:
                    # Same lane: stays ahead of the camera by at least 8 m all along.
                    v = max(v, v_cam * 0.75)
                    gap0 = float(rng.uniform(10, 40))
                    gap0 = max(gap0, 8 + (v_cam - v) * dur)
                    s0 = self.cam_s0 + gap0
                else:
                    s0 = self.cam_s0 + float(rng.uniform(-5, 50)) + (v_cam - v) * dur * 0.5
                self._car(along(s0, v, lateral + float(rng.uniform(-0.3, 0.3))))
            elif kind == 'oncoming':
                lane = int(rng.integers(lanes))
                lateral = lane * lane_w + lane_w / 2 + float(rng.uniform(-0.3, 0.3))
                v = float(rng.uniform(4, 14))
                s_meet = self.cam_s0 + v_cam * dur * float(rng.uniform(0.2, 1.5))
                s0 = s_meet + v * dur * float(rng.uniform(0.3, 1.5)) + 10
                self._car(along(s0, -v, lateral, back=True))
            else:
                v = float(rng.uniform(4, 12)) * rng.choice([-1, 1])
                lane_off = (self.cross_hw / 2) * (-1 if v > 0 else 1)
                u_mid = float(rng.uniform(-15, 15))
                s = self.cross_s + lane_off
                self._car(across(s, u_mid - v * dur / 2, v))

        n_people = int(rng.integers(3, 10))
        edge = self.road_hw
        for _ in range(n_people):
            kind = rng.choice(['sidewalk', 'crossing', 'standing'], p=[0.5, 0.4, 0.1])
            side = float(rng.choice([-1, 1]))
            lateral = side * (edge + float(rng.uniform(0.6, self.sidewalk_w - 0.4)))
            if kind == 'sidewalk':
                v = float(rng.uniform(0.8, 2.2)) * rng.choice([-1, 1])
                s0 = (self.cam_s0 + float(rng.uniform(5, 60))
                      + v_cam * dur * float(rng.uniform(0, 1)))
                self._person(along(s0, v, lateral, back=v < 0))
            elif kind == 'crossing':
                v = float(rng.uniform(0.9, 2.0)) * rng.choice([-1, 1])
                if self.cross_s is not None and rng.random() < 0.5:
                    s = self.cross_s - self.cross_hw - float(rng.uniform(1, 3))
                else:
                    s = cam_end + float(rng.uniform(8, 40))
                u_mid = float(rng.uniform(-edge, edge))
                self._person(across(s, u_mid - v * dur / 2, v))
            else:
                s0 = self.cam_s0 + float(rng.uniform(6, 50)) + v_cam * dur
                yaw = float(rng.uniform(-math.pi, math.pi))
                x, y, _ = path.at(s0, lateral)
                self._person(lambda t, x=x, y=y, yaw=yaw: (x, y, yaw), walking=False)

        # Render-time appearance.
        self.light_dir = [float(v) for v in (rng.uniform(-1, 1), rng.uniform(-1, 1),
                                             rng.uniform(0.4, 1.5))]
        self.light_color = [float(v) for v in rng.uniform(0.85, 1.0, 3)]
        self.ambient = float(rng.uniform(0.45, 0.7))
        self.diffuse = float(rng.uniform(0.3, 0.55))
        self.shadow = 0      # shadows double TinyRenderer's cost
        top = _color(rng, 'grey') if rng.random() < 0.35 else np.array(
            [rng.uniform(60, 140), rng.uniform(110, 180), rng.uniform(180, 250)])
        self.sky_top = top
        self.sky_horizon = np.clip(top + rng.uniform(20, 80), 0, 255)
        self.gain = float(rng.uniform(0.8, 1.2))
        self.noise_sigma = float(rng.uniform(1.0, 5.0))
        self.blur = bool(rng.random() < 0.3)
        self.shake = float(rng.uniform(0.0, 0.25))      # camera pitch jitter [deg]
        self._sky_img: Optional[np.ndarray] = None

    def _make_lut(self) -> None:
        """The body id -> label id table of the rendered segmentation mask (sky where empty)."""
        self._lut = np.full(max(self._labels) + 2, LABEL_IDS['sky'], np.uint8)
        for body, label in self._labels.items():
            self._lut[body + 1] = label
