"""The layout stays true: import rules read from the source with `ast` (docs/architecture.md).

1. models/ imports only the standard library, torch, torchvision, numpy, safetensors, h5py and models.*
   (deepface only inside a function of a loader); pipeline/core imports only those, yaml, models and core.
2. ray and mlflow are imported at module level only in pipeline/infra and a stage's Ray glue module
   (pipeline/stages/<stage>/ray_*.py).
3. A stage imports core, presets, infra, its own modules and another stage's public package only
   (pipeline.stages.<other>, never its submodules); lower layers never import higher ones.
5. No import cycles among the project's modules (module- or function-level), and no module-level
   import after the module's first definition (no bottom-of-file imports).
Plus: one implementation each of Ray connection, atomic rename and file sha256.
"""

from __future__ import annotations

import ast
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

STDLIB = set(sys.stdlib_module_names) | {"__future__"}
MODELS_THIRD_PARTY = {"torch", "torchvision", "numpy", "safetensors", "h5py"}
CORE_THIRD_PARTY = MODELS_THIRD_PARTY | {"yaml"}
RAY_MLFLOW = {"ray", "mlflow"}
LAYERS = {"core": 0, "presets": 1, "infra": 1, "stages": 2, "cli": 3}


@dataclass(frozen=True)
class Import:
    module: str         # the importing module, e.g. pipeline.stages.train.loop
    target: str         # what it imports, absolute, e.g. pipeline.core.config or torch.nn
    line: int
    module_level: bool  # not inside a function or class body


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def source_files(root: Path, packages=("models", "pipeline", "tune_spaces")) -> list[Path]:
    return sorted(p for pkg in packages for p in (root / pkg).rglob("*.py"))


def imports_of(path: Path, root: Path, known: set[str]) -> list[Import]:
    """Every import in the file, resolved to absolute module names: `from a import b` is a.b when that
    is one of the `known` modules (a submodule), else a."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    out: list[Import] = []

    def visit(node: ast.AST, module_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = module_level and not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef,
                                                            ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend(Import(name, a.name, child.lineno, module_level) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - child.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                for a in child.names:
                    target = f"{base}.{a.name}" if f"{base}.{a.name}" in known else base
                    out.append(Import(name, target, child.lineno, module_level))
            visit(child, inner)

    visit(tree, True)
    return out


def project_modules(root: Path) -> set[str]:
    return {module_name(p, root) for p in source_files(root)}


def third_party(target: str) -> str:
    return target.split(".")[0]


def check_rules(root: Path) -> list[str]:
    """Every violation of rules 1, 2, 3 and 5 under `root`, as readable lines ([] = the layout holds)."""
    problems: list[str] = []
    known = project_modules(root)
    graph: dict[str, set[str]] = {m: set() for m in known}
    for path in source_files(root):
        mod = module_name(path, root)
        is_glue = mod.startswith("pipeline.infra") or (mod.startswith("pipeline.stages.")
                                                        and mod.rsplit(".", 1)[-1].startswith("ray_"))
        for imp in imports_of(path, root, known):
            top = third_party(imp.target)
            where = f"{path.relative_to(root)}:{imp.line} imports {imp.target}"
            # Rule 1
            if mod.startswith("models"):
                allowed = top in STDLIB | MODELS_THIRD_PARTY or top == "models"
                if top == "deepface" and mod.startswith("models.load") and not imp.module_level:
                    allowed = True
                if not allowed:
                    problems.append(f"rule 1 (models imports stdlib/torch/numpy/safetensors/h5py only): {where}")
            if mod.startswith("pipeline.core"):
                if not (top in STDLIB | CORE_THIRD_PARTY or top == "models" or imp.target.startswith("pipeline.core")
                        or imp.target == "pipeline"):
                    problems.append(f"rule 1 (core imports stdlib/torch/numpy/yaml/models/core only): {where}")
            # Rule 2
            if top in RAY_MLFLOW and imp.module_level and not is_glue:
                problems.append(f"rule 2 (ray/mlflow at module level only in infra and stages/*/ray_*.py): {where}")
            # Rule 3 and layering
            if imp.target.startswith("pipeline.") and mod.startswith("pipeline."):
                problems += layer_problems(mod, imp, where)
            # The graph for rule 5 (imports of project modules only)
            if imp.target in known and imp.target != mod:
                graph[mod].add(imp.target)
        problems += late_imports(path, root)
    problems += [f"rule 5 (no import cycles): {' -> '.join(c)}" for c in cycles(graph)]
    return problems


def layer_problems(mod: str, imp: Import, where: str) -> list[str]:
    src, dst = mod.split("."), imp.target.split(".")
    if len(src) < 2 or len(dst) < 2 or src[1] not in LAYERS or dst[1] not in LAYERS:
        return []
    if LAYERS[dst[1]] > LAYERS[src[1]]:
        return [f"rule 3 (a lower layer never imports a higher one: {src[1]} -> {dst[1]}): {where}"]
    if src[1] == "stages" and dst[1] == "stages" and len(dst) >= 3:
        own = src[2] if len(src) >= 3 else None
        if dst[2] != own and len(dst) > 3:
            return [f"rule 3 (a stage imports another stage's public package only): {where}"]
    return []


def late_imports(path: Path, root: Path) -> list[str]:
    """Module-level imports after the first function/class definition (bottom-of-file imports)."""
    tree = ast.parse(path.read_text(), str(path))
    seen_definition = False
    out = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            seen_definition = True
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and seen_definition:
            out.append(f"rule 5 (no bottom-of-file imports): {path.relative_to(root)}:{node.lineno}")
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import cycles of a module graph (one representative path per strongly connected component).

    A package's __init__ importing its own submodules is not a cycle by itself: importing
    `a.b` runs `a/__init__` first, but an edge is only an explicit import statement."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def strongconnect(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph.get(v, ()):
                found.append(sorted(component) + [sorted(component)[0]])

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def test_the_layout_follows_the_import_rules():
    problems = check_rules(REPO)
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def clean_copy(tmp_path_factory) -> Path:
    """The packages' sources copied once, and checked clean once: a planted violation is then the only
    thing that can make a copy of it fail."""
    root = tmp_path_factory.mktemp("clean-tree")
    for pkg in ("models", "pipeline", "tune_spaces"):
        for src in (REPO / pkg).rglob("*.py"):
            dst = root / src.relative_to(REPO)
            dst.parent.mkdir(parents=True, exist_ok=True)
            dst.write_text(src.read_text())
    assert check_rules(root) == []
    return root


@pytest.mark.parametrize("module, code, rule", [
    ("models/bad.py", "import ray\n", "rule 1"),
    ("models/load/bad.py", "import deepface\n", "rule 1"),
    ("pipeline/core/bad.py", "from pipeline.presets import PRESETS\n", "rule 1"),
    ("pipeline/stages/train/bad.py", "import mlflow\n", "rule 2"),
    ("pipeline/stages/tune/bad.py", "from pipeline.stages.train.loop import train_loop\n", "rule 3"),
    ("pipeline/presets/bad.py", "from pipeline.stages.train import TrainConfig\n", "rule 3"),
    ("pipeline/core/bad.py", "import os\ndef f():\n    pass\nimport json\n", "rule 5"),
    ("pipeline/core/bad.py", "from pipeline.core import bad2\n", "rule 5"),
])
def test_each_rule_catches_its_violation(clean_copy, tmp_path, module, code, rule):
    """A copy of the tree with one planted violation fails with that rule (the check can fail)."""
    tree = tmp_path / "tree"
    shutil.copytree(clean_copy, tree)
    (tree / module).write_text(code)
    if module == "pipeline/core/bad.py" and "bad2" in code:
        (tree / "pipeline/core/bad2.py").write_text("from pipeline.core import bad\n")
    problems = check_rules(tree)
    assert any(p.startswith(rule) for p in problems), problems


def calls_and_definitions(path: Path) -> tuple[set[str], set[str]]:
    """Dotted names of everything called in a file (`ray.init`, `os.replace`, `load_config`) and the
    names of the functions it defines."""
    tree = ast.parse(path.read_text(), str(path))
    called, defined = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            parts, f = [], node.func
            while isinstance(f, ast.Attribute):
                parts.append(f.attr)
                f = f.value
            if isinstance(f, ast.Name):
                called.add(".".join([f.id, *reversed(parts)]))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            defined.add(node.name)
    return called, defined


def test_one_implementation_of_ray_connection_atomic_rename_config_loading_and_file_hashing():
    """`ray.init` is called in infra/ray_session.py only, `os.replace` in core/io.py only, a file's
    sha256 is defined once (models/load/common.py file_sha256), and stage configs are loaded from
    files and overrides by the CLI's one loader (and the run stage reading the sweep's result)."""
    where: dict[str, set[str]] = {"ray.init": set(), "os.replace": set(), "load_config": set(), "sha256 def": set()}
    for path in source_files(REPO):
        rel = str(path.relative_to(REPO))
        called, defined = calls_and_definitions(path)
        for name in ("ray.init", "os.replace", "load_config"):
            if name in called:
                where[name].add(rel)
        if defined & {"file_sha256", "sha256_file", "sha256_of_file"}:
            where["sha256 def"].add(rel)
    assert where["ray.init"] == {"pipeline/infra/ray_session.py"}, where
    assert where["os.replace"] == {"pipeline/core/io.py"}, where
    assert where["sha256 def"] == {"models/load/common.py"}, where
    assert where["load_config"] <= {"pipeline/cli/stages.py", "pipeline/stages/run.py"}, where
