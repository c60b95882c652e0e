"""Dependencies point one way: entry points -> commands -> stages -> utilities, with no cycles.

Read from the source with ast, so a new import that breaks the layering fails here."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "genrenet"

LAYERS = [  # top to bottom; a module may import its own layer (without cycles) or any layer below
    ("entry points", {"cli", "__main__", "__init__"}),
    ("commands", {"training", "crossval", "evaluation", "prediction", "export"}),
    (
        "stages",
        {
            "audio",
            "features",
            "handcrafted",
            "cache",
            "store",
            "datasets",
            "augment",
            "models",
            "musicnn",
            "probe",
            "classic",
            "scores",
            "catalog",
            "trained",
            "demo_data",
            "classifier",
            "recorded_split",
        },
    ),
    (
        "utilities",
        {
            "errors",
            "registry",
            "config",
            "fileio",
            "checkpoint",
            "device",
            "rundir",
            "runlock",
            "progress",
            "plots",
            "runlogs",
            "distributed",
            "stack",
        },
    ),
]
# Imports inside functions are for heavy optional libraries only (librosa through genrenet.handcrafted).
LAZY_ALLOWED = {("catalog", "handcrafted")}


def layer_of(module: str) -> int:
    return next(i for i, (_, names) in enumerate(LAYERS) if module in names)


def genrenet_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported genrenet module, whether the import sits inside a function) for one source file."""
    tree = ast.parse(path.read_text())
    found = []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef))
            if isinstance(child, ast.ImportFrom) and child.module and child.module.startswith("genrenet"):
                parts = child.module.split(".")
                # `from genrenet import __version__` imports the package itself, not a module
                names = (
                    [parts[1]]
                    if len(parts) > 1
                    else [
                        alias.name if (PACKAGE / f"{alias.name}.py").exists() else "__init__" for alias in child.names
                    ]
                )
                found.extend((name, inside) for name in names)
            elif isinstance(child, ast.Import):
                found.extend((a.name.split(".")[1], inside) for a in child.names if a.name.startswith("genrenet."))
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue  # annotations only
            visit(child, inside)

    visit(tree, False)
    return found


def import_graph() -> dict[str, list[tuple[str, bool]]]:
    return {path.stem: genrenet_imports(path) for path in sorted(PACKAGE.glob("*.py"))}


def test_every_module_has_a_layer():
    for module in import_graph():
        assert any(module in names for _, names in LAYERS), f"genrenet/{module}.py is in no layer"


def test_imports_point_down_or_sideways():
    for module, imports in import_graph().items():
        for target, _ in imports:
            assert layer_of(target) >= layer_of(module), (
                f"genrenet/{module}.py ({LAYERS[layer_of(module)][0]}) imports {target} "
                f"({LAYERS[layer_of(target)][0]}), a layer above it"
            )


def test_no_import_inside_a_function_dodges_a_cycle():
    for module, imports in import_graph().items():
        for target, lazy in imports:
            assert not lazy or (module, target) in LAZY_ALLOWED, f"genrenet/{module}.py imports {target} in a function"


def test_no_import_cycles():
    graph = {
        module: {target for target, _ in imports if target != module} for module, imports in import_graph().items()
    }
    visiting, done = set(), set()

    def walk(module, trail):
        if module in done:
            return
        assert module not in visiting, "import cycle: " + " -> ".join(trail + [module])
        visiting.add(module)
        for target in graph.get(module, ()):
            walk(target, trail + [module])
        visiting.discard(module)
        done.add(module)

    for module in graph:
        walk(module, [])


def test_evaluation_and_prediction_do_not_import_the_trainer():
    graph = import_graph()
    for module in ("evaluation", "prediction", "crossval"):
        assert "training" not in {t for t, _ in graph[module]} or module == "crossval"
    assert not {"crossval", "evaluation", "prediction"} & {t for t, _ in graph["training"]}
