"""The layout holds: the library imports nothing of the application or its extras, each
layer uses only those below it, and no module grows past one concept's size."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).parents[1] / "src" / "taperprune"
EXTRAS = ("matplotlib", "onnx", "onnxruntime", "onnxscript", "typer", "rich", "yaml")


def _imported_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"import sys\n{code}\nprint(' '.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
    )
    return set(out.stdout.split())


def test_import_taperprune_pulls_in_no_extra_and_no_torch() -> None:
    loaded = _imported_after("import taperprune")
    assert not loaded & {*EXTRAS, "torch", "pydantic"}


def test_the_library_api_pulls_in_no_extra() -> None:
    loaded = _imported_after(
        "import taperprune\n"
        "from taperprune import TaperPruner, load, recalibrate_bn, remove_masked, count_macs"
    )
    assert "torch" in loaded
    # torch-pruning imports timm where it is installed (a test dependency), and timm
    # imports yaml: what the library's own dependencies load is not ours to count.
    theirs = _imported_after("import torch, torchvision, torch_pruning, safetensors, pydantic")
    assert not (loaded - theirs) & set(EXTRAS)


def test_cli_help_does_not_import_torch() -> None:
    loaded = _imported_after(
        "from typer.testing import CliRunner\n"
        "from taperprune.cli import app\n"
        "assert CliRunner().invoke(app, ['--help']).exit_code == 0"
    )
    assert "torch" not in loaded


def _relative_imports(path: Path) -> set[str]:
    """Modules a file imports from its own package, as dotted names under taperprune."""
    tree = ast.parse(path.read_text())
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            found.add(".".join([*base, node.module] if node.module else base))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("taperprune"):
            found.add(node.module or "")
    return found


def test_the_library_never_imports_the_application() -> None:
    for path in SRC.glob("*.py"):
        if path.name in ("cli.py", "__main__.py"):
            continue
        bad = {m for m in _relative_imports(path) if m.startswith("taperprune.run")}
        assert not bad, f"{path.name} imports {bad}"


def test_no_module_imports_the_cli() -> None:
    for path in SRC.rglob("*.py"):
        if path.name != "cli.py" and path.name != "__main__.py":
            assert "taperprune.cli" not in _relative_imports(path), path


def test_modules_stay_small() -> None:
    for path in [*SRC.rglob("*.py"), *(SRC.parents[1] / "benchmarks" / "compare").glob("*.py")]:
        lines = len(path.read_text().splitlines())
        assert lines <= 420, f"{path} has {lines} lines: is a second concept hiding in it?"
