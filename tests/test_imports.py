"""The serving path stays light: settings, weights and the engine import without torch."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_engine_and_config_import_without_torch():
    code = ("import sys; import app.config, app.model.engine, app.model.weights, app.images.imaging, app.cli; "
            "heavy = sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules); "
            "print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_engine_status_works_without_torch():
    code = ("import sys; from app.config import Settings; from app.model.engine import Engine; "
            "print(Engine(Settings.from_env({}, volume='v')).status().state, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["unloaded", "False"]


def test_a_metrics_scrape_imports_no_torch():
    code = ("import sys; from app.config import Settings; from app.model.engine import Engine; "
            "from app.tryons.metrics import Metrics; "
            "queue = type('Queue', (), {'queue_state': lambda self: {'waiting': 0, 'running': False, 'max': 1}})(); "
            "body, _ = Metrics(queue, Engine(Settings.from_env({}, volume='v'))).exposition(None); "
            "print(b'tryon_engine_state{state=\"unloaded\"} 1.0' in body, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["True", "False"]


# The package's layers, top to bottom of app/__init__.py's list: a module imports only from its own layer
# or those before it. The base modules and the commands are single modules; the rest are packages.
LAYERS = [
    ("app", "app.config", "app.errors", "app.validation", "app.files"),
    ("app.images",),
    ("app.model",),
    ("app.tryons",),
    ("app.identity",),
    ("app.studio",),
    ("app.web",),
    ("app.cli", "app.doctor", "app.__main__", "app.pipeline", "app.engine"),
]


def layer_of(module: str) -> int:
    found = [(len(name), number) for number, names in enumerate(LAYERS) for name in names
             if module == name or (name != "app" and module.startswith(name + "."))]
    assert found, f"{module} is in no layer: add it to LAYERS and to app/__init__.py's list"
    return max(found)[1]


def app_imports() -> dict[str, set[str]]:
    """Every module of app/ and the app modules it imports, at module level or inside functions."""
    import ast

    graph = {}
    for path in sorted((ROOT / "app").rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                targets.add(f"relative import in {module}")
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "app":
                targets |= ({node.module} if node.module != "app" else
                            {f"app.{alias.name}" for alias in node.names if alias.name != "__version__"} or {"app"})
            elif isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names if alias.name.split(".")[0] == "app"}
        graph[module] = targets
    return graph


def test_imports_only_go_down_the_layers():
    graph = app_imports()
    assert {"app.images.masking", "app.model.pipeline", "app.studio.page", "app.web.server"} <= set(graph)
    upward = [f"{module} imports {target}" for module, targets in graph.items() for target in sorted(targets)
              if target.startswith("relative") or layer_of(target) > layer_of(module)]
    assert upward == []
    # The seams the move set right: the studio reads the caller and pages results below the web layer, the
    # pipeline checks arguments below every door, the weights write files without the results store.
    assert not any(target.startswith("app.web") for name, targets in graph.items() if name.startswith("app.studio")
                   for target in targets)
    assert "app.tryons.service" not in graph["app.model.pipeline"] and "app.validation" in graph["app.model.pipeline"]
    assert "app.files" in graph["app.model.weights"] and "app.tryons.outputs" not in graph["app.model.weights"]


def test_no_module_imports_itself_round_a_cycle():
    graph = app_imports()
    seen, path = set(), []

    def visit(module: str) -> None:
        assert module not in path, " -> ".join(path[path.index(module):] + [module])
        if module in seen:
            return
        path.append(module)
        for target in sorted(graph.get(module, ())):
            visit(target)
        path.pop()
        seen.add(module)

    for module in graph:
        visit(module)


def test_each_package_says_what_it_owns_and_may_import():
    import ast

    for init in sorted((ROOT / "app").glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert "May import" in doc and len(doc) > 200, f"{init.parent.name}: say what it owns and may import"
        assert f"app.{init.parent.name}" in (ROOT / "app" / "__init__.py").read_text()


def test_the_documented_names_still_import():
    import app.engine
    import app.model.engine
    import app.model.pipeline
    import app.pipeline

    assert app.pipeline.CatVTONPipeline is app.model.pipeline.CatVTONPipeline
    assert app.engine.Engine is app.model.engine.Engine
