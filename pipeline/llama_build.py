"""`mm llama build`: compile only llama.cpp's `llama-quantize` from the source matching llama-cpp-python.

The source is llama-cpp-python's sdist (it vendors llama.cpp under vendor/llama.cpp): a `--source` path
(an unpacked sdist, a llama.cpp tree, or the .tar.gz), or `pip download` of the installed version. Builds
are cached in `$MM_HOME/tools/llama-quantize-<version>-<options hash>/` and appear there only complete.
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
from pathlib import Path

from pydantic import BaseModel

from pipeline.errors import LlamaError
from pipeline.home import atomic_write_text, locked, mm_home
from pipeline.llama import llama_cpp_python_version

log = logging.getLogger(__name__)

# Only what the quantize tool needs: no tests, examples, server, web UI, curl or OpenSSL; one static binary.
BASE_CMAKE_ARGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_TOOLS=ON",
    "-DLLAMA_BUILD_COMMON=ON",
)
TARGET = "llama-quantize"


class BuiltTool(BaseModel):
    """One cached build: where the binary is and what it was built from (its `build.json`)."""

    binary: Path
    version: str  # llama-cpp-python version whose vendored llama.cpp was compiled
    cmake_args: list[str]
    key: str
    source: str
    seconds: float
    cached: bool = False


def build_key(version: str, cmake_args: list[str]) -> str:
    canonical = json.dumps({"version": version, "cmake_args": sorted(cmake_args)}, sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def built_binaries() -> list[BuiltTool]:
    """Every complete build in the mm home, newest first."""
    tools = mm_home().tools
    found: list[tuple[float, BuiltTool]] = []
    for info in tools.glob("llama-quantize-*/build.json"):
        with contextlib.suppress(OSError, ValueError):
            tool = BuiltTool.model_validate_json(info.read_text())
            if tool.binary.is_file():
                found.append((info.stat().st_mtime, tool))
    return [tool for _, tool in sorted(found, key=lambda item: item[0], reverse=True)]


def build_llama_quantize(
    cmake_args: list[str] | None = None,
    source: Path | None = None,
    *,
    jobs: int | None = None,
    on_line: Callable[[str], None] | None = None,
) -> BuiltTool:
    """The cached build for these options, or a fresh one (serialized by a lock per build key)."""
    version = llama_cpp_python_version()
    extra = list(cmake_args or [])
    key = build_key(version, extra)
    home = mm_home()
    final = home.tools / f"llama-quantize-{version}-{key}"
    with locked(home, f"llama-build-{key}"):
        info = final / "build.json"
        if info.is_file():
            tool = BuiltTool.model_validate_json(info.read_text())
            if tool.binary.is_file():
                return tool.model_copy(update={"cached": True})
        started = time.monotonic()
        home.ensure(home.tools)
        work = Path(tempfile.mkdtemp(prefix=f".build-{key}-", dir=home.tools))
        try:
            tree = _llama_cpp_tree(source, version, work)
            build_dir = work / "build"
            args = list(BASE_CMAKE_ARGS) + extra
            log_path = home.ensure(home.logs) / f"llama-build-{key}.log"
            _run(["cmake", "-S", str(tree), "-B", str(build_dir), *args], log_path, on_line)
            parallel = str(jobs or os.cpu_count() or 2)
            _run(
                ["cmake", "--build", str(build_dir), "--target", TARGET, "-j", parallel],
                log_path,
                on_line,
            )
            built = build_dir / "bin" / TARGET
            if not built.is_file():
                raise LlamaError(f"the build finished but {built} is missing", hint=f"see {log_path}")
            _check_runs(built)
            staging = work / "out"
            staging.mkdir()
            shutil.copy2(built, staging / TARGET)
            tool = BuiltTool(
                binary=final / TARGET,
                version=version,
                cmake_args=extra,
                key=key,
                source=str(tree),
                seconds=round(time.monotonic() - started, 1),
            )
            atomic_write_text(staging / "build.json", tool.model_dump_json(indent=2) + "\n")
            if final.exists():  # a build without build.json is an interrupted one: replace it
                shutil.rmtree(final)
            os.replace(staging, final)
            return tool
        finally:
            shutil.rmtree(work, ignore_errors=True)


def _check_runs(binary: Path) -> None:
    """llama-quantize --help exits 1 after printing its usage; anything else means a broken binary."""
    proc = subprocess.run([str(binary), "--help"], capture_output=True, text=True, timeout=60, check=False)
    if "usage:" not in proc.stdout + proc.stderr:
        raise LlamaError(f"the built {binary} does not run: {(proc.stderr or proc.stdout).strip()[:300]}")


def _run(argv: list[str], log_path: Path, on_line: Callable[[str], None] | None) -> None:
    with open(log_path, "a") as sink:
        sink.write(f"\n=== {' '.join(argv)}\n")
        sink.flush()
        try:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        except FileNotFoundError:
            raise LlamaError(f"{argv[0]} is not installed; mm llama build needs cmake and a C++ compiler") from None
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
        raise LlamaError(f"{' '.join(argv[:3])} failed (status {proc.returncode})", hint=f"build log: {log_path}")


def _llama_cpp_tree(source: Path | None, version: str, work: Path) -> Path:
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
            hint="pass the sdist or an unpacked llama.cpp with --source",
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


class EngineInfo(BaseModel):
    name: str  # "api" | "binary"
    available: bool
    version: str | None = None
    path: str | None = None
    detail: str | None = None  # build options / CPU features, or why it is unavailable


def engines_info() -> list[EngineInfo]:
    """What `mm llama info` shows: both engines, their llama.cpp versions and build options."""
    from pipeline.llama import api_system_info, find_llama_quantize, llama_cpp_version

    engines: list[EngineInfo] = []
    try:
        engines.append(EngineInfo(name="api", available=True, version=llama_cpp_version(), detail=api_system_info()))
    except (ImportError, OSError) as exc:
        engines.append(EngineInfo(name="api", available=False, detail=f"llama-cpp-python not loadable: {exc}"))
    try:
        binary = find_llama_quantize()
    except LlamaError as exc:
        engines.append(EngineInfo(name="binary", available=False, detail=exc.message))
        return engines
    if binary is None:
        engines.append(EngineInfo(name="binary", available=False, detail="not found; `mm llama build` makes one"))
        return engines
    built = next((b for b in built_binaries() if b.binary == binary), None)
    if built is not None:
        version, detail = f"llama-cpp-python {built.version}", " ".join(built.cmake_args) or "default options"
    else:
        version, detail = None, "found outside mm (LLAMA_QUANTIZE or PATH)"
    engines.append(EngineInfo(name="binary", available=True, version=version, path=str(binary), detail=detail))
    return engines
