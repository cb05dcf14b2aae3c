"""llama.cpp's engines behind one interface: the libllama API in a child process, or a built binary
(`llama-quantize`); their log captured to a file and parsed for progress, fallbacks and dry runs; and what
`mm llama info` says about each. Finding and building the binaries is pipeline/llama/tools.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from pipeline.base.child import describe_exit, die_with_parent
from pipeline.base.constants import PARENT_PID_ENV
from pipeline.base.errors import LlamaError, QuantizeError
from pipeline.gguf.ggml_types import gguf_type_name
from pipeline.llama.tools import built_tool_sets, find_llama_tool, llama_cpp_version, require_llama_tool
from pipeline.llama.worker import QuantizeJob

Engine = Literal["api", "binary"]
TensorProgress = Callable[[int, int], None]  # (tensors done, tensors in all)

# Lines llama.cpp's src/llama-quant.cpp logs; the formats are its LLAMA_LOG_* calls.
TENSOR_LINE = re.compile(
    r"^\[\s*(?P<index>\d+)/\s*(?P<total>\d+)\]\s+(?P<name>\S+)\s+-\s+\[(?P<shape>[^\]]*)\],\s+type\s+=\s+(?P<type>\S+),"
    r"(?:.*\((?P<new>[A-Za-z0-9_]+)\)\s*$)?"
)
FALLBACK_LINE = re.compile(
    r"warning:\s+(?P<name>\S+)\s+-\s+ncols\s+(?P<ncols>\d+)\s+not divisible by\s+(?P<block>\d+)"
    r"\s+\(required for type\s+(?P<want>\S+)\).*falling back to\s+(?P<got>\S+)"
)
NEEDS_IMATRIX = ("will require an imatrix", "requires an imatrix", "requires an importance matrix")


@dataclass
class Fallback:
    tensor: str
    ncols: int
    block: int
    wanted: str
    used: str


@dataclass
class QuantizeLog:
    """What llama.cpp's log said about one run: per-tensor types, fallbacks, imatrix need, errors."""

    tensor_types: dict[str, str] = field(default_factory=dict)  # name -> ggml type name, upper case
    total: int = 0
    fallbacks: list[Fallback] = field(default_factory=list)
    needs_imatrix: bool = False
    errors: list[str] = field(default_factory=list)

    def feed(self, line: str) -> bool:
        """Take one log line; True when it finished a tensor (a progress step)."""
        match = TENSOR_LINE.match(line)
        if match:
            self.total = int(match["total"])
            self.tensor_types[match["name"]] = (match["new"] or match["type"]).upper()
            return True
        fallback = FALLBACK_LINE.search(line)
        if fallback:
            self.fallbacks.append(
                Fallback(
                    fallback["name"],
                    int(fallback["ncols"]),
                    int(fallback["block"]),
                    fallback["want"].upper(),
                    fallback["got"].upper(),
                )
            )
        if any(marker in line for marker in NEEDS_IMATRIX):
            self.needs_imatrix = True
        lowered = line.lower()
        if "error" in lowered or "failed" in lowered or "mm: " in lowered:
            self.errors.append(line.strip())
        return False

    def fallback_note(self) -> str | None:
        """e.g. "90 of 236 tensors fell back to q4_0: row size not divisible by 256"."""
        if not self.fallbacks:
            return None
        used = sorted({f.used.lower() for f in self.fallbacks})
        blocks = sorted({f.block for f in self.fallbacks})
        return (
            f"{len(self.fallbacks)} of {self.total or len(self.tensor_types)} tensors fell back to "
            f"{'/'.join(used)}: row size not divisible by {'/'.join(map(str, blocks))}"
        )


# --- versions and binaries --------------------------------------------------------------------------


def find_llama_quantize(explicit: Path | None = None) -> Path | None:
    """`--llama-quantize PATH`, then LLAMA_QUANTIZE, MM_LLAMA_TOOLS, PATH, then the newest `mm llama build`."""
    return find_llama_tool("llama-quantize", explicit)


def require_llama_quantize(explicit: Path | None = None) -> Path:
    return require_llama_tool("llama-quantize", explicit)


def api_system_info() -> str:
    import llama_cpp

    return bytes(llama_cpp.llama_print_system_info()).decode(errors="replace").strip()


def binary_args(binary: Path, job: QuantizeJob, type_name: str) -> list[str]:
    """llama-quantize's command line for a job (tools/quantize/quantize.cpp's flags)."""
    args = [str(binary)]
    if job.allow_requantize:
        args.append("--allow-requantize")
    if not job.quantize_output_tensor:
        args.append("--leave-output-tensor")
    if job.pure:
        args.append("--pure")
    if job.dry_run:
        args.append("--dry-run")
    if job.imatrix:
        args += ["--imatrix", job.imatrix]
    if job.output_tensor_type is not None:
        args += ["--output-tensor-type", gguf_type_name(job.output_tensor_type)]
    if job.token_embedding_type is not None:
        args += ["--token-embedding-type", gguf_type_name(job.token_embedding_type)]
    for pattern, type_id in job.tensor_types:
        args += ["--tensor-type", f"{pattern}={gguf_type_name(type_id)}"]
    args += [job.source, job.output, type_name.upper()]
    if job.nthread > 0:
        args.append(str(job.nthread))
    return args


# --- running ----------------------------------------------------------------------------------------


class ApiWorker:
    """A started api-engine child, importing libllama while mm does its checks; it then runs one job.

    It waits for its job on stdin; closing it unused (an error, or nothing to do) just ends it.
    """

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline.llama.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "LC_ALL": "C", PARENT_PID_ENV: str(os.getpid())},
        )  # it arranges its own death with mm (llama_worker.main): no pre-exec hook in a threaded parent

    def send(self, job: QuantizeJob, log_path: Path) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"job": json.loads(job.to_json()), "log": str(log_path)}).encode() + b"\n")
        self.proc.stdin.close()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def run_quantize(
    job: QuantizeJob,
    *,
    engine: Engine,
    type_name: str,
    log_path: Path,
    binary: Path | None = None,
    progress: TensorProgress | None = None,
    worker: ApiWorker | None = None,
) -> QuantizeLog:
    """Run one quantize in a child process, its output appended to `log_path`; raise on failure.

    The parent tails the log for progress. Ctrl-C or any error here kills the child before returning,
    so nothing keeps writing to the caller's temporary output.
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)
    parsed = QuantizeLog()
    with open(log_path, "ab") as sink, open(log_path, "rb") as tail:
        tail.seek(0, os.SEEK_END)
        if engine == "api":
            sink.write(f"\n=== mm: api engine: {job.to_json()}\n".encode())
            sink.flush()
            worker = worker or ApiWorker()
            proc = worker.proc
            with contextlib.suppress(BrokenPipeError):  # it died starting up: its status says so below
                worker.send(job, log_path)
        else:
            argv = binary_args(binary or require_llama_quantize(), job, type_name)
            sink.write(f"\n=== mm: {' '.join(argv)}\n".encode())
            sink.flush()
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
                env=dict(os.environ, LC_ALL="C"),
                preexec_fn=die_with_parent,
            )
        try:
            pending = b""
            done = 0
            while True:
                finished = proc.poll() is not None
                chunk = tail.read()
                if chunk:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for raw in lines:
                        if parsed.feed(raw.decode(errors="replace")):
                            done += 1
                            if progress is not None:
                                progress(done, parsed.total)
                elif finished:
                    break
                else:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        proc.wait(timeout=0.05)  # returns as soon as the child ends
            if pending:
                parsed.feed(pending.decode(errors="replace"))
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if proc.returncode != 0:
        raise _failure(proc.returncode, parsed, log_path, engine)
    return parsed


def _failure(returncode: int, parsed: QuantizeLog, log_path: Path, engine: Engine) -> QuantizeError:
    detail = "; ".join(dict.fromkeys(parsed.errors[-3:])) or "no error message"
    how = describe_exit(returncode)
    return QuantizeError(f"llama.cpp's quantize ({engine} engine) {how}: {detail}", hint=f"full log: {log_path}")


_IN_PROCESS = threading.Lock()


def dry_run_in_process(job: QuantizeJob) -> QuantizeLog:
    """A dry run through libllama in this process: it reads the header only, so it takes milliseconds.

    llama.cpp's log callback is process-wide; it is pointed at a collector for the call and restored.
    """
    import llama_cpp

    lines: list[bytes] = []

    @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
    def collect(level: int, text: bytes | None, user_data: ctypes.c_void_p) -> None:
        if text:
            lines.append(bytes(text))

    from pipeline.llama.worker import run_job

    with _IN_PROCESS:
        previous, previous_data = llama_cpp.llama_log_callback(), ctypes.c_void_p()
        llama_cpp.llama_log_get(ctypes.byref(previous), ctypes.byref(previous_data))
        llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
        try:
            status = run_job(job.replace(dry_run=True))
        except (OSError, ValueError) as exc:  # the imatrix (read here: it changes llama.cpp's type choice)
            raise QuantizeError(f"importance matrix {job.imatrix}: not usable: {exc}", param="imatrix_path") from None
        finally:
            llama_cpp.llama_log_set(previous, previous_data)
    parsed = QuantizeLog()
    for line in b"".join(lines).decode(errors="replace").splitlines():
        parsed.feed(line)
    if status != 0:
        detail = "; ".join(dict.fromkeys(parsed.errors[-3:])) or "no error message"
        raise QuantizeError(f"llama.cpp's quantize dry run failed for {job.source}: {detail}")
    return parsed


class EngineInfo(BaseModel):
    name: str  # "api" | "binary"
    available: bool
    version: str | None = None
    path: str | None = None
    detail: str | None = None  # build options / CPU features, or why it is unavailable


def engines_info() -> list[EngineInfo]:
    """What `mm llama info` shows: both engines, their llama.cpp versions and build options."""
    engines: list[EngineInfo] = []
    try:
        engines.append(EngineInfo(name="api", available=True, version=llama_cpp_version(), detail=api_system_info()))
    except (ImportError, OSError) as exc:
        engines.append(EngineInfo(name="api", available=False, detail=f"llama-cpp-python not loadable: {exc}"))
    try:
        binary = find_llama_tool("llama-quantize")
    except LlamaError as exc:
        engines.append(EngineInfo(name="binary", available=False, detail=exc.message))
        return engines
    if binary is None:
        engines.append(EngineInfo(name="binary", available=False, detail="not found; `mm llama build` makes one"))
        return engines
    built = next((b for b in built_tool_sets() if b.path("llama-quantize") == binary), None)
    if built is not None:
        version, detail = f"llama-cpp-python {built.version}", " ".join(built.cmake_args) or "default options"
    else:
        version, detail = None, "found outside mm (LLAMA_QUANTIZE, MM_LLAMA_TOOLS or PATH)"
    engines.append(EngineInfo(name="binary", available=True, version=version, path=str(binary), detail=detail))
    return engines
