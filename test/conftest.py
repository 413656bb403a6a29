"""Shared test fixtures: DDS isolation for every ROS test, and tiny Flow2Seg models.

DDS isolation is set up in ``pytest_configure``, i.e. before any test module is imported and
long before rclpy creates a participant: discovery stays on loopback
(``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``), this run gets its own ``ROS_DOMAIN_ID`` derived
from the pid (parallel runs on one machine do not hear each other), and Fast DDS loads the
shipped large-image profile, whatever the calling shell set (the values come from
:func:`flow2seg_ros.dds.dds_environment`, the one place the project derives them). Child
processes started by tests inherit all three.
"""

import os
from pathlib import Path
from typing import Any, Dict, Tuple

import pytest

from flow2seg_ros import dds

REPO = Path(__file__).resolve().parents[1]
FASTDDS_PROFILE = REPO / 'config' / 'fastdds_large_images.xml'


def isolated_dds_environment() -> Dict[str, str]:
    """The environment variables that keep this test run's DDS traffic to itself."""
    # Fast DDS accepts domain ids 0..232; keep clear of 0 (everyone's default). Starting from
    # an empty environment (but the distribution) ignores what the calling shell set.
    base = {'ROS_DISTRO': os.environ['ROS_DISTRO']} if os.environ.get('ROS_DISTRO') else {}
    env = dds.dds_environment(dds.default_domain_id(), base=base)
    return {k: env[k] for k in dds.DDS_VARIABLES if k in env}


def pytest_configure(config: Any) -> None:
    """Set the DDS isolation variables before test modules (and rclpy) are imported."""
    os.environ.update(isolated_dds_environment())
    config.addinivalue_line('markers', 'cuda: needs a CUDA GPU (skipped without one; '
                                       '`make gpu-check` runs them)')


def pytest_collection_modifyitems(config: Any, items: list) -> None:
    """Skip tests marked ``cuda`` where torch sees no CUDA device, saying so."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason='needs a CUDA GPU (none here); `make gpu-check` runs it')
    for item in items:
        if 'cuda' in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope='session', autouse=True)
def dds_isolation() -> Dict[str, str]:
    """Session-wide DDS isolation (set in pytest_configure); fails loudly if it was undone."""
    env = isolated_dds_environment()
    for key, value in env.items():
        if os.environ.get(key) != value:
            os.environ[key] = value
    assert FASTDDS_PROFILE.is_file(), f'Fast DDS profile missing: {FASTDDS_PROFILE}'
    return env


TINY_CLASSES = {
    'names': ['road', 'building', 'car', 'person'],
    'colors': [[128, 64, 128], [70, 70, 70], [0, 0, 142], [220, 20, 60]],
    'label_ids': [7, 11, 26, 24],
    'ignore_index': 255,
}


def make_tiny_model(seed: int = 0, **model_kwargs: Any) -> Tuple[Any, Dict[str, Any]]:
    """A tiny random ``lite`` Flow2Seg model and its model card (32x64 network input);
    ``model_kwargs`` override the lite factory's tiny arguments."""
    from flow2seg_ros.classes import ClassSet
    from flow2seg_ros.weights import random_model

    kwargs = dict(widths=[8, 8, 16, 16], ppm_channels=8, flow_widths=[4, 4, 8, 8],
                  fusion_channels=8) | model_kwargs
    return random_model('lite', classes=ClassSet.from_dict(TINY_CLASSES), input_size=(32, 64),
                        seed=seed, **kwargs)


@pytest.fixture(scope='session')
def tiny_model() -> Tuple[Any, Dict[str, Any]]:
    """(model, card) of a tiny random lite model, shared by the session."""
    return make_tiny_model()


@pytest.fixture(scope='session')
def tiny_model_file(tmp_path_factory: pytest.TempPathFactory, tiny_model: Any) -> Path:
    """The tiny model saved with ``weights.save_model`` (.safetensors + .json card)."""
    from flow2seg_ros.weights import save_model

    model, card = tiny_model
    path = tmp_path_factory.mktemp('tiny_model') / 'tiny_lite.safetensors'
    save_model(model, path, card)
    return path


@pytest.fixture
def context() -> Any:
    """An rclpy context of its own for one test (init and shutdown around it)."""
    import rclpy
    from rclpy.context import Context

    ctx = Context()
    rclpy.init(context=ctx)
    yield ctx
    rclpy.shutdown(context=ctx)
