"""The DDS environment every process of this project that opens DDS runs with: one definition.

The Makefile, the launch file, the tests, the demo, bag replay and the benchmarks all take it from
here. What the user set is always kept; the rest is filled in:

* ``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``: discovery stays on this machine;
* ``ROS_DOMAIN_ID``: a domain of the process's own (:func:`default_domain_id`), so parallel runs
  on one machine do not hear each other;
* ``FASTDDS_DEFAULT_PROFILES_FILE``: the shipped large-image Fast DDS profile (without it a
  best-effort publisher loses most camera-sized images); on distributions with Fast DDS 2.x
  (Humble, Iron) also ``FASTRTPS_DEFAULT_PROFILES_FILE``, the only name those read.

The launch file applies only the profile (:func:`profile_environment`): a robot's nodes must
keep discovering each other across hosts.

``python -m flow2seg_ros.dds`` prints the variables as ``NAME=value`` words (for the Makefile),
with a domain id derived from its parent process (the make invocation).
"""
from __future__ import annotations

import os
from pathlib import Path
import sys
from typing import Mapping, MutableMapping, Optional, Sequence

__all__ = ['REPO_CONFIG', 'FASTDDS_PROFILE', 'DDS_VARIABLES', 'config_file', 'params_file',
           'shipped_fastdds_profile', 'default_domain_id', 'profile_environment',
           'dds_environment', 'apply_dds_environment', 'describe_dds_changes', 'main']

REPO_CONFIG = Path(__file__).resolve().parents[1] / 'config'
FASTDDS_PROFILE_NAME = 'fastdds_large_images.xml'
FASTDDS_PROFILE = REPO_CONFIG / FASTDDS_PROFILE_NAME
_FASTDDS2_DISTROS = ('foxy', 'galactic', 'humble', 'iron')
#: The variables :func:`dds_environment` fills in.
DDS_VARIABLES = ('ROS_AUTOMATIC_DISCOVERY_RANGE', 'ROS_DOMAIN_ID', 'FASTDDS_DEFAULT_PROFILES_FILE',
                 'FASTRTPS_DEFAULT_PROFILES_FILE')


def config_file(name: str) -> Path:
    """A shipped config file: the source tree's, else the installed share directory's."""
    if (REPO_CONFIG / name).is_file():
        return REPO_CONFIG / name
    candidates = [REPO_CONFIG]
    try:
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory('flow2seg_ros')) / 'config')
    except (ImportError, LookupError, OSError):  # no ament index (pip install off ROS)
        pass
    candidates.append(Path(sys.prefix) / 'share' / 'flow2seg_ros' / 'config')
    for folder in candidates[1:]:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f'config file {name} not found in '
                            + ', '.join(str(c) for c in candidates))


def params_file() -> Path:
    """The shipped node parameter file ``config/seg.yaml``."""
    return config_file('seg.yaml')


def shipped_fastdds_profile() -> Path:
    """The large-image Fast DDS profile shipped with the package (source tree or installed)."""
    return config_file(FASTDDS_PROFILE_NAME)


def dds_environment(domain_id: Optional[int] = None,
                    base: Optional[Mapping[str, str]] = None, *,
                    own_domain: bool = True) -> dict[str, str]:
    """The environment for a process that opens DDS, derived from ``base`` (default os.environ).

    What the user set is kept; the rest is filled in: discovery stays on this machine
    (``ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST``) unless a range is set; the domain id is
    ``domain_id``, else ``base``'s, else (with ``own_domain``) one derived from the pid; Fast
    DDS loads the shipped large-image profile unless ``base`` already names a profile file
    (without it a best-effort publisher loses most camera-sized images). The profile is named
    with ``FASTRTPS_DEFAULT_PROFILES_FILE`` as well only on distributions with Fast DDS 2.x.

    Args:
        domain_id: ROS_DOMAIN_ID to use (0..232); None keeps the inherited one.
        base: environment to start from.
        own_domain: without ``domain_id`` or an inherited id, pick one from the pid (False
            leaves ROS's default domain, e.g. to reach a node someone else started).

    Raises:
        ValueError: ``domain_id`` is outside 0..232.
    """
    env = dict(os.environ if base is None else base)
    if not env.get('ROS_AUTOMATIC_DISCOVERY_RANGE'):
        env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    if domain_id is not None:
        if not 0 <= int(domain_id) <= 232:
            raise ValueError(f'ROS_DOMAIN_ID must be in 0..232, got {domain_id}')
        env['ROS_DOMAIN_ID'] = str(int(domain_id))
    elif own_domain and not env.get('ROS_DOMAIN_ID'):
        env['ROS_DOMAIN_ID'] = str(default_domain_id())
    env.update(profile_environment(env))
    return env


def apply_dds_environment(domain_id: Optional[int] = None, *, own_domain: bool = True,
                          environ: Optional[MutableMapping[str, str]] = None
                          ) -> dict[str, str]:
    """Set :func:`dds_environment` in ``environ`` (before rclpy creates a participant).

    Args:
        domain_id: ROS_DOMAIN_ID to use; None keeps the inherited one.
        own_domain: as for :func:`dds_environment`.
        environ: the environment to change (default ``os.environ``).

    Returns:
        The variables that were added or changed (see :func:`describe_dds_changes`).
    """
    target = os.environ if environ is None else environ
    env = dds_environment(domain_id, target, own_domain=own_domain)
    changed = {k: env[k] for k in DDS_VARIABLES if k in env and target.get(k) != env[k]}
    target.update(changed)
    return changed


def describe_dds_changes(changed: Mapping[str, str]) -> list[str]:
    """One line per variable :func:`apply_dds_environment` set, saying why, for a log.

    Args:
        changed: :func:`apply_dds_environment`'s result.
    """
    notes = []
    if 'ROS_AUTOMATIC_DISCOVERY_RANGE' in changed:
        notes.append(f"ROS_AUTOMATIC_DISCOVERY_RANGE={changed['ROS_AUTOMATIC_DISCOVERY_RANGE']} "
                     '(DDS discovery on this machine only; set it to reach other hosts)')
    if 'ROS_DOMAIN_ID' in changed:
        notes.append(f"ROS_DOMAIN_ID={changed['ROS_DOMAIN_ID']} (set it to use another domain)")
    if 'FASTDDS_DEFAULT_PROFILES_FILE' in changed:
        notes.append(f"using the Fast DDS profile {changed['FASTDDS_DEFAULT_PROFILES_FILE']} "
                     'for large images (set FASTDDS_DEFAULT_PROFILES_FILE to use another)')
    return notes


def default_domain_id(pid: Optional[int] = None) -> int:
    """The ROS_DOMAIN_ID a process picks for itself: ``1 + pid % 200`` (never 0, everyone's
    default; inside Fast DDS's 0..232).

    Args:
        pid: the process id to derive it from (default this process's).
    """
    return 1 + (os.getpid() if pid is None else int(pid)) % 200


def profile_environment(base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The Fast DDS profile variables to add to ``base`` (empty when it already names one).

    Args:
        base: the environment (default os.environ).
    """
    env = os.environ if base is None else base
    if env.get('FASTDDS_DEFAULT_PROFILES_FILE') or env.get('FASTRTPS_DEFAULT_PROFILES_FILE'):
        return {}
    try:
        profile = str(shipped_fastdds_profile())
    except FileNotFoundError:
        return {}
    added = {'FASTDDS_DEFAULT_PROFILES_FILE': profile}
    if env.get('ROS_DISTRO') in _FASTDDS2_DISTROS:
        # Fast DDS 2.x reads only the older name (3.x warns that it is deprecated)
        added['FASTRTPS_DEFAULT_PROFILES_FILE'] = profile
    return added


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Print the DDS variables to set as ``NAME=value`` words (what the Makefile exports).

    The domain id is derived from the parent process (the make invocation) unless set.
    """
    del argv
    env = dds_environment(None if os.environ.get('ROS_DOMAIN_ID')
                          else default_domain_id(os.getppid()))
    print(' '.join(f'{k}={env[k]}' for k in DDS_VARIABLES if k in env))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
