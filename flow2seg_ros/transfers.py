"""Host <-> device transfers of the device path, through reused page-locked memory.

:class:`PinnedUpload` sends a camera frame up through one reused page-locked buffer;
:class:`PinnedDownload` brings outputs back in one synchronisation, into page-locked blocks or
straight into the caller's host arrays (a node's message buffers), page-locked in place by
:class:`HostRegistry`. On the CPU the same classes copy plainly (tests run them there).
"""
from __future__ import annotations

import ctypes
import logging
import threading
from typing import Any, Optional, Sequence
import weakref

import numpy as np
import torch

from flow2seg_ros.encodings import parallel_copy

__all__ = ['HostRegistry', 'PinnedDownload', 'PinnedUpload']

log = logging.getLogger(__name__)


class PinnedUpload:
    """Host frame -> device tensor through one reused host buffer (page-locked on CUDA).

    The buffer is rewritten only after the previous frame's copy out of it has finished (an
    event recorded after each copy is waited on first), so reuse is safe whatever the caller
    does between frames. Each call returns a new device tensor (from torch's caching allocator).

    Args:
        device: where frames go.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._host: Optional[torch.Tensor] = None
        self._event: Optional[Any] = None
        self.allocations = 0

    def __call__(self, array: np.ndarray) -> torch.Tensor:
        dtype = torch.from_numpy(np.empty(0, array.dtype)).dtype
        if self._host is None or tuple(self._host.shape) != array.shape \
                or self._host.dtype != dtype:
            if self._event is not None:
                self._event.synchronize()
            host = torch.empty(array.shape, dtype=dtype)
            self._host = host.pin_memory() if self.device.type == 'cuda' else host
            self.allocations += 1
        elif self._event is not None:
            self._event.synchronize()  # the last copy out of the buffer is done
        host = self._host.numpy()
        if array.flags.c_contiguous and array.dtype == np.uint8:  # large frames on a few threads
            parallel_copy(host.reshape(-1), array.reshape(-1))
        else:
            np.copyto(host, array)
        if self.device.type != 'cuda':
            return self._host.clone()
        out = self._host.to(self.device, non_blocking=True)
        self._event = torch.cuda.Event()
        self._event.record()
        return out


class PinnedDownload:
    """Device -> host in one copy into page-locked memory (CUDA), as numpy arrays.

    Each call takes a page-locked block from torch's caching host allocator; the returned arrays
    are views of it and keep it alive, so results of earlier frames are never overwritten, and
    the block goes back to the cache when they are dropped. :meth:`parts` can also copy parts
    straight into the caller's own host arrays (a node's reused message buffers), page-locked
    in place once (:class:`HostRegistry`), so they need no second copy on the host.

    Args:
        device: where the data is.
    """

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.registry = HostRegistry()

    def __call__(self, packed: torch.Tensor) -> np.ndarray:
        """(n,) uint8 device tensor -> (n,) uint8 numpy array that owns its memory."""
        if self.device.type != 'cuda':
            return packed.numpy()
        host = torch.empty(packed.shape, dtype=packed.dtype, pin_memory=True)
        host.copy_(packed, non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        event.synchronize()
        return host.numpy()

    def parts(self, packed: torch.Tensor, sizes: Sequence[int],
              into: Sequence[Optional[np.ndarray]]) -> list[np.ndarray]:
        """A packed (n,) uint8 device tensor in consecutive parts, one synchronisation.

        Args:
            packed: the device tensor.
            sizes: bytes of each part, in order (summing to n).
            into: per part, a C-contiguous uint8 host array of that many bytes to fill (it is
                returned, filled), or None (that part goes into a new page-locked block).

        Returns:
            Per part, a flat uint8 host array.
        """
        bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        own = [i for i, dst in enumerate(into) if dst is None]
        if self.device.type != 'cuda' or len(own) == len(sizes):
            host = self(packed) if self.device.type == 'cuda' else packed.numpy()
            out = [host[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
            for i, dst in enumerate(into):
                if dst is not None:
                    parallel_copy(dst.reshape(-1), out[i])
                    out[i] = dst.reshape(-1)
            return out
        out: list[Optional[np.ndarray]] = [None] * len(sizes)
        block = None
        if own:
            block = torch.empty(sum(sizes[i] for i in own), dtype=torch.uint8, pin_memory=True)
        at = 0
        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
            if into[i] is None:
                dst = block[at:at + b - a]
                at += b - a
                out[i] = dst.numpy()
            else:
                flat = into[i].reshape(-1)
                self.registry.ensure(flat)  # page-locked in place: a direct, async copy
                dst = torch.from_numpy(flat)
                out[i] = flat
            dst.copy_(packed[a:b], non_blocking=True)
        event = torch.cuda.Event()
        event.record()
        event.synchronize()
        return out  # type: ignore[return-value]


def _owner(array: np.ndarray) -> Any:
    """The object whose memory a numpy array views (an ``array.array``, a ``bytearray``...)."""
    base: Any = array
    while isinstance(base, np.ndarray) and base.base is not None:
        base = base.base
    return base.obj if isinstance(base, memoryview) else base


class _Pages:
    """The page ranges registered with CUDA in this process (registrations are process-wide),
    and the ranges CUDA refused (not asked again)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ranges: dict[int, tuple[int, int]] = {}  # address -> (first page, end page)
        self.refused: set[tuple[int, int]] = set()  # (address, bytes)


PROCESS_PAGES = _Pages()


def _clear_cuda_error() -> None:
    """Reset the CUDA runtime's last error after a refused registration, or torch would report
    it at its next kernel launch: ``cudaGetLastError`` of the runtime library torch loaded
    (best effort; found through /proc/self/maps)."""
    try:
        with open('/proc/self/maps') as maps:
            paths = {line.split()[-1] for line in maps if 'libcudart' in line}
        for path in paths:
            ctypes.CDLL(path).cudaGetLastError()
    except (OSError, AttributeError):
        pass


class HostRegistry:
    """Host arrays made page-locked in place (``cudaHostRegister``) for direct device copies.

    An array is registered once, the first time it is seen, and unregistered when the object
    that owns its memory goes (a ``weakref.finalize`` on it runs before its memory is freed).
    Registration pins whole pages, and CUDA refuses a range that shares a page with an earlier
    one, so an array whose pages touch a registered range (of any registry in the process) is
    left pageable (copies into it still work, staged by the driver); so is one whose owner
    cannot be weakly referenced, and one CUDA refused (asked once; its error is cleared).

    Args:
        pages: the registered ranges (default the process's own).
    """

    PAGE = 4096

    def __init__(self, pages: Optional[_Pages] = None) -> None:
        self.pages = PROCESS_PAGES if pages is None else pages
        self.registered = 0  # ranges this registry locked
        self.skipped = 0  # times an array was left pageable

    def _span(self, ptr: int, n: int) -> tuple[int, int]:
        return ptr // self.PAGE, -(-(ptr + n) // self.PAGE)

    def ensure(self, array: np.ndarray) -> bool:
        """Page-lock ``array``'s memory if it is not yet; whether it is now."""
        ptr, n = array.__array_interface__['data'][0], array.nbytes
        first, end = self._span(ptr, n)
        pages = self.pages
        with pages.lock:
            if pages.ranges.get(ptr) == (first, end):
                return True
            if (not torch.cuda.is_available() or n == 0 or (ptr, n) in pages.refused
                    or any(first < e and f < end for f, e in pages.ranges.values())):
                self.skipped += 1
                return False
            try:
                weakref.finalize(_owner(array), self._release, pages, ptr)
            except TypeError:  # an owner without weak references: never registered
                self.skipped += 1
                return False
            if int(torch.cuda.cudart().cudaHostRegister(ptr, n, 0)) != 0:
                pages.refused.add((ptr, n))
                _clear_cuda_error()
                self.skipped += 1
                log.warning('a host buffer of %d bytes could not be page-locked; copies into it '
                            'go through the driver', n)
                return False
            pages.ranges[ptr] = (first, end)
            self.registered += 1
            return True

    @staticmethod
    def _release(pages: _Pages, ptr: int) -> None:
        with pages.lock:
            if pages.ranges.pop(ptr, None) is not None:
                torch.cuda.cudart().cudaHostUnregister(ptr)
