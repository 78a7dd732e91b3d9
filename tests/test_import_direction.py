"""Imports run one way: no circle between our modules, no import of our own modules hidden inside a
function (but the few on the allow-list), and each room of engine/ imports only the rooms below it.

The graph is read from the source (AST) of models/, datasets/, engine/ and tools/, so it sees imports that a
run of the code would not reach."""

from __future__ import annotations

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("models", "datasets", "engine", "tools")

# In-function imports of our own modules that are allowed, each with its reason: an optional dependency or a
# heavy import on a cold path. At most 5. (module, imported module)
ALLOWED_INNER: dict[tuple[str, str], str] = {}

# The layers, lowest first: a module may import its own room and the layers below its own, never above.
LAYERS = [
    ("models",),
    ("datasets",),
    ("engine.checkpoint", "engine.distributed"),
    ("engine.evaluation",),
    ("engine.config",),
    ("engine.tasks",),
    ("engine.train", "engine.export"),       # side by side: neither imports the other
    ("engine.inference",),
    ("engine.video",),
    ("engine.api",),
    ("tools",),
]


def _modules() -> dict[str, str]:
    mods = {}
    for pkg in PACKAGES:
        for dirpath, _, files in os.walk(os.path.join(REPO, pkg)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, f), REPO)[:-3].replace(os.sep, ".")
                    mods[rel[: -len(".__init__")] if rel.endswith(".__init__") else rel] = os.path.join(dirpath, f)
    return mods


MODULES = _modules()


def _resolve(name: str) -> str | None:
    parts = name.split(".")
    for k in range(len(parts), 0, -1):
        if ".".join(parts[:k]) in MODULES:
            return ".".join(parts[:k])
    return None


def _imports() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """``(edges {module: imported modules}, inner [(module, line, imported)])`` of our own modules."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    inner = []
    for mod, path in MODULES.items():
        tree = ast.parse(open(path, encoding="utf-8").read(), path)
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        in_function = {id(n) for f in functions for n in ast.walk(f)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            found = {_resolve(t) for t in targets} - {None, mod}
            edges[mod] |= found
            if id(node) in in_function:
                inner += [(mod, node.lineno, f) for f in sorted(found)]
    return edges, inner


EDGES, INNER = _imports()


def _layer(mod: str) -> tuple[int, str]:
    """(layer index, room) of a module: the longest room prefix of LAYERS that it falls in."""
    if mod == "engine":         # the package's own __init__: a docstring, importing nothing
        return 2, "engine"
    best = None
    for i, rooms in enumerate(LAYERS):
        for room in rooms:
            if (mod == room or mod.startswith(room + ".")) and (best is None or len(room) > len(best[1])):
                best = (i, room)
    if best is None:
        raise AssertionError(f"{mod} is in no layer of tests/test_import_direction.py: add its room to LAYERS")
    return best


def test_the_graph_sees_the_packages():
    assert {"engine.tasks.registry", "engine.train.loop", "tools.train", "models.bbox"} <= set(MODULES)
    assert "engine.tasks.registry" in EDGES["engine.train.run"]


def test_no_import_circle():
    index, low, on, stack, circles, counter = {}, {}, set(), [], [], [0]

    def visit(v):               # Tarjan's strongly connected components
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in EDGES.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                circles.append(sorted(comp))

    for v in MODULES:
        if v not in index:
            visit(v)
    assert not circles, f"import circles: {circles}"


def test_no_project_import_inside_a_function_off_the_allow_list():
    assert len(ALLOWED_INNER) <= 5
    off_list = [f"{m}:{line} imports {t}" for m, line, t in INNER if (m, t) not in ALLOWED_INNER]
    assert not off_list, ("imports of our own modules inside functions hide a coupling; move them to the top or "
                          "add them to ALLOWED_INNER with the reason: " + "; ".join(off_list))


@pytest.mark.parametrize("mod", sorted(MODULES))
def test_each_room_imports_only_the_rooms_below_it(mod):
    layer, room = _layer(mod)
    upward = []
    for target in EDGES[mod]:
        t_layer, t_room = _layer(target)
        if t_room == room:
            continue
        if t_layer >= layer:
            upward.append(f"{target} (room {t_room})")
    assert not upward, f"{mod} (room {room}) imports {upward}: imports run from tools down to models, never up"


def test_engine_top_level_is_small_and_has_no_catch_all_room():
    top = [f for f in os.listdir(os.path.join(REPO, "engine")) if f.endswith(".py")]
    assert len(top) <= 6 and "api.py" in top, top
    rooms = [d for d in os.listdir(os.path.join(REPO, "engine")) if os.path.isfile(os.path.join(REPO, "engine", d,
                                                                                               "__init__.py"))]
    assert not set(rooms) & {"core", "misc", "common", "utils", "helpers"}, rooms
    for room in rooms:
        doc = ast.get_docstring(ast.parse(open(os.path.join(REPO, "engine", room, "__init__.py")).read()))
        assert doc and "import" in doc.lower(), f"engine/{room}/__init__.py: say what it holds and may import"


def test_no_engine_function_takes_a_parser_or_parsed_arguments():
    offenders = []
    for mod, path in MODULES.items():
        if not mod.startswith("engine"):
            continue
        for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for a in node.args.args + node.args.kwonlyargs:
                    note = ast.unparse(a.annotation) if a.annotation is not None else ""
                    if a.arg in ("args", "parser", "argv") or "argparse" in note or "Namespace" in note:
                        offenders.append(f"{mod}.{node.name}({a.arg})")
    assert not offenders, f"command-line handling belongs in tools/: {offenders}"
