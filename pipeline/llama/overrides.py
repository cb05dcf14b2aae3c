"""Tensor buffer-type overrides (llama.cpp's `-ot`, `--n-cpu-moe`) for models loaded by llama-cpp-python.

`mm run` keeps the experts of a mixture-of-experts profile in RAM by filling the C array
`llama_model_params.tensor_buft_overrides` through ctypes, with the CPU buffer type from libggml's device
registry. llama-cpp-python 0.3.36's `Llama` has no parameter for it (the field is typed as an unused
pointer), so while a model loads, `llama_model_default_params` hands out parameters that carry the array.

Why this and not running the built `llama-server`/`llama-cli`: `mm run` keeps one engine for
generate, chat and the OpenAI server (llama-cpp-python, the same libllama the memory tests measure), works
without `mm llama build`, and the override is the same struct llama.cpp's own `common` code fills
(common/arg.cpp `--n-cpu-moe` → llm_add_n_cpu_ffn_overrides). llama.cpp reads the array only while it
loads (llama-model-loader.cpp), so it needs to live only that long. The exported llama-server line uses
the flags themselves.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from pipeline.base.errors import LlamaError, MMError, UsageError
from pipeline.spec.run_settings import override_layer

log = logging.getLogger(__name__)

GGML_BACKEND_DEVICE_TYPE_CPU = 0  # ggml-backend.h enum ggml_backend_dev_type
_LOCK = threading.Lock()  # the default-params hook is process-wide: one load at a time


class _BuftOverride(ctypes.Structure):
    """llama.h struct llama_model_tensor_buft_override (not declared by llama-cpp-python)."""

    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def parse_override(text: str) -> str:
    """The tensor-name pattern of an `-ot PATTERN=CPU` string of the forms mm writes (run_settings), so that
    llama.cpp never compiles a regular expression mm did not write; mm places tensors only on the CPU."""
    try:
        override_layer(text)
    except ValueError as exc:
        raise UsageError(f"tensor_overrides: {exc}") from None
    return text.rpartition("=")[0]


def cpu_buffer_type() -> int:
    """ggml_backend_cpu_buffer_type(), found through libggml's device registry (static or dynamic backends)."""
    from llama_cpp import _ggml

    lib = _ggml.libggml
    lib.ggml_backend_dev_by_type.restype = ctypes.c_void_p
    lib.ggml_backend_dev_by_type.argtypes = [ctypes.c_int]
    lib.ggml_backend_dev_buffer_type.restype = ctypes.c_void_p
    lib.ggml_backend_dev_buffer_type.argtypes = [ctypes.c_void_p]
    device = lib.ggml_backend_dev_by_type(GGML_BACKEND_DEVICE_TYPE_CPU)
    if not device:
        raise UsageError("llama.cpp has no CPU backend: cannot keep tensors in RAM")
    return int(lib.ggml_backend_dev_buffer_type(device))


def override_array(overrides: Sequence[str]) -> ctypes.Array[_BuftOverride]:
    """The NULL-terminated C array for `-ot` strings (every one PATTERN=CPU)."""
    buft = cpu_buffer_type()
    array = (_BuftOverride * (len(overrides) + 1))()
    for item, text in zip(array, overrides, strict=False):
        item.pattern, item.buft = parse_override(text).encode(), buft
    return array  # the last element stays zeroed: the terminator


@contextmanager
def tensor_overrides(overrides: Sequence[str]) -> Iterator[None]:
    """While inside, every model llama-cpp-python loads in this process gets `overrides` (no-op if empty)."""
    if not overrides:
        yield
        return
    from llama_cpp import llama_cpp as lib

    array = override_array(overrides)
    original = lib.llama_model_default_params

    def with_overrides() -> lib.llama_model_params:
        params: lib.llama_model_params = original()
        params.tensor_buft_overrides = ctypes.cast(array, ctypes.c_void_p)  # type: ignore[assignment]  # typed as an array, declared c_void_p
        return params

    with _LOCK:
        log.info("loading with %d tensor override(s): %s", len(overrides), ", ".join(overrides))
        lib.llama_model_default_params = with_overrides
        try:
            yield
        finally:
            lib.llama_model_default_params = original


def load_llama(
    kwargs: dict[str, Any], *, overrides: Sequence[str] = (), what: str | None = None, hint: str | None = None
) -> Any:
    """llama_cpp.Llama(**kwargs) with tensors placed by `overrides`; a load failure is one LlamaError.

    The one way mm loads a model in-process (mm run, mm bench, mm eval), so experts a profile keeps in RAM
    stay there whichever command loads it. `what` names the model in the error (default: its path).
    """
    from llama_cpp import Llama

    from pipeline.llama.llama_log import route_llama_log

    route_llama_log()  # before the load: its warnings (SWA cache, context size) to the log, not the terminal
    try:
        with tensor_overrides(overrides):
            return Llama(**kwargs, verbose=False)
    except MMError:  # a bad override: a usage error (a ValueError too), not a load failure
        raise
    except (ValueError, RuntimeError) as exc:
        name = what or str(kwargs.get("model_path"))
        raise LlamaError(f"llama.cpp could not load {name}: {exc}", hint=hint) from None
