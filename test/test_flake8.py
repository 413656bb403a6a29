"""flake8 over the package, its launch file, tests and benchmarks, as ament_flake8 runs it.

The settings are setup.cfg's ``[flake8]`` section (99 characters, google import order,
flake8-quotes' single quotes); the test fails listing every report.
"""
from pathlib import Path
import subprocess
import sys

REPO = Path(__file__).resolve().parents[1]
CHECKED = ('flow2seg_ros', 'launch', 'test', 'benchmarks', 'setup.py')


def _flake8(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, '-m', 'flake8', *args], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_flake8_plugins_are_installed() -> None:
    version = _flake8('--version')
    assert version.returncode == 0, ('flake8 is missing: pip install -r requirements.txt\n'
                                     + version.stderr)
    listed = version.stdout.replace('-', '_')
    for plugin in ('flake8_import_order', 'flake8_quotes'):  # else their codes go unchecked
        assert plugin in listed, f'flake8 plugin {plugin} missing: {version.stdout}'


def test_flake8_reports_nothing() -> None:
    done = _flake8(*CHECKED)
    assert done.returncode == 0, f'flake8 reports:\n{done.stdout}{done.stderr}'
