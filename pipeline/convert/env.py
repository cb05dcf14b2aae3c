"""The converter environment: llama.cpp's `convert_hf_to_gguf.py` with its own Python packages, made once.

The converter needs torch, transformers and sentencepiece; mm's own environment stays free of them. mm
copies the converter (the script, its `conversion/` package, `gguf-py/` and `requirements/`) from the
llama.cpp source that matches the installed llama-cpp-python — the same sdist `mm llama build` compiles —
and installs the vendored `requirements-convert_hf_to_gguf.txt` into a virtual environment beside it:
`$MM_HOME/tools/convert-<version>-<key>/`. It is built in a temporary folder and renamed into place with
its `env.json` written last, so a killed setup leaves nothing that looks usable.

One deviation from the vendored pins: torch. The file pins torch==2.11.0 from PyTorch's own CPU index,
which mm cannot assume is reachable; from PyPI that release is a CUDA build that pulls several GB of
nvidia-* wheels. mm pins `DEFAULT_TORCH` instead (a CPU build where the machine offers one, as this
project's CI machines do on disk); `MM_CONVERT_TORCH` overrides the requirement and `MM_CONVERT_PIP_ARGS`
adds pip options (e.g. `--extra-index-url https://download.pytorch.org/whl/cpu`). Both are in the key.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from pydantic import BaseModel

from pipeline.base.constants import CONVERTER_ENV, HF_OFFLINE_ENV, PIP_ARGS_ENV, TORCH_ENV, env_value
from pipeline.base.errors import ConvertError, LlamaError
from pipeline.base.home import atomic_write_text, locked, mm_home
from pipeline.llama.tools import llama_cpp_python_version, llama_cpp_tree, run_logged

log = logging.getLogger(__name__)

DEFAULT_TORCH = "torch==2.13.0"
REQUIREMENTS = "requirements/requirements-convert_hf_to_gguf.txt"
# What the converter imports from its tree (conversion/ imports only these and PyPI packages).
COPIED = ("convert_hf_to_gguf.py", "conversion", "gguf-py", "requirements", "LICENSE")
_NAME_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


class ConverterEnv(BaseModel):
    """One ready converter environment (its `env.json`)."""

    root: Path
    version: str  # llama-cpp-python version whose vendored converter this is
    key: str
    requirements: list[str]
    pip_args: list[str]
    seconds: float
    size_bytes: int
    cached: bool = False

    @property
    def python(self) -> Path:
        return self.root / "venv" / "bin" / "python"

    @property
    def script(self) -> Path:
        return self.root / "llama.cpp" / "convert_hf_to_gguf.py"

    @property
    def label(self) -> str:
        """What provenance records: the converter's source version and this environment's key."""
        return f"convert_hf_to_gguf.py (llama-cpp-python {self.version}, env {self.key})"


def read_requirements(path: Path, torch: str) -> list[str]:
    """The requirement lines of a pip requirements file, following `-r`, without pip options (index URLs
    would send pip to hosts mm cannot assume), with torch's line replaced by `torch`."""
    found: list[str] = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            found += read_requirements(path.parent / line.split(None, 1)[1].strip(), torch)
            continue
        if line.startswith("-"):
            continue
        match = _NAME_RE.match(line)
        if match and match[1].lower() == "torch":
            line = torch
        if line not in found:
            found.append(line)
    return found


def _settings() -> tuple[str, list[str]]:
    return env_value(TORCH_ENV) or DEFAULT_TORCH, shlex.split(env_value(PIP_ARGS_ENV) or "")


def env_key(version: str, torch: str, pip_args: list[str]) -> str:
    """The version fixes the vendored requirements; torch and pip's options are mm's and the user's."""
    canonical = json.dumps({"version": version, "torch": torch, "pip_args": pip_args, "python": sys.version_info[:2]})
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def find_converter() -> ConverterEnv | None:
    """The newest complete converter environment for the installed llama-cpp-python, if any."""
    explicit = _explicit()
    if explicit is not None:
        return explicit
    version = llama_cpp_python_version()
    infos = mm_home().tools.glob(f"convert-{version}-*/env.json")
    found = [(info.stat().st_mtime, _ready(info.parent)) for info in infos]
    ready = [(mtime, env) for mtime, env in found if env is not None]
    return max(ready, key=lambda item: item[0])[1] if ready else None


def ensure_converter(source: Path | None = None, on_line: Callable[[str], None] | None = None) -> ConverterEnv:
    """The converter environment for the installed llama-cpp-python and the current torch/pip settings,
    made now if it is not there (serialized by a lock per key). `source` as `mm llama build --source`."""
    explicit = _explicit()
    if explicit is not None:
        return explicit
    version = llama_cpp_python_version()
    torch, pip_args = _settings()
    key = env_key(version, torch, pip_args)
    home = mm_home()
    final = home.ensure(home.tools) / f"convert-{version}-{key}"
    with locked(home, f"convert-env-{key}"):
        ready = _ready(final)
        if ready is not None:
            return ready.model_copy(update={"cached": True})
        work = Path(tempfile.mkdtemp(prefix=".convert-", dir=home.tools))
        try:
            tree = _converter_tree(source, version, work)
            requirements = read_requirements(tree / REQUIREMENTS, torch)
            return _make(tree, work, final, version, key, requirements, pip_args, on_line)
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _explicit() -> ConverterEnv | None:
    named = env_value(CONVERTER_ENV)
    if not named:
        return None
    env = _ready(Path(named).expanduser())
    if env is None:
        raise ConvertError(f"{CONVERTER_ENV}={named}: not a converter environment made by `mm llama converter`")
    return env.model_copy(update={"cached": True})


def _ready(root: Path) -> ConverterEnv | None:
    try:
        env = ConverterEnv.model_validate_json((root / "env.json").read_text())
    except (OSError, ValueError):
        return None
    return env if env.python.exists() and env.script.is_file() else None


def _converter_tree(source: Path | None, version: str, work: Path) -> Path:
    """The llama.cpp tree to copy the converter from (`mm llama build`'s sources); checked for the script."""
    tree = llama_cpp_tree(source, version, work)
    if not (tree / "convert_hf_to_gguf.py").is_file() or not (tree / REQUIREMENTS).is_file():
        raise ConvertError(f"{tree}: no convert_hf_to_gguf.py or {REQUIREMENTS} in this llama.cpp tree")
    return tree


def _make(
    tree: Path,
    work: Path,
    final: Path,
    version: str,
    key: str,
    requirements: list[str],
    pip_args: list[str],
    on_line: Callable[[str], None] | None,
) -> ConverterEnv:
    started = time.monotonic()
    staging = work / "env"
    for name in COPIED:
        origin = tree / name
        if origin.is_dir():
            shutil.copytree(origin, staging / "llama.cpp" / name, ignore=shutil.ignore_patterns("__pycache__"))
        elif origin.is_file():
            (staging / "llama.cpp").mkdir(parents=True, exist_ok=True)
            shutil.copy2(origin, staging / "llama.cpp" / name)
    log_path = mm_home().ensure(mm_home().logs) / f"convert-env-{key}.log"
    python = str(staging / "venv" / "bin" / "python")
    try:
        run_logged([sys.executable, "-m", "venv", str(staging / "venv")], log_path, on_line)
        pip = [python, "-m", "pip", "install", "--no-input", "--disable-pip-version-check", *pip_args]
        run_logged([*pip, *requirements], log_path, on_line)
        # The venv finds its packages relative to its own folder, so it still works after the rename.
        run_logged([python, "-c", "import torch, transformers, sentencepiece"], log_path, None)
    except LlamaError as exc:
        raise ConvertError(
            f"setting up llama.cpp's converter environment failed: {exc.message}",
            hint=f"see {log_path}; {TORCH_ENV} chooses torch, {PIP_ARGS_ENV} adds pip options",
        ) from None
    env = ConverterEnv(
        root=final,
        version=version,
        key=key,
        requirements=requirements,
        pip_args=pip_args,
        seconds=round(time.monotonic() - started, 1),
        size_bytes=_tree_bytes(staging),
    )
    atomic_write_text(staging / "env.json", env.model_dump_json(indent=2) + "\n")
    if final.exists():  # a folder without env.json is an interrupted setup
        shutil.rmtree(final)
    os.replace(staging, final)
    return env


def _tree_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def supported_architectures(env: ConverterEnv) -> list[str]:
    """The Hugging Face architectures (config.json `architectures`) the converter registers for text models."""
    proc = subprocess.run(
        [str(env.python), str(env.script), "--print-supported-models"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, HF_OFFLINE_ENV: "1"},
    )
    names: list[str] = []
    section = ""
    for line in (proc.stdout + proc.stderr).splitlines():  # the converter logs the list on stderr
        if line.endswith("models:"):
            section = line.split()[0]
        elif section == "TEXT" and line.startswith("  - "):
            names.append(line[4:].strip())
    if not names:
        raise ConvertError(f"`{env.script} --print-supported-models` listed nothing: {proc.stderr.strip()[-300:]}")
    return names
