"""llama.cpp's log, routed away from the terminal: to a file in $MM_HOME/logs and to Python's debug log."""

from __future__ import annotations

import ctypes
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

llama_log = logging.getLogger("llama.cpp")
# llama.cpp's text as it wrote it (fragments included), into the file of the command running; never propagated,
# so nothing here reaches the terminal's handler
_to_file = logging.getLogger("mm.llama-log-file")
_to_file.propagate = False
_to_file.setLevel(logging.DEBUG)

_LOG_CALLBACK: list[Any] = []  # keeps the ctypes callback alive as long as llama.cpp may call it
_STARTED: set[Path] = set()  # log files this process has begun (truncated once, appended to after)


def route_llama_log() -> None:
    """llama.cpp's log to the open log file (llama_log_file) and the `llama.cpp` logger at debug (-vv shows it).

    llama-cpp-python 0.3's own callback prints to stderr: everything until the first Llama() sets its logger's
    level, and after that what it takes for errors, because its level map is off by one (its _logger.py
    predates GGML_LOG_LEVEL_DEBUG = 1), so warnings such as "llama_kv_cache_iswa: using full-size SWA cache"
    reach the terminal even with verbose=False. Only that callback (or none) is replaced: a caller that
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
                decoded = text.decode(errors="replace")
                _to_file.debug(decoded)
                llama_log.debug("%s", decoded.rstrip())

        _LOG_CALLBACK.append(to_logging)
    llama_cpp.llama_log_set(_LOG_CALLBACK[0], ctypes.c_void_p(0))


@contextmanager
def llama_log_file(name: str) -> Iterator[Path]:
    """llama.cpp's log of the block in $MM_HOME/logs/<name>.log, as the README promises; a block inside another
    (hw --measure's GPU part runs a bench) keeps the outer file. A file is begun afresh by the first block of a
    process and appended to by later ones, so one command's run is one file."""
    from pipeline.base.home import mm_home

    route_llama_log()
    current = next((h for h in _to_file.handlers if isinstance(h, logging.FileHandler)), None)
    if current is not None:
        yield Path(current.baseFilename)
        return
    home = mm_home()
    # model file stems name these files: only a plain name becomes a path
    path = home.ensure(home.logs) / f"{re.sub(r'[^A-Za-z0-9._+-]', '-', name)[:120].strip('.') or 'llama'}.log"
    handler = logging.FileHandler(path, mode="a" if path in _STARTED else "w", encoding="utf-8")
    handler.terminator = ""  # llama.cpp's lines carry their own newlines
    _STARTED.add(path)
    _to_file.addHandler(handler)
    try:
        yield path
    finally:
        _to_file.removeHandler(handler)
        handler.close()
