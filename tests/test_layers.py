"""The package's shape, as import-linter's layers contract (pyproject.toml) cannot see it: no import cycle
anywhere in senet, inside one layer included, and no function-local import of a senet module except where the
CLI defers a command's modules (so that ``senet --help`` stays fast)."""

import ast
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp")

PACKAGE = Path(__file__).parents[1] / "src" / "senet"
# senet modules that exist to wrap an optional dependency: imported where it is
# needed, as the dependency would be
WRAP_OPTIONAL_DEPENDENCIES = {"senet.ops._triton_se"}  # Triton comes with CUDA builds of torch only


def _strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that import each other, directly or through others."""
    index, low, stack, on_stack, groups, counter = {}, {}, [], set(), [], [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return groups


def test_no_module_of_senet_imports_itself_through_others():
    graph = grimp.build_graph("senet")
    imports = {module: graph.find_modules_directly_imported_by(module) for module in graph.modules}
    cycles = [group for group in _strongly_connected(imports) if len(group) > 1]
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(group) for group in cycles)


def _local_senet_imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for function in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
        for node in ast.walk(function):
            names = (
                {f"{node.module}.{alias.name}" for alias in node.names}
                if isinstance(node, ast.ImportFrom)
                else ()
            )
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("senet"):
                if names <= WRAP_OPTIONAL_DEPENDENCIES:
                    continue
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} from {node.module}")
            elif isinstance(node, ast.Import) and any(a.name.startswith("senet") for a in node.names):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno} import senet")
    return found


def test_senet_modules_are_imported_at_the_top_except_the_commands_the_cli_defers():
    deferred_by_the_cli = PACKAGE / "cli"
    local = [
        line
        for path in sorted(PACKAGE.rglob("*.py"))
        if deferred_by_the_cli not in path.parents
        for line in _local_senet_imports(path)
    ]
    assert not local, f"{len(local)} function-local imports of senet modules:\n" + "\n".join(local)
