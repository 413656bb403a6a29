"""What ``v2`` street scenes add: the other Cityscapes classes, articulated people, variation.

:class:`PropsBuilder` implements the ``_v2_*`` hooks that
:class:`~flow2seg_ros.data.synth_world.SceneBuilder` calls in ``v2`` scenes:

- static props: fences (kerb railings and fenced plots), traffic signs and traffic lights on
  the street poles (some on mast arms over the road), traffic lights at intersections, parked
  bicycles and motorcycles;
- traffic: cars, trucks, buses, a tram (the ``train`` class, in two or three cars), bicycles
  and motorcycles with their riders (the ``rider`` class), each driving along the road (same
  direction or oncoming) or crossing at the side street;
- pedestrians with a torso, head, arms and two-segment legs that swing and bend as they walk
  (the body bobs so the lower foot stays on the ground), alone or in groups, along the
  sidewalk, crossing the road near or far, or standing;
- appearance: a wider field of view, camera height and speed (synth_world's ``_CAMERA``),
  light, exposure and noise, sky colours from overcast to dusk, haze with distance, and
  "camouflage" scenes where walls and the moving objects in front of them share one texture, so
  only motion tells them apart.

Every part is a rigid pybullet body, posed per frame (``Mover.animate``), so the exact flow of
:mod:`~flow2seg_ros.data.synth_flow` holds for articulated bodies as for rigid ones. Everything
is drawn from the sequence's random generator, so a seed gives the same scene.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence

import numpy as np

from flow2seg_ros.data.synth_textures import base_color, V2_FAMILIES, V2_KINDS
from flow2seg_ros.data.synth_world import LABEL_IDS_V2, Mover, SceneBuilder, Vec3

__all__ = ['PropsBuilder']

_LID = LABEL_IDS_V2
_DARK = [0.08, 0.08, 0.08, 1.0]
Trajectory = Callable[[float], tuple[float, float, float]]
Pose = tuple[Vec3, float, float]          # offset in the object's frame, roll, pitch


def _segment(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float, float]:
    """(x, z, pitch) of a limb from joint ``a`` to ``b`` (x forward, z up): its centre and the
    pitch that turns the body's -z axis onto ``b - a``."""
    dx, dz = b[0] - a[0], b[1] - a[1]
    return (a[0] + b[0]) / 2, (a[1] + b[1]) / 2, math.atan2(-dx, -dz)


def _limb(joint: tuple[float, float], length: float, angle: float) -> tuple[float, float]:
    """End of a limb of ``length`` from ``joint``, ``angle`` from straight down (+ forward)."""
    return joint[0] + length * math.sin(angle), joint[1] - length * math.cos(angle)


class PropsBuilder(SceneBuilder):
    """The ``v2`` additions to :class:`~flow2seg_ros.data.synth_world.SceneBuilder`."""

    # ---- style ----
    def _v2_style_classes(self, fam: dict, kinds: dict) -> None:
        """Add the v2 classes' colour families and texture kinds to the style tables."""
        fam.update(V2_FAMILIES)
        kinds.update(V2_KINDS)

    def _v2_camouflage(self) -> None:
        """Donor textures for the new movers; sometimes one texture shared by walls and movers."""
        rng = self.rng
        tex = self.style.textures
        for cls, donors in (('truck', ('building', 'wall')), ('bus', ('building',)),
                            ('train', ('building', 'wall')), ('rider', ('vegetation', 'wall')),
                            ('person', ('wall', 'sidewalk'))):
            for d in donors:
                if rng.random() < 0.4:
                    tex[cls].extend(tex[d])
        self.camo: Optional[int] = None
        if rng.random() < 0.3:
            # Walls and buildings behind the sidewalk and most people and vehicles share it.
            self.camo = tex['wall'][int(rng.integers(len(tex['wall'])))]
            for cls in ('wall', 'building'):
                tex[cls] = [self.camo]
            for cls in ('person', 'rider', 'car', 'truck', 'bus', 'bicycle', 'motorcycle'):
                tex[cls] = tex[cls] + [self.camo] * (3 * len(tex[cls]))

    # ---- static props ----
    def _v2_fence(self, s0: float, s1: float, lateral: float) -> None:
        """A fence of textured panels and posts from arc length s0 to s1 at a lateral."""
        rng = self.rng
        height = float(rng.uniform(0.8, 2.2))
        step = float(rng.uniform(2.0, 3.2))
        tex, tint = self._pick('fence')
        post_tint = self._pick('pole')[1] if rng.random() < 0.5 else tint
        s = s0
        while s < s1 - 0.5:
            e = min(s + step, s1)
            x, y, h = self.path.at((s + e) / 2, lateral)
            self._body(_LID['fence'], 'box', ((e - s) / 2, 0.025, height / 2),
                       (x, y, height / 2), h, tex, tint)
            x, y, h = self.path.at(s, lateral)
            self._body(_LID['fence'], 'box', (0.05, 0.05, height / 2 + 0.05),
                       (x, y, height / 2 + 0.05), h, None, post_tint)
            s = e

    def _v2_pole_fixture(self, s: float, side: int, height: float, radius: float) -> None:
        """Sometimes a traffic sign or a traffic light on a street pole."""
        rng = self.rng
        u = rng.random()
        lateral = side * (self.road_hw + 0.5)
        if u < 0.4:
            z = float(rng.uniform(2.0, max(2.1, min(3.4, height - 0.3))))
            self._sign(s, lateral - side * (radius + 0.03), z)
        elif u < 0.65:
            self._traffic_light_at(s, side, lateral, height)

    def _sign(self, s: float, lateral: float, z: float) -> None:
        """A sign plate (square, wide or round) facing along the road."""
        rng = self.rng
        x, y, h = self.path.at(s, lateral)
        tex, tint = self._pick('traffic_sign')
        shape = rng.choice(['square', 'wide', 'round'])
        if shape == 'round':
            r = float(rng.uniform(0.3, 0.45))
            self._body(_LID['traffic_sign'], 'cylinder', (r, 0.04), (x, y, z), h, tex, tint,
                       pitch=math.pi / 2)
        else:
            hw = float(rng.uniform(0.3, 0.45)) * (2.2 if shape == 'wide' else 1.0)
            hh = float(rng.uniform(0.3, 0.45))
            self._body(_LID['traffic_sign'], 'box', (0.03, hw, hh), (x, y, z), h, tex, tint)

    def _traffic_light_at(self, s: float, side: int, lateral: float, height: float) -> None:
        """A traffic light on the pole's top, or hanging from a mast arm over the road."""
        rng = self.rng
        if rng.random() < 0.4:
            arm = float(rng.uniform(2.5, min(6.0, self.road_hw + 0.3)))
            z = height - 0.15
            x, y, h = self.path.at(s, lateral - side * arm / 2)
            tex, tint = self._pick('pole')
            self._body(_LID['pole'], 'box', (0.06, arm / 2, 0.06), (x, y, z), h, tex, tint)
            self._light(s, lateral - side * arm, z - 0.55)
        else:
            self._light(s, lateral, height + 0.45)

    def _light(self, s: float, lateral: float, z: float) -> None:
        """A three-lamp traffic light housing centred at (s, lateral, z), lamps facing back
        along the road (towards the camera)."""
        rng = self.rng
        x, y, h = self.path.at(s, lateral)
        tex, tint = self._pick('traffic_light')
        self._body(_LID['traffic_light'], 'box', (0.13, 0.17, 0.45), (x, y, z), h, tex, tint)
        lit = int(rng.integers(3))
        colours = ([1.0, 0.15, 0.1], [1.0, 0.75, 0.1], [0.2, 1.0, 0.4])
        c, sn = math.cos(h), math.sin(h)
        for i, col in enumerate(colours):
            rgba = (col if i == lit else [v * 0.25 for v in col]) + [1.0]
            lz = z + 0.28 - 0.28 * i
            self._body(_LID['traffic_light'], 'sphere', (0.1,), (x - c * 0.1, y - sn * 0.1, lz),
                       h, None, rgba)

    def _v2_streetside(self, lanes: int, cam_end: float) -> None:
        """Props where the camera will see them: traffic lights at the intersection, kerb
        railings, signs on their own posts, parked bicycles and motorcycles."""
        rng = self.rng
        ahead = self.cam_s0 + self.speed * self.duration
        if self.cross_s is not None:
            s = self.cross_s - self.cross_hw - 1.0
            for side in (-1, 1):
                if rng.random() < 0.8:
                    lateral = side * (self.road_hw + 0.5)
                    height = float(rng.uniform(3.2, 5.5))
                    x, y, h = self.path.at(s, lateral)
                    tex, tint = self._pick('pole')
                    self._body(_LID['pole'], 'cylinder', (0.09, height), (x, y, height / 2), h,
                               tex, tint)
                    self._traffic_light_at(s, side, lateral, height)
        for side in (-1, 1):
            if rng.random() < 0.3:
                s0 = ahead + float(rng.uniform(2, 25))
                self._v2_fence(s0, s0 + float(rng.uniform(8, 30)), side * (self.road_hw + 0.25))
            if rng.random() < 0.35:
                s = ahead + float(rng.uniform(6, 35))
                lateral = side * (self.road_hw + 0.6)
                z = float(rng.uniform(2.0, 2.8))
                x, y, h = self.path.at(s, lateral)
                self._body(_LID['pole'], 'cylinder', (0.05, z), (x, y, z / 2), h, None,
                           [0.6, 0.6, 0.6, 1])
                self._sign(s, lateral - side * 0.08, z - 0.1)
            if rng.random() < 0.25:
                s = ahead + float(rng.uniform(5, 30))
                kind = 'bicycle' if rng.random() < 0.65 else 'motorcycle'
                for i in range(int(rng.integers(1, 5))):
                    x, y, h = self.path.at(s + i * 0.8, side * (self.road_hw + 0.9))
                    self._two_wheeler(kind, lambda t, x=x, y=y, h=h: (x, y, h + math.pi / 2),
                                      ridden=False)

    # ---- moving objects ----
    def _along(self, s0: float, v: float, lateral: float, back: bool = False) -> Trajectory:
        path = self.path

        def traj(t: float) -> tuple[float, float, float]:
            x, y, h = path.at(s0 + v * t, lateral)
            return x, y, h + (math.pi if back else 0.0)
        return traj

    def _across(self, s: float, u0: float, v: float) -> Trajectory:
        x0, y0, h = self.path.at(s)

        def traj(t: float) -> tuple[float, float, float]:
            u = u0 + v * t
            return (x0 - math.sin(h) * u, y0 + math.cos(h) * u,
                    h + math.copysign(math.pi / 2, v))
        return traj

    def _traffic(self, lanes: int, length: float, v_same: tuple[float, float],
                 v_oncoming: tuple[float, float], p: Sequence[float],
                 lateral_of: Optional[Callable[[int, int], float]] = None
                 ) -> list[Trajectory]:
        """Trajectories of one road user (several for a tram's cars), in view for a while:
        same direction (ahead in the camera's lane), oncoming, or crossing at the side street.
        ``lateral_of(direction, lane)`` overrides the lane centre (e.g. near the kerb)."""
        rng = self.rng
        v_cam, dur, lane_w = self.speed, self.duration, self.lane_w
        kind = rng.choice(['same', 'oncoming', 'crossing'], p=list(p))
        if kind == 'crossing' and self.cross_s is None:
            kind = 'oncoming'
        if kind == 'same':
            lane = int(rng.integers(lanes))
            lateral = -(lane * lane_w + lane_w / 2)
            if lateral_of is not None:
                lateral = lateral_of(-1, lane)
            v = float(rng.uniform(*v_same))
            if abs(lateral - self.cam_lateral) < 1.5:
                gap0 = max(float(rng.uniform(8, 35)), 6 + length / 2 + (v_cam - v) * dur)
                s0 = self.cam_s0 + gap0
            else:
                s0 = self.cam_s0 + float(rng.uniform(5, 45)) + (v_cam - v) * dur * 0.5
            return [self._along(s0, v, lateral)]
        if kind == 'oncoming':
            lane = int(rng.integers(lanes))
            lateral = lane * lane_w + lane_w / 2
            if lateral_of is not None:
                lateral = lateral_of(1, lane)
            v = float(rng.uniform(*v_oncoming))
            s0 = self.cam_s0 + v_cam * dur + float(rng.uniform(8, 60)) + v * dur
            return [self._along(s0, -v, lateral, back=True)]
        v = float(rng.uniform(3, 11)) * float(rng.choice([-1, 1]))
        off = (self.cross_hw / 2) * (-1 if v > 0 else 1)
        u_mid = float(rng.uniform(-12, 12))
        return [self._across(self.cross_s + off, u_mid - v * dur / 2, v)]

    def _v2_add_movers(self, lanes: int, cam_end: float) -> None:
        rng = self.rng
        v_cam = self.speed
        for _ in range(int(rng.integers(2, 8))):
            traj, = self._traffic(lanes, 4.5, (0.3 * v_cam, 1.5 * v_cam + 1), (4, 14),
                                  (0.4, 0.45, 0.15))
            self._car(traj)
        for _ in range(int(rng.choice([0, 1, 2], p=[0.45, 0.4, 0.15]))):
            traj, = self._traffic(lanes, 9.0, (0.3 * v_cam, 1.2 * v_cam + 1), (4, 12),
                                  (0.45, 0.4, 0.15))
            self._truck(traj)
        for _ in range(int(rng.choice([0, 1, 2], p=[0.5, 0.4, 0.1]))):
            traj, = self._traffic(lanes, 12.0, (0.3 * v_cam, 1.1 * v_cam + 1), (4, 11),
                                  (0.45, 0.4, 0.15))
            self._bus(traj)
        if rng.random() < 0.4:
            self._tram(lanes)
        kerb = self.road_hw - 0.9
        for kind, n, v_range in (('motorcycle', rng.choice([0, 1, 2], p=[0.45, 0.4, 0.15]),
                                  (5, 15)),
                                 ('bicycle', rng.choice([0, 1, 2, 3], p=[0.35, 0.3, 0.2, 0.15]),
                                  (2.5, 7))):
            for _ in range(int(n)):
                side_lane = (lambda d, lane: d * kerb) if rng.random() < 0.6 else None
                traj, = self._traffic(lanes, 2.0, v_range, v_range, (0.5, 0.35, 0.15),
                                      side_lane)
                self._two_wheeler(kind, traj, ridden=True)
        self._pedestrians(cam_end)

    def _pedestrians(self, cam_end: float) -> None:
        """People alone or in groups: along the sidewalk, crossing near or far, standing."""
        rng = self.rng
        v_cam, dur, edge = self.speed, self.duration, self.road_hw
        for _ in range(int(rng.integers(3, 10))):
            size = 1 if rng.random() < 0.6 else int(rng.integers(2, 5))
            kind = rng.choice(['sidewalk', 'crossing', 'standing'], p=[0.45, 0.35, 0.2])
            side = float(rng.choice([-1, 1]))
            lateral = side * (edge + float(rng.uniform(0.6, max(0.7, self.sidewalk_w - 0.6))))
            near = rng.random() < 0.4
            v = float(rng.uniform(0.8, 2.2)) * float(rng.choice([-1, 1]))
            if kind == 'sidewalk':
                s0 = (self.cam_s0 + (float(rng.uniform(5, 18)) if near
                                     else float(rng.uniform(15, 60))) + v_cam * dur)
            elif kind == 'crossing':
                if self.cross_s is not None and rng.random() < 0.5:
                    s = self.cross_s - self.cross_hw - float(rng.uniform(1, 3))
                else:
                    s = cam_end + float(rng.uniform(5, 12) if near else rng.uniform(12, 40))
                u_mid = float(rng.uniform(-edge, edge))
            else:
                s0 = self.cam_s0 + float(rng.uniform(6, 45)) + v_cam * dur
                yaw = float(rng.uniform(-math.pi, math.pi))
            for k in range(size):
                dl, ds = float(rng.uniform(-0.5, 0.5)), k * float(rng.uniform(0.6, 1.2))
                if kind == 'sidewalk':
                    self._walker(self._along(s0 + ds, v, lateral + dl, back=v < 0), abs(v))
                elif kind == 'crossing':
                    self._walker(self._across(s + dl * 2, u_mid - v * dur / 2 - ds, v), abs(v))
                else:
                    x, y, _ = self.path.at(s0 + ds, lateral + dl)
                    self._walker(lambda t, x=x, y=y, yaw=yaw + dl: (x, y, yaw), 0.0)

    # ---- bodies of moving objects ----
    def _parts(self, label: int, specs: Sequence[tuple]) -> list[tuple[int, Vec3]]:
        """Bodies from (shape, dims, texture, rgba) specs, parked out of view until placed."""
        parts = []
        for shape, dims, tex, rgba in specs:
            b = self._body(label, shape, dims, (0, 0, -50), 0, tex, rgba, static=False)
            parts.append((b, (0.0, 0.0, 0.0)))
        return parts

    def _wheels(self, label: int, length: float, width: float, r: float, axles: int = 2
                ) -> tuple[list[tuple[int, Vec3]], list[Pose]]:
        xs = np.linspace(-length * 0.36, length * 0.36, axles)
        specs, poses = [], []
        for fx in xs:
            for fy in (-1, 1):
                specs.append(('cylinder', (r, 0.25), None, _DARK))
                poses.append(((float(fx), fy * (width / 2 - 0.12), r), math.pi / 2, 0.0))
        return self._parts(label, specs), poses

    def _rigid(self, label: int, specs: Sequence[tuple], poses: Sequence[Pose],
               trajectory: Trajectory) -> None:
        parts = self._parts(label, specs)
        fixed = list(poses)
        self.movers.append(Mover(label, parts, trajectory, animate=lambda t: fixed))

    def _truck(self, trajectory: Trajectory) -> None:
        rng = self.rng
        lid = _LID['truck']
        length = float(rng.uniform(6.5, 11.0))
        width = float(rng.uniform(2.2, 2.55))
        cab_l = float(rng.uniform(1.8, 2.4))
        cab_h = float(rng.uniform(1.6, 2.0))
        box_h = float(rng.uniform(2.0, 3.0))
        tex, tint = self._pick('truck')
        tex2, tint2 = self._pick('truck')
        wheels, wposes = self._wheels(lid, length, width, 0.5, 3 if length > 9 else 2)
        box_l = length - cab_l - 0.2
        specs = [('box', (cab_l / 2, width / 2, cab_h / 2), tex, tint),
                 ('box', (box_l / 2, width / 2, box_h / 2), tex2, tint2)]
        poses = [((length / 2 - cab_l / 2, 0.0, 0.6 + cab_h / 2), 0.0, 0.0),
                 ((-length / 2 + box_l / 2, 0.0, 0.7 + box_h / 2), 0.0, 0.0)]
        parts = self._parts(lid, specs) + wheels
        fixed = poses + wposes
        self.movers.append(Mover(lid, parts, trajectory, animate=lambda t: fixed))

    def _bus(self, trajectory: Trajectory) -> None:
        rng = self.rng
        lid = _LID['bus']
        length = float(rng.uniform(10.0, 13.5))
        width, height = 2.55, float(rng.uniform(2.9, 3.3))
        tex, tint = self._pick('bus')
        wheels, wposes = self._wheels(lid, length, width, 0.5)
        specs = [('box', (length / 2, width / 2, height / 2 - 0.15), tex, tint),
                 ('box', (length / 2 - 0.3, width / 2 - 0.1, 0.12), None, tint)]
        poses = [((0.0, 0.0, 0.35 + height / 2), 0.0, 0.0),
                 ((0.0, 0.0, 0.35 + height + 0.05), 0.0, 0.0)]
        parts = self._parts(lid, specs) + wheels
        fixed = poses + wposes
        self.movers.append(Mover(lid, parts, trajectory, animate=lambda t: fixed))

    def _tram(self, lanes: int) -> None:
        """A tram of two or three cars on the inner lanes: oncoming, ahead, crossing or at a
        stop ahead of the camera."""
        rng = self.rng
        lid = _LID['train']
        cars = int(rng.integers(2, 4))
        car_l = float(rng.uniform(8.0, 11.0))
        height = float(rng.uniform(3.0, 3.5))
        tex, tint = self._pick('train')
        dur, v_cam = self.duration, self.speed
        kind = rng.choice(['oncoming', 'ahead', 'crossing', 'stop'], p=[0.35, 0.25, 0.2, 0.2])
        if kind == 'crossing' and self.cross_s is None:
            kind = 'oncoming'
        v = float(rng.uniform(4, 11))
        total = cars * (car_l + 0.6)
        # Where the first car is: ahead of the camera's end (oncoming), mid-crossing, or ahead
        # with the whole tram beyond the camera.
        lead = float(rng.uniform(12, 40))
        sign = float(rng.choice([-1, 1]))
        vv = 0.0 if kind == 'stop' else v
        gap = max(float(rng.uniform(10, 40)), 6 + total + (v_cam - vv) * dur)
        trajs = []
        for i in range(cars):
            back = i * (car_l + 0.6)
            if kind == 'oncoming':
                s0 = self.cam_s0 + v_cam * dur + lead + v * dur
                trajs.append(self._along(s0 + back, -v, self.lane_w / 2, back=True))
            elif kind == 'crossing':
                u0 = lead - 26.0 - sign * back - sign * v * dur / 2
                trajs.append(self._across(self.cross_s, u0, sign * v))
            else:
                lat = self.cam_lateral if lanes == 1 else -self.lane_w / 2
                trajs.append(self._along(self.cam_s0 + gap - back, vv, lat))
        for traj in trajs:
            specs = [('box', (car_l / 2, 1.3, height / 2 - 0.2), tex, tint),
                     ('box', (car_l / 2 - 0.4, 1.1, 0.15), None, _DARK)]
            poses = [((0.0, 0.0, 0.4 + height / 2 - 0.2), 0.0, 0.0),
                     ((0.0, 0.0, 0.4 + height - 0.25), 0.0, 0.0)]
            self._rigid(lid, specs, poses, traj)

    def _two_wheeler(self, kind: str, trajectory: Trajectory, ridden: bool) -> None:
        """A bicycle or motorcycle, with a rider whose legs pedal (bicycle) when ridden."""
        rng = self.rng
        lid = _LID[kind]
        bike = kind == 'bicycle'
        r = 0.34 if bike else 0.31
        base = 1.05 if bike else 1.4
        tex, tint = self._pick(kind)
        specs = [('cylinder', (r, 0.05 if bike else 0.12), None, _DARK)] * 2
        poses: list[Pose] = [((base / 2, 0.0, r), math.pi / 2, 0.0),
                             ((-base / 2, 0.0, r), math.pi / 2, 0.0)]
        if bike:
            specs = specs + [('box', (0.4, 0.03, 0.03), tex, tint),
                             ('box', (0.03, 0.03, 0.28), tex, tint),
                             ('box', (0.03, 0.28, 0.03), None, _DARK)]
            poses += [((0.05, 0.0, 0.72), 0.0, 0.12), ((-0.15, 0.0, 0.6), 0.0, 0.35),
                      ((base / 2 - 0.08, 0.0, 1.0), 0.0, 0.0)]
            seat = (-0.2, 0.95)
        else:
            specs = specs + [('box', (0.6, 0.18, 0.22), tex, tint),
                             ('box', (0.03, 0.35, 0.03), None, _DARK)]
            poses += [((0.0, 0.0, 0.65), 0.0, 0.0), ((0.5, 0.0, 1.05), 0.0, 0.0)]
            seat = (-0.15, 0.95)
        parts = self._parts(lid, specs)
        fixed = list(poses)
        if not ridden:
            self.movers.append(Mover(lid, parts, trajectory, animate=lambda t: fixed))
            return
        rider = _LID['rider']
        shirt, shirt_tint = self._pick('rider')
        pants = self._pick('rider') if rng.random() < 0.6 else (None, [0.15, 0.15, 0.2, 1])
        head = [0.9, 0.9, 0.9, 1] if not bike or rng.random() < 0.5 else \
            [float(v) for v in rng.uniform(0.35, 0.95) * np.array([1.0, 0.8, 0.65])] + [1]
        torso_l, lean = 0.6, float(rng.uniform(0.35, 0.75))
        thigh, shin = 0.45, 0.45
        rspecs = [('box', (0.12, 0.19, torso_l / 2), shirt, shirt_tint),
                  ('sphere', (0.12,), None, head)]
        rspecs += [('box', (0.07, 0.07, thigh / 2), pants[0], pants[1]),
                   ('box', (0.06, 0.06, shin / 2), pants[0], pants[1])] * 2
        rspecs += [('box', (0.05, 0.05, 0.3), shirt, shirt_tint)] * 2
        parts = parts + self._parts(rider, rspecs)
        crank = (0.05 if bike else 0.15, 0.35 if bike else 0.45)
        cadence = float(rng.uniform(1.0, 1.5)) if bike else 0.0
        phase = float(rng.uniform(0, 2 * math.pi))
        hx, hz = seat
        top = _limb(seat, torso_l, math.pi - lean)
        torso = _segment(top, seat)
        head_pos = _limb(seat, torso_l + 0.14, math.pi - lean)
        hand = (base / 2 - 0.1, 1.0 if bike else 1.05)
        arm = _segment(_limb(seat, torso_l - 0.05, math.pi - lean), hand)

        def animate(t: float) -> list[Pose]:
            out = list(fixed)
            out.append(((torso[0], 0.0, torso[1]), 0.0, torso[2]))
            out.append(((head_pos[0], 0.0, head_pos[1]), 0.0, 0.0))
            for fy, off in ((-1, 0.0), (1, math.pi)):
                a = 2 * math.pi * cadence * t + phase + off
                foot = (crank[0] + 0.17 * math.cos(a), crank[1] + 0.17 * math.sin(a))
                dx, dz = foot[0] - hx, foot[1] - hz
                d = min(math.hypot(dx, dz), thigh + shin - 1e-3)
                # Knee forward of the hip-foot line (two-segment leg of known lengths).
                bend = math.acos(max(-1.0, min(1.0, (thigh ** 2 + d ** 2 - shin ** 2)
                                               / (2 * thigh * d))))
                toward = math.atan2(dx, -dz)
                knee = _limb(seat, thigh, toward + bend)
                up = _segment(seat, knee)
                low = _segment(knee, foot)
                out.append(((up[0], fy * 0.11, up[1]), 0.0, up[2]))
                out.append(((low[0], fy * 0.11, low[1]), 0.0, low[2]))
            for fy in (-1, 1):
                out.append(((arm[0], fy * 0.24, arm[1]), 0.0, arm[2]))
            return out

        self.movers.append(Mover(lid, parts, trajectory, animate=animate))

    def _walker(self, trajectory: Trajectory, speed: float) -> None:
        """A person whose legs (thigh and shin) and arms swing as they walk at ``speed``."""
        rng = self.rng
        lid = _LID['person']
        height = float(rng.uniform(1.5, 1.95)) if rng.random() < 0.85 else \
            float(rng.uniform(1.0, 1.4))
        girth = float(rng.uniform(0.8, 1.3))
        leg, torso_h = height * 0.47, height * 0.34
        head_r = height * 0.065
        arm_l = height * 0.34
        tex, tint = self._pick('person')
        pants = self._pick('person') if rng.random() < 0.7 else (None, [0.15, 0.15, 0.2, 1])
        skin = [float(v) for v in rng.uniform(0.35, 0.95) * np.array([1.0, 0.8, 0.65])] + [1]
        specs = [('box', (0.11 * girth, 0.19 * girth, torso_h / 2), tex, tint),
                 ('sphere', (head_r,), None, skin)]
        specs += [('box', (0.07 * girth, 0.07 * girth, leg / 4), pants[0], pants[1])] * 4
        specs += [('box', (0.045 * girth, 0.045 * girth, arm_l / 2), tex, tint)] * 2
        parts = self._parts(lid, specs)
        amp = float(rng.uniform(0.3, 0.45)) if speed > 0 else 0.0
        # Cadence from the stride the swing gives: speed = 2 strides per cycle.
        freq = speed / max(4 * leg * math.sin(amp), 1e-6) if speed > 0 else 0.0
        phase = float(rng.uniform(0, 2 * math.pi))
        hip_y = 0.1 * girth
        sh_y = 0.19 * girth + 0.05 * girth

        def animate(t: float) -> list[Pose]:
            a = 2 * math.pi * freq * t + phase
            legs = []
            low = math.inf
            for fy, sgn in ((-1, 1.0), (1, -1.0)):
                swing = amp * math.sin(a) * sgn
                bend = 1.4 * amp * max(0.0, -math.cos(a) * sgn)
                knee = _limb((0.0, leg), leg / 2, swing)
                foot = _limb(knee, leg / 2, swing - bend)
                low = min(low, foot[1])
                legs.append((fy, knee, foot, swing))
            dz = -low                              # the lower foot on the ground
            out: list[Pose] = [((0.0, 0.0, leg + torso_h / 2 + dz), 0.0, 0.0),
                               ((0.0, 0.0, leg + torso_h + head_r + dz), 0.0, 0.0)]
            for fy, knee, foot, _ in legs:
                up = _segment((0.0, leg), knee)
                down = _segment(knee, foot)
                out.append(((up[0], fy * hip_y, up[1] + dz), 0.0, up[2]))
                out.append(((down[0], fy * hip_y, down[1] + dz), 0.0, down[2]))
            for fy, _, _, swing in legs:
                shoulder = (0.0, leg + torso_h - 0.04)
                hand = _limb(shoulder, arm_l, -0.8 * swing)
                seg = _segment(shoulder, hand)
                out.append(((seg[0], fy * sh_y, seg[1] + dz), 0.0, seg[2]))
            return out

        self.movers.append(Mover(lid, parts, trajectory, animate=animate))

    # ---- appearance ----
    def _v2_appearance(self) -> None:
        """Light, sky, exposure, noise and haze, over wider ranges than v1."""
        rng = self.rng
        self.light_dir = [float(v) for v in (rng.uniform(-1, 1), rng.uniform(-1, 1),
                                             rng.uniform(0.2, 1.5))]
        warm = float(rng.uniform(-0.15, 0.15))
        self.light_color = [float(v) for v in np.clip(rng.uniform(0.8, 1.0, 3)
                                                      + [warm, 0.0, -warm], 0.5, 1.0)]
        self.ambient = float(rng.uniform(0.3, 0.8))
        self.diffuse = float(rng.uniform(0.2, 0.65))
        self.shadow = 0
        sky = rng.choice(['blue', 'overcast', 'dusk'], p=[0.5, 0.3, 0.2])
        if sky == 'overcast':
            top = base_color(rng, 'grey')
            horizon = np.clip(top + rng.uniform(10, 60), 0, 255)
        elif sky == 'dusk':
            top = np.array([rng.uniform(40, 110), rng.uniform(50, 110), rng.uniform(110, 180)])
            horizon = np.array([rng.uniform(200, 255), rng.uniform(120, 190),
                                rng.uniform(60, 130)])
        else:
            top = np.array([rng.uniform(60, 140), rng.uniform(110, 180), rng.uniform(180, 250)])
            horizon = np.clip(top + rng.uniform(20, 80), 0, 255)
        self.sky_top, self.sky_horizon = top, horizon
        self.gain = float(rng.uniform(0.6, 1.35))
        self.noise_sigma = float(rng.uniform(0.5, 7.0))
        self.blur = bool(rng.random() < 0.35)
        self.shake = float(rng.uniform(0.0, 0.35))
        self.haze = float(rng.uniform(40, 250)) if rng.random() < 0.35 else 0.0
        self._sky_img = None
