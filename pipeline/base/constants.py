"""mm's constants: its version, the Hub's default revision, every environment variable mm reads, and how it reads them.

As huggingface_hub's `constants.py`, one place names them all; unlike it, values are read on each call (not
frozen at import), so tests and `make nightly` can point mm elsewhere after it has loaded.
"""

from __future__ import annotations

import os

VERSION = "0.1.0"
DEFAULT_REVISION = "main"  # the branch a Hub reference means when it names none

# mm's own
HOME_ENV = "MM_HOME"  # the mm home (default ~/.cache/mm)
DEBUG_ENV = "MM_DEBUG"  # a flag: show the traceback behind an error
RECIPES_ENV = "MM_RECIPES"  # the recipes folder (default ./recipes)
TEXT_ENV = "MM_TEXT"  # the default evaluation text
CALIBRATION_ENV = "MM_CALIBRATION_TEXT"  # the default imatrix calibration text
TOOLS_DIR_ENV = "MM_LLAMA_TOOLS"  # a folder holding llama.cpp tools built elsewhere (tests share one build)
CONVERTER_ENV = "MM_CONVERTER"  # a ready converter environment made elsewhere (another mm home; tests share one)
TORCH_ENV = "MM_CONVERT_TORCH"  # the torch requirement the converter environment installs
PIP_ARGS_ENV = "MM_CONVERT_PIP_ARGS"  # extra pip arguments for it (an index, a wheel folder)
PARENT_PID_ENV = "MM_PARENT_PID"  # set for a llama.cpp worker: it exits when this process is gone
HUB_TIMEOUT_ENV = "MM_HUB_TIMEOUT"  # seconds to connect to the Hub, or between two reads or writes
HUB_DEADLINE_ENV = "MM_HUB_DEADLINE"  # seconds for one Hub request, before the allowance for its bytes
# huggingface_hub's, which mm reads too
HF_ENDPOINT_ENV = "HF_ENDPOINT"
HF_OFFLINE_ENV = "HF_HUB_OFFLINE"
HF_CACHE_ENV = "HF_HUB_CACHE"
HF_HOME_ENV = "HF_HOME"
# the XDG base directory specification's, for the user config folder (base/config_dir.py)
CONFIG_HOME_ENV = "XDG_CONFIG_HOME"

TRUE_VALUES = frozenset({"1", "true", "yes", "on"})


def tool_env_var(tool: str) -> str:
    """The variable naming a llama.cpp tool built elsewhere: llama-quantize -> LLAMA_QUANTIZE."""
    return tool.upper().replace("-", "_")


def env_value(name: str) -> str | None:
    """The variable's value, None when it is unset or empty (an empty value means "not set" everywhere)."""
    return os.environ.get(name) or None


def env_flag(name: str) -> bool:
    """The one truthiness rule: 1, true, yes or on (any case, spaces ignored) is set; anything else is not."""
    return (os.environ.get(name) or "").strip().lower() in TRUE_VALUES
