"""The package's shape: no import cycle between its modules, no oversized module, and each shared
concept defined in exactly one place.

Imports are read with ``ast`` from every module, function-local ones included, so a cycle
hidden inside a function is found too.
"""
import ast
from pathlib import Path
import re
from typing import Dict, List, Optional, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'flow2seg_ros'
MAX_LINES = 600


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix('').parts
    return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


def _modules() -> Dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob('*.py'))}


def _resolve(name: str, modules: Dict[str, Path]) -> Optional[str]:
    """The package module an import names: itself, else its closest enclosing module."""
    while name:
        if name in modules:
            return name
        name = name.rpartition('.')[0]
    return None


def _imports(module: str, path: Path, modules: Dict[str, Path]) -> Set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == '__init__.py' else module.rpartition('.')[0]
    found: Set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ''
            if node.level:
                anchor = package.split('.')
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = '.'.join(anchor + ([base] if base else []))
            # `from pkg import sub` imports the module pkg.sub when there is one, else pkg
            subs = [f'{base}.{alias.name}' for alias in node.names]
            names = [n for n in subs if n in modules] or [base]
        else:
            continue
        for name in names:
            if name.split('.')[0] != 'flow2seg_ros':
                continue
            target = _resolve(name, modules)
            if target and target != module:
                found.add(target)
    return found


def _graph() -> Dict[str, Set[str]]:
    modules = _modules()
    return {m: _imports(m, p, modules) for m, p in modules.items()}


def _cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One import cycle as a list of modules, or None."""
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            # a package's own __init__ importing its submodules is how packages work, and a
            # submodule importing a sibling through the package is resolved by Python in order
            if node.startswith(nxt + '.') or nxt.startswith(node + '.'):
                continue
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_the_import_walker_sees_function_local_imports(tmp_path):
    # a cycle hidden in a function body must be found: build one in a scratch package
    pkg = tmp_path / 'flow2seg_ros'
    pkg.mkdir()
    (pkg / '__init__.py').write_text('')
    (pkg / 'a.py').write_text('def f():\n    from flow2seg_ros import b\n')
    (pkg / 'b.py').write_text('from flow2seg_ros.a import f\n')
    modules = {'.'.join(p.relative_to(tmp_path).with_suffix('').parts).replace('.__init__', ''): p
               for p in pkg.rglob('*.py')}
    graph = {m: _imports(m, p, modules) for m, p in modules.items()}
    assert graph['flow2seg_ros.a'] == {'flow2seg_ros.b'}
    assert _cycle(graph) in (['flow2seg_ros.a', 'flow2seg_ros.b', 'flow2seg_ros.a'],
                             ['flow2seg_ros.b', 'flow2seg_ros.a', 'flow2seg_ros.b'])


def test_no_import_cycle_between_the_packages_modules():
    cycle = _cycle(_graph())
    assert cycle is None, 'import cycle: ' + ' -> '.join(cycle)


def test_core_does_not_import_tools():
    # the core (model, flow, pipeline, metrics, encodings, ...) never imports a command module
    tools = {'flow2seg_ros.' + t for t in ('train', 'evaluate', 'bag_eval', 'make_bag', 'bench',
                                           'demo', 'node')}
    graph = _graph()
    for tool in tools & set(graph):
        importers = sorted(m for m, deps in graph.items() if tool in deps
                           # the managed node is the same adapter under the ROS 2 lifecycle
                           and not (tool.endswith('.node') and m.endswith('_node')))
        assert not importers, f'{tool} is imported by {importers}'


@pytest.mark.parametrize('path', sorted(PACKAGE.rglob('*.py')), ids=lambda p: p.name)
def test_no_module_is_oversized(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f'{path.relative_to(PACKAGE.parent)} has {lines} lines'


# Each shared concept, and the one module that defines it.
ONE_DEFINITION = {
    r'^HEADS\s*=': 'flow2seg_ros/models/flow2seg.py',
    r'^def resolve_device\(': 'flow2seg_ros/devices.py',
    r'^FLOW_METHODS\s*=': 'flow2seg_ros/flow/__init__.py',
    r'^def scale_flow\(': 'flow2seg_ros/flow/base.py',
    r'^def percentile\(': 'flow2seg_ros/stats.py',
    r'^def image_msg_from_array\(': 'flow2seg_ros/encodings.py',
    r'^def dds_environment\(': 'flow2seg_ros/dds.py',
    r'^def random_model\(': 'flow2seg_ros/weights.py',
    r'^def parse_size\(': 'flow2seg_ros/cli.py',
}


@pytest.mark.parametrize('pattern, home', sorted(ONE_DEFINITION.items()))
def test_each_shared_concept_is_defined_once(pattern, home):
    repo = PACKAGE.parent
    places = [str(p.relative_to(repo)) for p in sorted(repo.glob('**/*.py'))
              if '.venv' not in p.parts and re.search(pattern, p.read_text(), re.MULTILINE)]
    assert places == [home], f'{pattern}: defined in {places}, expected only {home}'
