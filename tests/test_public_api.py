"""The library surface a script may import (`pipeline.__all__`): every name resolves, lazily, to the one
definition in its module, and the README's script runs as shown."""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import pipeline

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", pipeline.__all__)
def test_every_public_name_imports(name: str) -> None:
    value = getattr(pipeline, name)
    if name != "__version__":
        module, _, attribute = pipeline._EXPORTS[name].partition(":")
        assert value is getattr(importlib.import_module(module), attribute or name)  # the definition, not a copy


def test_type_checkers_see_the_names_the_package_loads() -> None:
    """The `if TYPE_CHECKING:` imports in pipeline/__init__.py name the same modules as _EXPORTS."""
    tree = ast.parse((ROOT / "pipeline" / "__init__.py").read_text())
    block = next(n for n in tree.body if isinstance(n, ast.If) and "TYPE_CHECKING" in ast.unparse(n.test))
    typed = {
        a.asname: f"{n.module}:{a.name}" if a.name != a.asname else n.module
        for n in block.body
        if isinstance(n, ast.ImportFrom)
        for a in n.names
    }
    assert typed == pipeline._EXPORTS


def test_import_pipeline_is_cheap() -> None:
    code = "import sys, pipeline; print(sorted(m for m in sys.modules if m.startswith('pipeline')))"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "['pipeline', 'pipeline.base', 'pipeline.base.constants']"


def test_an_unknown_name_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'fit_everything'"):
        _ = pipeline.fit_everything  # type: ignore[attr-defined]


def test_the_readme_script_runs_on_a_local_model(tiny_model: Path, tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Use as a library", 1)[1]
    script = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert script is not None, "README: no python block under 'Use as a library'"
    path = tmp_path / "example.py"
    path.write_text(script[1])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, str(path), str(tiny_model)], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    first, second = done.stdout.splitlines()
    assert first.startswith("llama, ") and first.endswith(" on rtx3060-12g")  # the header's general.architecture
    assert re.fullmatch(r"\d+/\d+ layers on the GPU, ~\d+ tokens/s", second)
