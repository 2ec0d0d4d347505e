"""Import layering: no module of metax imports itself back through others, and the
config trio (registry, builtins, schema) imports in one direction only."""

import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _modules() -> dict:
    modules = {}
    for path in (ROOT / "metax").rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(tree: ast.AST, modules: dict, lazy: bool) -> set:
    """metax modules a module imports: at module level, or anywhere with `lazy` (imports
    inside functions run later, but still run); never those under `if TYPE_CHECKING:`,
    which only type checkers run."""
    body = [top for top in tree.body if not (isinstance(top, ast.If) and "TYPE_CHECKING" in ast.unparse(top.test))]
    if lazy:
        nodes = (n for top in body for n in ast.walk(top))
    else:
        nodes = (n for top in body for n in (ast.walk(top) if isinstance(top, (ast.If, ast.Try)) else [top]))
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            # `from metax.learner import contract` imports the submodule, not the package.
            found |= {f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module for a in node.names}
    return found & set(modules)


def import_graph(lazy: bool = False, only: tuple = ()) -> dict:
    modules = _modules()
    chosen = {m: p for m, p in modules.items() if not only or m in only}
    return {m: sorted(_imports(ast.parse(p.read_text()), modules, lazy) - {m}) for m, p in chosen.items()}


def cycles(graph: dict) -> list:
    """Every back edge of a depth-first search, as the cycle it closes."""
    state, stack, found = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for child in graph.get(node, ()):
            if state.get(child) == "open":
                found.append(stack[stack.index(child):] + [child])
            elif child not in state:
                visit(child)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_cycles_finds_a_planted_circle():
    assert cycles({"a": ["b"], "b": ["c"], "c": ["a"], "d": ["a"]}) == [["a", "b", "c", "a"]]
    assert cycles({"a": ["b"], "b": [], "c": ["a", "b"]}) == []


def test_no_module_level_import_cycle_in_metax():
    found = cycles(import_graph())
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_no_cycle_even_through_imports_inside_functions():
    found = cycles(import_graph(lazy=True))
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_the_library_never_imports_the_runner():
    """Only the runner itself (metax.experiment) and the package root may import it."""
    graph = import_graph(lazy=True)
    users = {m for m, deps in graph.items() if any(d.startswith("metax.experiment") for d in deps)}
    assert {m for m in users if not m.startswith("metax.experiment")} <= {"metax", "metax.__main__"}, users


def test_registry_builtins_schema_import_in_one_direction():
    trio = ("metax.experiment.registry", "metax.experiment.builtins", "metax.experiment.schema")
    graph = import_graph(lazy=True, only=trio)
    within = {m: [d for d in deps if d in trio] for m, deps in graph.items()}
    assert within["metax.experiment.registry"] == [], within  # it knows no registrations or configs
    assert not cycles(within), within


def test_import_metax_in_a_fresh_interpreter():
    done = subprocess.run([sys.executable, "-c", "import metax; print(len(metax.__all__))"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert int(done.stdout.strip()) > 5
