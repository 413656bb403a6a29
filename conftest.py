"""Repository-wide pytest options: slow tests run only with --run-slow."""
import pytest


def pytest_addoption(parser):
    parser.addoption('--run-slow', action='store_true', default=False,
                     help='also run tests marked slow')


def pytest_collection_modifyitems(config, items):
    if config.getoption('--run-slow'):
        return
    skip_slow = pytest.mark.skip(reason='slow: run with --run-slow (make test-all)')
    for item in items:
        if 'slow' in item.keywords:
            item.add_marker(skip_slow)
