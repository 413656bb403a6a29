"""Run the tests marked ``cuda`` where pytest is not installed (a bare GPU machine).

``make gpu-check`` must run from a plain copy of the repository on a machine that has torch,
torchvision, OpenCV, numpy, safetensors and PyYAML, and nothing else. When pytest is missing,
this module stands in for the part of it that the ``cuda`` tests use: ``pytest.mark.<name>``
(``parametrize`` expanded), ``pytest.raises`` and ``pytest.approx``-free plain ``assert``\\ s.
It imports the test files, runs every test function marked ``cuda`` once per parameter set, and
prints ``N passed, M failed``; the exit status is 1 when any failed.

    python -m flow2seg_ros.marked_tests test/test_gpu_path.py
"""
from __future__ import annotations

import contextlib
import importlib.util
import itertools
from pathlib import Path
import sys
import time
import traceback
import types
from typing import Any, Callable, Iterator, Optional, Sequence

__all__ = ['install_stub', 'marked_cases', 'main']


class _Mark:
    def __init__(self, name: str, args: tuple, kwargs: dict) -> None:
        self.name, self.args, self.kwargs = name, args, kwargs


class _MarkDecorator:
    """``pytest.mark.name`` and ``pytest.mark.name(args)``: records a mark on a function."""

    def __init__(self, name: str, args: tuple = (), kwargs: Optional[dict] = None) -> None:
        self.name, self.args, self.kwargs = name, args, kwargs or {}

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if len(args) == 1 and not kwargs and callable(args[0]):
            func = args[0]
            func.__dict__.setdefault('pytestmark', []).append(
                _Mark(self.name, self.args, self.kwargs))
            return func
        return _MarkDecorator(self.name, args, kwargs)


class _MarkGenerator:
    def __getattr__(self, name: str) -> _MarkDecorator:
        return _MarkDecorator(name)


@contextlib.contextmanager
def _raises(expected: Any, match: Optional[str] = None) -> Iterator[None]:
    import re
    try:
        yield
    except expected as exc:
        if match is not None and not re.search(match, str(exc)):
            raise AssertionError(f'{exc!r} does not match {match!r}') from exc
    else:
        raise AssertionError(f'did not raise {expected}')


def install_stub() -> None:
    """Put a minimal ``pytest`` module in ``sys.modules`` (only where pytest is missing)."""
    stub = types.ModuleType('pytest')
    stub.mark = _MarkGenerator()
    stub.raises = _raises
    stub.fixture = lambda *a, **k: (a[0] if a and callable(a[0]) else (lambda f: f))
    sys.modules['pytest'] = stub


def marked_cases(module: types.ModuleType, mark: str = 'cuda'
                 ) -> list[tuple[str, Callable[..., Any], dict[str, Any]]]:
    """``(test id, function, keyword arguments)`` of every test in ``module`` marked ``mark``,
    one per parameter set of its ``parametrize`` marks."""
    cases = []
    for name, func in vars(module).items():
        if not name.startswith('test_') or not callable(func):
            continue
        marks = getattr(func, 'pytestmark', [])
        if not any(m.name == mark for m in marks):
            continue
        axes = []
        for m in marks:
            if m.name != 'parametrize':
                continue
            names = [n.strip() for n in m.args[0].split(',')] if isinstance(m.args[0], str) \
                else list(m.args[0])
            values = [v if len(names) > 1 else (v,) for v in m.args[1]]
            axes.append([dict(zip(names, v)) for v in values])
        for combo in itertools.product(*axes) if axes else [()]:
            kwargs = {k: v for part in combo for k, v in part.items()}
            ident = '-'.join(str(v) for v in kwargs.values())
            cases.append((f'{module.__name__}::{name}' + (f'[{ident}]' if ident else ''),
                          func, kwargs))
    return cases


def _load(path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))
    spec.loader.exec_module(module)
    return module


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``cuda`` tests of the files given; 0 when all passed."""
    files = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    try:
        import pytest  # noqa: F401  (the real one is used where it exists)
    except ImportError:
        install_stub()
    passed = failed = 0
    t0 = time.perf_counter()
    for path in files:
        for ident, func, kwargs in marked_cases(_load(path)):
            try:
                func(**kwargs)
            except Exception:
                failed += 1
                print(f'FAILED {ident}\n{traceback.format_exc()}', flush=True)
            else:
                passed += 1
                print(f'PASSED {ident}', flush=True)
    print(f'{passed} passed, {failed} failed in {time.perf_counter() - t0:.2f}s '
          '(without pytest)')
    return 1 if failed or not passed else 0


if __name__ == '__main__':
    sys.exit(main())
