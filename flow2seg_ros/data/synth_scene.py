"""One synthetic street sequence: its pybullet client, the motion of its objects and rendering.

:class:`SynthSequence` builds the scene (:class:`~flow2seg_ros.data.synth_world.SceneBuilder`),
poses the camera and the moving objects at each frame and renders with pybullet's TinyRenderer
(CPU, ``p.DIRECT``): the colour image, an exact per-object segmentation mask (body ids, mapped to
Cityscapes label ids) and the depth buffer. :meth:`SynthSequence.render_frame` returns them with
the camera and the moving bodies' poses, from which
:func:`~flow2seg_ros.data.synth_flow.ground_truth_flow` computes the exact flow.
"""
from __future__ import annotations

import math
from pathlib import Path
import tempfile
from typing import Optional, Sequence

import cv2
import numpy as np

from flow2seg_ros.data.synth_flow import RenderedFrame
from flow2seg_ros.data.synth_props import PropsBuilder
from flow2seg_ros.data.synth_world import FPS, HFOV_DEG, Mover, SCENES, Vec3

__all__ = ['SynthSequence']

_NEAR = 0.1     # clipping planes of the camera [m]
_FAR = 400.0


class SynthSequence(PropsBuilder):
    """One generated street sequence, built in its own pybullet client.

    Args:
        seed: seed of this sequence (scene, motion, appearance and noise all follow from it).
        frames: number of frames.
        size: (width, height) of the rendered images.
        texture_dir: folder for the procedural texture PNGs (a temporary one when None).
        scenes: scene family, ``v1`` (ten classes; the bundled model's data) or ``v2`` (the
            19 classes, articulated pedestrians, riders, wider variation).
    """

    def __init__(self, seed: int | Sequence[int], frames: int, size: tuple[int, int] = (512, 256),
                 texture_dir: Optional[str | Path] = None, scenes: str = 'v1') -> None:
        import pybullet as p

        if frames < 1:
            raise ValueError(f'frames must be >= 1, got {frames}')
        if scenes not in SCENES:
            raise ValueError(f'scenes must be one of {", ".join(SCENES)}, got {scenes!r}')
        self.scenes = scenes
        self.hfov = HFOV_DEG         # horizontal field of view [deg] (v2 draws its own)
        self.haze = 0.0              # haze distance [m] (v2 only; 0 = none)
        self._p = p
        self.width, self.height = int(size[0]), int(size[1])
        self.frames = int(frames)
        self.rng = np.random.default_rng(seed)
        self._frame_seed = int(self.rng.integers(2**31))     # per-frame jitter and noise
        self._client = p.connect(p.DIRECT)
        self._own_tmp = None
        if texture_dir is None:
            self._own_tmp = tempfile.TemporaryDirectory(prefix='flow2seg_synth_')
            texture_dir = self._own_tmp.name
        self._tex_dir = Path(texture_dir)
        self._tex_count = 0
        self._labels: dict[int, int] = {}
        self.movers: list[Mover] = []
        self.static_bodies: list[int] = []
        try:
            self._build()
        except Exception:
            self.close()
            raise

    # ---- life cycle ----
    def close(self) -> None:
        if self._client is not None:
            self._p.disconnect(self._client)
            self._client = None
        if self._own_tmp is not None:
            self._own_tmp.cleanup()
            self._own_tmp = None

    def __enter__(self) -> 'SynthSequence':
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- per frame ----
    def time(self, frame: int) -> float:
        """Time of a frame in seconds."""
        return frame / FPS

    def camera_pose(self, frame: int) -> tuple[Vec3, float, float]:
        """(eye position, yaw, pitch) of the camera at a frame."""
        t = self.time(frame)
        s = self.cam_s0 + self.speed * t
        x, y, h = self.path.at(s, self.cam_lateral)
        jitter = np.random.default_rng([self._frame_seed, frame]).normal(0, 1, 2)
        pitch = self.cam_pitch + math.radians(self.shake * jitter[0])
        yaw = h + math.radians(0.15 * jitter[1])
        return (x, y, self.cam_height), yaw, pitch

    def place(self, frame: int) -> None:
        """Move every moving object to where it is at a frame."""
        p = self._p
        t = self.time(frame)
        for m in self.movers:
            x, y, yaw = m.pose(t)
            c, s = math.cos(yaw), math.sin(yaw)
            if m.animate is not None:
                for (body, _), ((ox, oy, oz), roll, pitch) in zip(m.parts, m.animate(t)):
                    p.resetBasePositionAndOrientation(
                        body, [x + c * ox - s * oy, y + s * ox + c * oy, oz],
                        p.getQuaternionFromEuler([roll, pitch, yaw]),
                        physicsClientId=self._client)
                continue
            quat = p.getQuaternionFromEuler([0, 0, yaw])
            swing = m.gait * math.sin(2 * math.pi * 1.8 * t + m.phase) if m.gait else 0.0
            for i, (body, (ox, oy, oz)) in enumerate(m.parts):
                if m.legs and i in m.legs:
                    ox += swing if i == m.legs[0] else -swing
                p.resetBasePositionAndOrientation(
                    body, [x + c * ox - s * oy, y + s * ox + c * oy, oz], quat,
                    physicsClientId=self._client)

    def render(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """Render a frame.

        Args:
            frame: frame index (0-based).

        Returns:
            (rgb, labels): (H, W, 3) uint8 RGB image and (H, W) uint8 Cityscapes label ids.
        """
        out = self.render_frame(frame)
        return out.rgb, out.labels

    def render_frame(self, frame: int) -> RenderedFrame:
        """Render a frame with its geometry: body ids, depth, camera and moving bodies' poses.

        The image and labels are those of :meth:`render`; nothing here draws from the scene's
        random generator.

        Args:
            frame: frame index (0-based).
        """
        p = self._p
        if not 0 <= frame < self.frames:
            raise ValueError(f'frame must be in [0, {self.frames}), got {frame}')
        self.place(frame)
        (ex, ey, ez), yaw, pitch = self.camera_pose(frame)
        fwd = (math.cos(yaw) * math.cos(pitch), math.sin(yaw) * math.cos(pitch), math.sin(pitch))
        view = p.computeViewMatrix([ex, ey, ez], [ex + fwd[0], ey + fwd[1], ez + fwd[2]],
                                   [0, 0, 1], physicsClientId=self._client)
        aspect = self.width / self.height
        vfov = math.degrees(2 * math.atan(math.tan(math.radians(self.hfov / 2)) / aspect))
        proj = p.computeProjectionMatrixFOV(vfov, aspect, _NEAR, _FAR,
                                            physicsClientId=self._client)
        _, _, rgba, zbuf, seg = p.getCameraImage(
            self.width, self.height, view, proj, renderer=p.ER_TINY_RENDERER,
            lightDirection=self.light_dir, lightColor=self.light_color,
            lightAmbientCoeff=self.ambient, lightDiffuseCoeff=self.diffuse,
            lightSpecularCoeff=0.05, shadow=self.shadow, physicsClientId=self._client)
        rgba = np.asarray(rgba, np.uint8).reshape(self.height, self.width, 4)
        seg = np.asarray(seg).reshape(self.height, self.width)
        labels = self._lut[np.clip(seg, -1, len(self._lut) - 2) + 1]
        if self._sky_img is None:
            ramp = np.linspace(0, 1, self.height, dtype=np.float32)[:, None, None]
            grad = self.sky_top[None, None] * (1 - ramp) + self.sky_horizon[None, None] * ramp
            self._sky_img = np.ascontiguousarray(
                np.broadcast_to(grad, (self.height, self.width, 3))).astype(np.float32)
        img = np.where((seg < 0)[..., None], self._sky_img, rgba[..., :3].astype(np.float32))
        zbuf = np.asarray(zbuf, np.float64).reshape(self.height, self.width)
        # OpenGL depth buffer (0 at the near plane, 1 at the far one) -> metres along the axis.
        depth = (_FAR * _NEAR / (_FAR - (_FAR - _NEAR) * zbuf)).astype(np.float32)
        depth[seg < 0] = np.inf
        if self.haze > 0:
            fade = (1.0 - np.exp(-depth / self.haze))[..., None] * (seg >= 0)[..., None]
            img = img * (1.0 - fade) + self.sky_horizon.astype(np.float32) * fade
            img = img.astype(np.float32)
        noise_rng = np.random.default_rng([self._frame_seed, frame, 1])
        noise = noise_rng.standard_normal(img.shape, dtype=np.float32)
        noise *= self.noise_sigma
        img *= self.gain
        img += noise
        img = img.clip(0, 255, out=img).astype(np.uint8)
        if self.blur:
            img = cv2.GaussianBlur(img, (3, 3), 0.6)
        proj_m = np.asarray(proj, np.float64).reshape(4, 4).T        # pybullet: column-major
        return RenderedFrame(
            rgb=img, labels=labels, body_ids=seg.astype(np.int32), depth=depth,
            view=np.asarray(view, np.float64).reshape(4, 4).T, proj_x=float(proj_m[0, 0]),
            proj_y=float(proj_m[1, 1]), near=_NEAR, poses=self.body_poses())

    def body_poses(self) -> dict[int, np.ndarray]:
        """(4, 4) world-from-body transform of every moving object's body, as placed now."""
        p = self._p
        poses = {}
        for m in self.movers:
            for body, _ in m.parts:
                pos, quat = p.getBasePositionAndOrientation(body, physicsClientId=self._client)
                pose = np.eye(4)
                pose[:3, :3] = np.asarray(p.getMatrixFromQuaternion(quat)).reshape(3, 3)
                pose[:3, 3] = pos
                poses[body] = pose
        return poses
