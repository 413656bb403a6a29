"""Host <-> device transfers: downloads into the caller's buffers, page-locking in place."""

import array
import gc
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from flow2seg_ros import transfers
from flow2seg_ros.encodings import MessageBuffers
from flow2seg_ros.transfers import HostRegistry, PinnedDownload


def test_download_parts_fill_the_given_buffers_and_slice_the_rest():
    """Parts with a destination come back as that array, filled; the others as their bytes."""
    packed = torch.arange(40, dtype=torch.uint8)
    mine = np.zeros(10, np.uint8)
    also = np.zeros((2, 5), np.uint8)
    out = PinnedDownload(torch.device('cpu')).parts(packed, [8, 10, 12, 10],
                                                    [None, mine, None, also])
    assert out[1] is not None and np.shares_memory(out[1], mine)
    assert np.shares_memory(out[3], also)
    for part, (a, b) in zip(out, [(0, 8), (8, 18), (18, 30), (30, 40)]):
        np.testing.assert_array_equal(part, np.arange(a, b, dtype=np.uint8))
    np.testing.assert_array_equal(mine, np.arange(8, 18))


class _FakeCudart:
    """Stands in for torch.cuda.cudart(): records page-locking; fails where told to."""

    def __init__(self):
        self.registered, self.unregistered, self.fail = [], [], False

    def cudaHostRegister(self, ptr, n, flags):  # noqa: N802 - CUDA's name
        if self.fail:
            return 712  # cudaErrorHostMemoryAlreadyRegistered
        self.registered.append((ptr, n))
        return 0

    def cudaHostUnregister(self, ptr):  # noqa: N802
        self.unregistered.append(ptr)
        return 0


@pytest.fixture
def cudart(monkeypatch):
    fake = _FakeCudart()
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'cudart', lambda: fake)
    return fake


def test_host_registry_locks_each_buffer_once_and_releases_it_with_its_owner(cudart):
    """A buffer is page-locked the first time it is seen, never twice, and unlocked when the
    object owning its memory goes (before the memory is freed)."""
    registry = HostRegistry(transfers._Pages())
    owner = array.array('B', bytes(3 * HostRegistry.PAGE))
    view = np.frombuffer(owner, np.uint8).reshape(3, -1)
    ptr = view.__array_interface__['data'][0]
    assert registry.ensure(view) and registry.ensure(view)
    assert cudart.registered == [(ptr, owner.buffer_info()[1])]
    # a range sharing a page with a locked one, by this registry or another of the process,
    # would be refused by CUDA: left pageable
    assert not registry.ensure(view[1:])
    assert not HostRegistry(registry.pages).ensure(view[1:])
    assert registry.skipped == 1 and len(cudart.registered) == 1
    del view
    gc.collect()
    assert cudart.unregistered == []  # the owner is alive
    del owner
    gc.collect()
    assert cudart.unregistered == [ptr]


def test_host_registry_leaves_a_refused_buffer_pageable(cudart, monkeypatch):
    """A buffer CUDA refuses stays pageable, its error is cleared (or torch would report it at
    its next kernel launch), and it is not asked again."""
    cleared = []
    monkeypatch.setattr(transfers, '_clear_cuda_error', lambda: cleared.append(1))
    cudart.fail = True
    registry = HostRegistry(transfers._Pages())
    buf = np.zeros(10000, np.uint8)
    assert not registry.ensure(buf)
    assert registry.registered == 0 and registry.skipped == 1 and cleared == [1]
    cudart.fail = False
    assert not registry.ensure(buf)  # not asked again
    assert cudart.registered == [] and cleared == [1]
    assert registry.ensure(np.zeros(10000, np.uint8))  # another buffer is


def test_message_buffers_serve_as_download_destinations():
    """A node's reused message buffers take the device path's outputs in place: the message
    then carries them without a copy."""
    boxes = MessageBuffers(SimpleNamespace)
    dst = boxes.buffer('overlay', (4, 5, 3))
    out = PinnedDownload(torch.device('cpu')).parts(
        torch.arange(60, dtype=torch.uint8), [60], [dst])
    msg = boxes.message('overlay', out[0].reshape(4, 5, 3), 'rgb8', None)
    assert boxes.copies == 0 and bytes(msg.data) == bytes(range(60))
