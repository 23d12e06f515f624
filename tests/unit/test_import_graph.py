"""The project's modules import each other without cycles, and each imports only from its own layer or the
layers below it (imports under TYPE_CHECKING count for cycles too: a reader must hold those in mind as well;
for layers they do not, as they cost nothing at run time), so each package can be read from the bottom up.

The layers, lowest first, are declared once in LAYERS. Besides the folders, the top-level modules sit here:
model_store (builtin models, stdlib only), held, spend and fair_share (a request's held bytes, spent tokens
and claim to its place in a queue, context variables) and scopes (what a key may use) beside engine_adapters;
lifecycle (drain), keys, limit_store, redis_store and store (what AppState holds) beside state; engines
(settings -> adapters), server and uvicorn_coupling (uvicorn) beside app; gateway/__main__ beside cli.
engine_adapters.errors is the lower half of the one error tree, so it sits with gateway.errors at the bottom."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("gateway", "engine_adapters")

# Lowest first; a module belongs to the layer of the longest prefix that names it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("gateway.protocol", "gateway.settings", "gateway.errors", "engine_adapters.errors"),
    ("engine_adapters", "gateway.model_store", "gateway.held", "gateway.fair_share", "gateway.spend", "gateway.scopes"),
    ("gateway.observability",),
    ("gateway.routing",),
    (
        "gateway.state",
        "gateway.lifecycle",
        "gateway.keys",
        "gateway.limit_store",
        "gateway.redis_store",
        "gateway.store",
    ),
    ("gateway.services",),
    ("gateway.relay", "gateway.middleware"),
    ("gateway.api",),
    ("gateway.app", "gateway.engines", "gateway.server", "gateway.uvicorn_coupling"),
    ("gateway.cli", "gateway.__main__", "gateway"),
)


def module_files() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def type_checking_nodes(tree: ast.AST) -> set[ast.AST]:
    """The import statements under `if TYPE_CHECKING:`."""
    found: set[ast.AST] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                found.update(ast.walk(child))
    return found


def imports_of(name: str, path: Path, known: dict[str, Path], run_time_only: bool = False) -> set[str]:
    """The project modules `name` imports (a package's own __init__ above it does not count); with
    `run_time_only`, not those imported under TYPE_CHECKING."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    tree = ast.parse(path.read_text())
    skipped = type_checking_nodes(tree) if run_time_only else set()
    for node in ast.walk(tree):
        if node in skipped:
            continue
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in names:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and not name.startswith(target + "."):
                targets.add(target)
    return targets


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph`, as the path around it, or None (a depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph[node]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (cycle := visit(target)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def layer_of(name: str) -> int:
    """The index in LAYERS of the layer that holds module `name`."""
    best: tuple[int, int] | None = None  # (length of the matching prefix, layer)
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > best[0]):
                best = (len(prefix), index)
    assert best is not None, f"{name} is in no layer: add it to LAYERS"
    return best[1]


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """Each import from a lower layer to a higher one, as 'importer -> imported'."""
    return sorted(
        f"{name} -> {target}"
        for name, targets in graph.items()
        for target in targets
        if layer_of(target) > layer_of(name)
    )


def test_the_layer_check_finds_an_upward_import() -> None:
    assert upward_imports({"gateway.state": {"gateway.api.chat"}}) == ["gateway.state -> gateway.api.chat"]
    assert upward_imports({"gateway.api.chat": {"gateway.state", "gateway.api.common"}}) == []
    assert layer_of("engine_adapters.errors") < layer_of("engine_adapters.base") < layer_of("gateway.routing.kv")


def test_no_import_climbs_a_layer() -> None:
    known = module_files()
    graph = {name: imports_of(name, path, known, run_time_only=True) for name, path in known.items()}
    assert "gateway.routing.reload" in graph["gateway.app"]  # the graph is read, imports in functions too
    assert upward_imports(graph) == []


def test_the_gateway_takes_its_errors_from_gateway_errors() -> None:
    """gateway/errors.py names the whole error tree, so that is where the gateway imports it from."""
    known = module_files()
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    takers = sorted(name for name, targets in graph.items() if "engine_adapters.errors" in targets)
    assert takers == [*(name for name in takers if name.startswith("engine_adapters")), "gateway.errors"]


def test_the_search_finds_a_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles() -> None:
    known = module_files()
    graph = {name: imports_of(name, path, known) for name, path in known.items()}
    assert "gateway.state" in graph and "gateway.errors" in graph["gateway.state"]  # the graph is read
    assert find_cycle(graph) is None
