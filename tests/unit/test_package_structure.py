"""The package's layout rules (docs/contributing.md), checked on the source: no import circle, the pure-torch
layer never imports nnU-Net or the trainers, no module over 500 lines, no function defined twice."""
import ast
import pathlib
from collections import defaultdict

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[2] / "nnunet_semicl"
PURE_TORCH = ("nnunet_semicl.losses", "nnunet_semicl.sampling", "nnunet_semicl.modules")
MAX_LINES = 500


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules():
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: pathlib.Path, name: str):
    """Absolute names imported anywhere in the file (function-local imports included)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def _internal_graph():
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        graph[name] = {m for m in _imports(path, name) if m in modules and m != name}
    return graph


def _find_cycle(graph):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_accepts_a_tree():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_package_has_no_import_circle():
    graph = _internal_graph()
    # a package __init__ importing its own submodules is not a circle of code: only module -> module edges
    cycle = _find_cycle({k: {m for m in v if not k.startswith(m + ".")} for k, v in graph.items()})
    assert cycle is None, f"import circle: {' -> '.join(cycle)}"


@pytest.mark.parametrize("layer", PURE_TORCH)
def test_pure_torch_layer_imports_neither_nnunet_nor_the_trainers(layer):
    bad = []
    for name, path in _modules().items():
        if name == layer or name.startswith(layer + "."):
            for imported in _imports(path, name):
                top = imported.split(".")[0]
                internal = imported.startswith("nnunet_semicl.")
                if top in ("nnunetv2", "batchgenerators", "dynamic_network_architectures") or (
                        internal and not imported.startswith(PURE_TORCH) and
                        imported.split(".")[1] not in ("schedules", "augment")):
                    bad.append(f"{name} imports {imported}")
    assert not bad, bad


def test_no_module_is_over_the_line_limit():
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_no_module_level_function_is_defined_twice():
    where = defaultdict(list)
    for name, path in _modules().items():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                where[node.name].append(name)
    twice = {f: mods for f, mods in where.items() if len(mods) > 1 and f not in ALLOWED_SAME_NAME}
    assert not twice, twice


# one interface, several implementations (not copies): each sub-command module's entry points, each
# benchmark's option resolution, each converter's hooks for its dataset layout
ALLOWED_SAME_NAME = {"main", "add_arguments", "run", "resolve_options", "detect_layout", "_dataset_text"}
