"""`mm llama build`: compile llama.cpp's command-line tools from the source matching llama-cpp-python.

llama-cpp-python exposes libllama but not the tools mm also runs: `llama-quantize` (the binary engine),
`llama-imatrix`, `llama-perplexity`, `llama-bench`, `llama-fit-params`, `llama-server`, `llama-cli` and
`llama-gguf-split`, plus `ggml-rpc-server` (the worker `mm rpc serve` starts; every tool is built with
the RPC backend, so `--rpc` reaches workers). The source is llama-cpp-python's sdist (it vendors llama.cpp
under vendor/llama.cpp): a `--source` path (an unpacked sdist, a llama.cpp tree, or the .tar.gz), or `pip
download` of the installed version, so every tool runs the same llama.cpp as the API. One build makes every
tool; it is cached in `$MM_HOME/tools/llama-<version>-<options hash>/` and appears there only complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from pydantic import BaseModel

from pipeline.base.constants import TOOLS_DIR_ENV, env_value, tool_env_var
from pipeline.base.errors import LlamaError
from pipeline.base.home import atomic_write_text, locked, mm_home

log = logging.getLogger(__name__)

# The tools and what they need: no tests, examples, web UI (the server's UI assets would be fetched from
# the network), curl or OpenSSL; static binaries, so a build folder can be copied as a whole.
BASE_CMAKE_ARGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_COMMON=ON",
    "-DGGML_RPC=ON",  # every tool can reach RPC workers (--rpc), and ggml-rpc-server is one of the tools
)
TOOLS = (
    "llama-quantize",
    "llama-imatrix",
    "llama-perplexity",
    "llama-bench",
    "llama-fit-params",
    "llama-server",
    "llama-cli",
    "llama-gguf-split",
    "ggml-rpc-server",
)


def llama_cpp_python_version() -> str:
    try:
        return metadata.version("llama-cpp-python")
    except metadata.PackageNotFoundError:
        return "not installed"


def llama_cpp_version() -> str:
    """The llama.cpp mm runs: llama-cpp-python's version (it pins one llama.cpp commit, which the tools share)."""
    return f"llama-cpp-python {llama_cpp_python_version()}"


class BuiltTools(BaseModel):
    """One cached build: where the tools are and what they were built from (its `build.json`)."""

    bin_dir: Path
    tools: list[str]
    version: str  # llama-cpp-python version whose vendored llama.cpp was compiled
    cmake_args: list[str]
    key: str
    source: str
    seconds: float
    cached: bool = False

    def path(self, tool: str) -> Path:
        return self.bin_dir / tool

    @property
    def complete(self) -> bool:
        """Every tool the build recorded is still there (a removed binary makes it a build to redo)."""
        return all(self.path(t).is_file() for t in self.tools)


def build_key(version: str, cmake_args: list[str]) -> str:
    canonical = json.dumps({"version": version, "cmake_args": sorted(cmake_args), "tools": TOOLS}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def built_tool_sets() -> list[BuiltTools]:
    """Every complete build in the mm home, newest first."""
    tools = mm_home().tools
    found: list[tuple[float, BuiltTools]] = []
    for info in tools.glob("llama-*/build.json"):
        with contextlib.suppress(OSError, ValueError):
            built = BuiltTools.model_validate_json(info.read_text())
            if built.complete:
                found.append((info.stat().st_mtime, built))
    return [built for _, built in sorted(found, key=lambda item: item[0], reverse=True)]


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_llama_tool(tool: str, explicit: Path | None = None) -> Path | None:
    """A llama.cpp tool: `explicit`, then $LLAMA_<TOOL>, then $MM_LLAMA_TOOLS/<tool>, then PATH, then the
    newest `mm llama build`. A path given explicitly or by variable that is not executable is an error."""
    if tool not in TOOLS:
        raise ValueError(f"unknown llama.cpp tool {tool!r}")
    named = [(str(explicit), explicit)] if explicit is not None else []
    env_var = tool_env_var(tool)
    if (value := env_value(env_var)) is not None:
        named.append((f"{env_var}={value}", Path(value).expanduser()))
    if (folder := env_value(TOOLS_DIR_ENV)) is not None:
        named.append((f"{TOOLS_DIR_ENV}={folder}", Path(folder) / tool))
    for label, path in named:
        if not _executable(path):
            raise LlamaError(f"{label}: not an executable {tool}")
        return path
    found = shutil.which(tool)
    if found:
        return Path(found)
    for built in built_tool_sets():
        if tool in built.tools:
            return built.path(tool)
    return None


def require_llama_tool(tool: str, explicit: Path | None = None) -> Path:
    found = find_llama_tool(tool, explicit)
    if found is None:
        raise LlamaError(
            f"no {tool} found (looked at ${tool_env_var(tool)}, ${TOOLS_DIR_ENV}, PATH and mm's builds)",
            hint="run `mm llama build` to compile llama.cpp's tools from the source llama-cpp-python ships",
        )
    return found


def build_llama_tools(
    cmake_args: list[str] | None = None,
    source: Path | None = None,
    *,
    jobs: int | None = None,
    on_line: Callable[[str], None] | None = None,
) -> BuiltTools:
    """The cached build for these options, or a fresh one (serialized by a lock per build key)."""
    version = llama_cpp_python_version()
    extra = list(cmake_args or [])
    key = build_key(version, extra)
    home = mm_home()
    final = home.tools / f"llama-{version}-{key}"
    with locked(home, f"llama-build-{key}"):
        info = final / "build.json"
        if info.is_file():
            built = BuiltTools.model_validate_json(info.read_text())
            if built.complete:
                return built.model_copy(update={"cached": True})
        started = time.monotonic()
        home.ensure(home.tools)
        work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=home.tools))
        try:
            tree = llama_cpp_tree(source, version, work)
            build_dir = work / "build"
            args = list(BASE_CMAKE_ARGS) + extra
            log_path = home.ensure(home.logs) / f"llama-build-{key}.log"
            run_logged(["cmake", "-S", str(tree), "-B", str(build_dir), *args], log_path, on_line)
            parallel = str(jobs or os.cpu_count() or 2)
            run_logged(["cmake", "--build", str(build_dir), "--target", *TOOLS, "-j", parallel], log_path, on_line)
            staging = work / "out"
            (staging / "bin").mkdir(parents=True)
            for tool in TOOLS:
                built_path = build_dir / "bin" / tool
                if not built_path.is_file():
                    raise LlamaError(f"the build finished but {built_path} is missing", hint=f"see {log_path}")
                _check_runs(built_path)
                shutil.copy2(built_path, staging / "bin" / tool)
            result = BuiltTools(
                bin_dir=final / "bin",
                tools=list(TOOLS),
                version=version,
                cmake_args=extra,
                key=key,
                source=str(tree),
                seconds=round(time.monotonic() - started, 1),
            )
            atomic_write_text(staging / "build.json", result.model_dump_json(indent=2) + "\n")
            if final.exists():  # a build without build.json is an interrupted one: replace it
                shutil.rmtree(final)
            os.replace(staging, final)
            return result
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _check_runs(binary: Path) -> None:
    """Every tool prints its usage for --help (some exit 1 after it); anything else means a broken binary."""
    proc = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60, check=False)
    if "usage" not in (proc.stdout + proc.stderr).lower():
        raise LlamaError(f"the built {binary} does not run: {(proc.stderr or proc.stdout).strip()[:300]}")


def run_logged(argv: list[str], log_path: Path, on_line: Callable[[str], None] | None) -> None:
    """Run a setup step, its output appended to `log_path` (and each line to `on_line`); failure is an error."""
    with open(log_path, "a") as sink:
        sink.write(f"\n=== {' '.join(argv)}\n")
        sink.flush()
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        except FileNotFoundError:
            raise LlamaError(
                f"{argv[0]} is not installed", hint="mm llama build needs cmake and a C++ compiler"
            ) from None
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                sink.write(line)
                if on_line is not None:
                    on_line(line.rstrip())
            proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if proc.returncode != 0:
        raise LlamaError(f"{' '.join(argv[:4])} failed (status {proc.returncode})", hint=f"log: {log_path}")


def llama_cpp_tree(source: Path | None, version: str, work: Path) -> Path:
    """A llama.cpp source tree: from --source (tree, sdist folder or archive) or pip's sdist download."""
    if source is not None:
        source = source.expanduser()
        if source.is_dir():
            for tree in (source, source / "vendor" / "llama.cpp"):
                if (tree / "CMakeLists.txt").is_file() and (tree / "tools" / "quantize").is_dir():
                    return tree
            raise LlamaError(f"{source}: not a llama.cpp source tree nor an unpacked llama-cpp-python sdist")
        if source.is_file():
            return _unpack(source, work)
        raise LlamaError(f"{source}: no such file or folder")
    download = work / "sdist"
    # pip reads the sdist's metadata with its build backend (scikit-build-core) in an isolated env: no
    # --no-build-isolation, since mm's own environment does not carry that backend.
    argv = [sys.executable, "-m", "pip", "download", "--no-binary", ":all:", "--no-deps"]
    argv += ["-d", str(download), f"llama-cpp-python=={version}"]
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    archives = sorted(download.glob("llama_cpp_python-*.tar.gz")) if download.is_dir() else []
    if proc.returncode != 0 or not archives:
        raise LlamaError(
            f"could not download llama-cpp-python=={version}'s source: {proc.stderr.strip()[-300:]}",
            hint="give the sdist or an unpacked llama.cpp as the source",
            param="source",
        )
    return _unpack(archives[0], work)


def _unpack(archive: Path, work: Path) -> Path:
    target = work / "src"
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise LlamaError(f"{archive}: cannot unpack: {exc}") from None
    for tree in sorted(target.glob("*/vendor/llama.cpp")) + sorted(target.glob("*")):
        if (tree / "CMakeLists.txt").is_file() and (tree / "tools" / "quantize").is_dir():
            return tree
    raise LlamaError(f"{archive}: no llama.cpp source inside (expected vendor/llama.cpp)")
