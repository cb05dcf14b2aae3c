"""The shape of `pipeline/`, read from its imports (ast): no import cycle, and each module imports only from
its own layer or the ones below it (the layers the README's Development section draws)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "pipeline"

# The floors, lowest first: a module's layer is its folder (`pipeline/<layer>/...`); the CLI (`cli.py`,
# `commands/`) is the face. A module may import modules of its own layer and of the layers below it.
LAYERS: list[str] = [
    "base",  # errors, constants, home (atomic writes, locks), digests, units, provenance, child processes
    "gguf",  # the GGUF header reader, quant and ggml type tables, chat formats, tiny models made locally
    "spec",  # recipes, run settings, hardware classes and the GPU catalog, measured-result shapes
    "probe",  # this machine, probed (GPUs, RAM, CPU) and as a hardware class
    "hub",  # verified transfers into the Hugging Face cache layout; uploads
    "resolve",  # a MODEL argument or Hub reference -> a local file or a header stub; texts
    "llama",  # llama.cpp: built tools, engines, worker, tensor overrides, quantize, imatrix
    "convert",  # safetensors -> GGUF through the vendored converter
    "fitting",  # memory per device, placement, speed, fit, recommend, model summary
    "measure",  # bench, eval, machine calibration
    "registry",  # profiles, blob store, run, export, push, install, model card
    "build",  # the build runner, stage machinery, stages, report, demo
    "face",  # cli.py and commands/
]
FACE = {"cli", "commands"}
# Third-party packages that mean network or llama.cpp, and the layers below which they may not appear.
NETWORK = {"httpx2", "httpx", "requests", "urllib3"}
# huggingface_hub below the hub layer only where its pure validators check names (no requests there).
HF_VALIDATORS = {"pipeline.base.safe_names"}
LLAMA = {"llama_cpp"}


class Imports:
    """Every `pipeline.*` module each module imports: at run time (top level or inside a function), and
    only for type checking (`if TYPE_CHECKING:`), which cannot make a cycle."""

    def __init__(self) -> None:
        self.runtime: dict[str, set[str]] = {}
        self.typing: dict[str, set[str]] = {}
        self.external: dict[str, set[str]] = {}
        for path in sorted(PACKAGE.rglob("*.py")):
            name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
            self.runtime[name], self.typing[name], self.external[name] = set(), set(), set()
            self._read(name, ast.parse(path.read_text(), str(path)), typing=False)

    def _read(self, module: str, node: ast.AST, typing: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                for inner in child.body:
                    self._read(module, inner, typing=True)
                    self._add(module, inner, typing=True)
                continue
            self._add(module, child, typing)
            self._read(module, child, typing)

    def _add(self, module: str, node: ast.AST, typing: bool) -> None:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pipeline import hub` imports the module pipeline.hub.api
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        for name in names:
            if name.split(".")[0] != "pipeline":
                self.external[module].add(name.split(".")[0])
            elif (target := self._module(name)) is not None and target != module:
                # A submodule importing its own package counts: with the package importing the submodule (even
                # inside a function) that is a cycle, however Python happens to order the loading.
                (self.typing if typing else self.runtime)[module].add(target)

    def _module(self, name: str) -> str | None:
        parts = name.split(".")
        while parts:
            candidate = ".".join(parts)
            if (PACKAGE.parent / Path(*parts)).with_suffix(".py").is_file():
                return candidate
            if (PACKAGE.parent / Path(*parts) / "__init__.py").is_file() and len(parts) > 1:
                return candidate
            parts.pop()
        return None

    def closure(self, module: str) -> set[str]:
        """Every pipeline module `module` loads at run time, directly or through others."""
        seen: set[str] = set()
        stack = [module]
        while stack:
            for target in self.runtime[stack.pop()]:
                if target not in seen:
                    seen.add(target)
                    stack.append(target)
        return seen


IMPORTS = Imports()


def layer_of(module: str) -> int:
    """The layer of a module, read from its folder."""
    top = module.removeprefix("pipeline.").split(".")[0]
    if top in FACE:
        return LAYERS.index("face")
    if top in LAYERS:
        return LAYERS.index(top)
    raise AssertionError(f"{module} is in no layer folder: put it in one of {LAYERS[:-1]} (README: Development)")


def test_every_module_sits_in_a_layer_folder() -> None:
    for module in IMPORTS.runtime:
        if module != "pipeline":
            layer_of(module)
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert folders == (set(LAYERS) - {"face"}) | {"commands"}


def find_cycles(imports: Imports) -> list[list[str]]:
    """Depth-first search over run-time imports; each back edge is a cycle, given as the modules on it."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(imports.runtime[module]):
            if state.get(target) == 1:
                cycles.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(imports.runtime):
        if module not in state:
            visit(module)
    return cycles


def layer_breaks(imports: Imports) -> list[str]:
    """Every import (run time or for type checking) of a module in a higher layer."""
    names = LAYERS
    wrong = []
    for module in imports.runtime:
        if module == "pipeline":
            continue
        for target in sorted(imports.runtime[module] | imports.typing[module]):
            if target != "pipeline" and layer_of(target) > layer_of(module):
                wrong.append(f"{module} ({names[layer_of(module)]}) imports {target} ({names[layer_of(target)]})")
    return wrong


def test_no_import_cycle() -> None:
    cycles = find_cycles(IMPORTS)
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_modules_import_only_their_layer_and_below() -> None:
    wrong = layer_breaks(IMPORTS)
    assert not wrong, "\n".join(wrong)


def test_the_header_reader_stands_on_base_alone() -> None:
    """gguf_header reads a file it is given: nothing about recipes, the Hub or llama.cpp comes with it."""
    loaded = IMPORTS.closure("pipeline.gguf.header")
    assert {layer_of(m) for m in loaded} <= {LAYERS.index("base"), LAYERS.index("gguf")}
    assert "pipeline.gguf.tiny_model" not in loaded


@pytest.mark.parametrize(
    "module",
    ["pipeline.fitting.fit", "pipeline.fitting.memory", "pipeline.fitting.model_shape", "pipeline.gguf.header"],
)
def test_fitting_runs_no_llama_cpp(module: str) -> None:
    """Fitting reads headers; only recommending a quant (recommend.py) asks llama.cpp's dry run."""
    loaded = IMPORTS.closure(module) | {module}
    engines = {
        "pipeline.llama.engines",
        "pipeline.llama.worker",
        "pipeline.llama.quantize",
        "pipeline.llama.quant_plan",
        "pipeline.llama.tools",
    }
    assert not loaded & engines
    assert not {e for m in loaded for e in IMPORTS.external[m]} & LLAMA


def test_spec_is_data_and_probes_no_machine() -> None:
    """Hardware classes and the GPU catalog describe machines; probing this one (NVML, nvidia-smi, /proc) is
    probe/'s, so planning for a machine you are not sitting at never depends on the one you are."""
    probing = {"subprocess", "pynvml", "platform", "shutil", "ctypes"}
    offenders = {
        module: sorted(IMPORTS.external[module] & probing)
        for module in IMPORTS.runtime
        if module.startswith("pipeline.spec.") and IMPORTS.external[module] & probing
    }
    assert not offenders, offenders


def test_below_the_hub_layer_nothing_reaches_the_network() -> None:
    hub = LAYERS.index("hub")
    offenders = {}
    for module in IMPORTS.runtime:
        if module != "pipeline" and layer_of(module) < hub:
            clients = IMPORTS.external[module] & (NETWORK if module in HF_VALIDATORS else NETWORK | {"huggingface_hub"})
            if clients:
                offenders[module] = clients
    assert not offenders


def test_the_registry_stores_the_fit_it_is_given() -> None:
    assert "pipeline.fitting.fit" not in IMPORTS.runtime["pipeline.registry.store"]


def test_the_library_never_prints_or_imports_the_cli() -> None:
    face = LAYERS.index("face")
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if module.startswith(("pipeline.cli", "pipeline.commands")):
            continue
        tree = ast.parse(path.read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
        assert not [c for c in calls if c.func.id == "print"], f"{module} prints"  # type: ignore[attr-defined]
        assert "typer" not in IMPORTS.external.get(module, set()), f"{module} imports typer"
        assert all(layer_of(t) < face for t in IMPORTS.runtime.get(module, set()) if t != "pipeline")


def test_the_checks_catch_a_cycle_and_a_layer_break(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The checks above can fail: errors importing the CLI, which imports errors back inside a function."""
    fake = tmp_path / "pipeline"
    (fake / "base").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "base" / "__init__.py").write_text("")
    (fake / "base" / "errors.py").write_text("from pipeline.cli import app\n")
    (fake / "cli.py").write_text("def app() -> None:\n    from pipeline.base import errors\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", fake)
    imports = Imports()
    assert find_cycles(imports) == [["pipeline.base.errors", "pipeline.cli", "pipeline.base.errors"]]
    assert layer_breaks(imports) == ["pipeline.base.errors (base) imports pipeline.cli (face)"]


def test_the_checks_catch_a_package_and_its_submodule_importing_each_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What pipeline.commands once did: the package imported its groups inside a function, and each group
    imported a helper from the package."""
    fake = tmp_path / "pipeline"
    (fake / "commands").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "commands" / "__init__.py").write_text("def groups() -> None:\n    from pipeline.commands import build\n")
    (fake / "commands" / "build.py").write_text("from pipeline.commands import groups\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", fake)
    assert find_cycles(Imports()) == [["pipeline.commands", "pipeline.commands.build", "pipeline.commands"]]


def _library_error_calls() -> Iterator[tuple[str, ast.Call]]:
    """Every `SomethingError(...)` call in the library (not the CLI layer), with its module."""
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if module.startswith(("pipeline.cli", "pipeline.commands")):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
                if func.endswith("Error"):
                    yield module, node


def test_library_errors_describe_the_problem_and_leave_flags_to_the_cli() -> None:
    """Issue 9: a library error names the input at fault by `param`; pipeline/cli.py's FLAG_FOR_PARAM adds the
    flag. A whole mm command to run (in backticks) may still be suggested."""
    from pipeline.cli import FLAG_FOR_PARAM

    flagged, unmapped = [], []
    for module, call in _library_error_calls():
        texts = [*call.args[:1], *(k.value for k in call.keywords if k.arg == "hint")]
        for text in texts:
            if re.search(r"(?<![\w-])--[a-z]", re.sub(r"`[^`]*`", "", ast.unparse(text))):
                flagged.append(f"{module}:{call.lineno}")
        for keyword in call.keywords:
            value = keyword.value
            if keyword.arg == "param" and isinstance(value, ast.Constant) and value.value not in FLAG_FOR_PARAM:
                unmapped.append(f"{module}:{call.lineno} param={value.value!r}")
    assert not flagged, "library errors naming a CLI flag: " + ", ".join(flagged)
    assert not unmapped, "params without a flag in pipeline/cli.py FLAG_FOR_PARAM: " + ", ".join(unmapped)


def test_mm_starts_without_the_hub_client_or_llama_cpp() -> None:
    """`mm --version` / `mm --help` load only the CLI: huggingface_hub (safe_names imports its validators when a
    name is checked), llama.cpp, numpy and the HTTP client come with the command that needs them."""
    code = "import sys, pipeline.cli; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    env = {**os.environ, "PYTHONPATH": str(PACKAGE.parent)}
    loaded = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert "typer" in loaded.stdout.split()  # the probe saw the CLI load
    assert not {"huggingface_hub", "llama_cpp", "numpy", "gguf", "httpx2", "httpx"} & set(loaded.stdout.split())
