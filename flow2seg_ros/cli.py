"""What the command-line tools share: size arguments, and errors as one line with exit status 2.

Every ``flow2seg-*`` command maps the project's domain errors (``ValueError`` subclasses such as
``WeightsError``, ``DatasetError``, ``ImageFormatError``) and file errors to one line on stderr,
``<prog>: error: <message>``, and exit status 2, never a traceback; Ctrl-C exits with 130.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Optional

__all__ = ['parse_size', 'size_arg', 'cli_main']


def parse_size(text: str, *, minimum: int = 1) -> tuple[int, int]:
    """``"512x256"`` -> (512, 256) as (width, height).

    Args:
        text: ``WxH``.
        minimum: the smallest width and height accepted.

    Raises:
        ValueError: not ``WxH`` with integers >= ``minimum``.
    """
    try:
        w, h = (int(v) for v in str(text).lower().split('x'))
    except ValueError:
        raise ValueError(f'size must look like WxH (e.g. 512x256), got {text!r}') from None
    if w < minimum or h < minimum:
        raise ValueError(f'size must be at least {minimum}x{minimum}, got {text!r}')
    return w, h


def size_arg(minimum: int = 1) -> Callable[[str], tuple[int, int]]:
    """An argparse ``type=`` for ``WxH`` sizes whose message becomes the command line's error.

    Args:
        minimum: the smallest width and height accepted.
    """
    def parse(text: str) -> tuple[int, int]:
        try:
            return parse_size(text, minimum=minimum)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    parse.__name__ = 'size'
    return parse


def cli_main(prog: str, run: Callable[[], Optional[int]]) -> int:
    """Run a command's body; domain and file errors become one line and exit status 2.

    Args:
        prog: the command's name, for the message.
        run: the body; returns the exit status (None = 0).

    Returns:
        The exit status.
    """
    try:
        status = run()
    except (ValueError, OSError) as exc:
        print(f'{prog}: error: {exc}', file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f'{prog}: interrupted', file=sys.stderr)
        return 130
    return 0 if status is None else int(status)
