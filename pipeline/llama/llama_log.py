"""llama.cpp's log, routed into Python logging instead of the terminal."""

from __future__ import annotations

import ctypes
import logging
from typing import Any

llama_log = logging.getLogger("llama.cpp")

_LOG_CALLBACK: list[Any] = []  # keeps the ctypes callback alive as long as llama.cpp may call it


def route_llama_log() -> None:
    """llama.cpp's log to the `llama.cpp` logger at debug level (-vv shows it).

    llama-cpp-python 0.3's own callback maps ggml's log levels off by one (its _logger.py predates
    GGML_LOG_LEVEL_DEBUG = 1), so warnings such as "llama_kv_cache_iswa: using full-size SWA cache" reach
    the terminal even with verbose=False. Only that callback (or none) is replaced: a caller that
    installed its own keeps it.
    """
    import llama_cpp
    from llama_cpp import _logger

    current, data = llama_cpp.llama_log_callback(), ctypes.c_void_p()
    llama_cpp.llama_log_get(ctypes.byref(current), ctypes.byref(data))
    address = ctypes.cast(current, ctypes.c_void_p).value
    if address not in (None, ctypes.cast(_logger.llama_log_callback, ctypes.c_void_p).value):
        return
    if not _LOG_CALLBACK:

        @llama_cpp.llama_log_callback  # type: ignore[untyped-decorator]
        def to_logging(level: int, text: bytes | None, user_data: ctypes.c_void_p) -> None:
            if text:
                llama_log.debug("%s", text.decode(errors="replace").rstrip())

        _LOG_CALLBACK.append(to_logging)
    llama_cpp.llama_log_set(_LOG_CALLBACK[0], ctypes.c_void_p(0))
