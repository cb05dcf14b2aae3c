"""Which chat format `mm run` talks to a model in (the GGUF's own template, else its architecture's), and how
llama-server and Ollama spell the same format, so that an export answers as `mm run` does.

llama-cpp-python, given no template, silently falls back to Llama-2's `[INST]` format (llama.py,
"Using fallback chat format"), and a model trained on another format answers with `[INST]` lines or
nothing. mm chooses explicitly and says so.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import NamedTuple

from pipeline.base.errors import UsageError

TEMPLATE_KEY = "tokenizer.chat_template"

# Architectures (general.architecture) whose instruct models share one prompt format, named as
# llama-cpp-python's llama_chat_format.py registers it (@register_chat_format).
ARCH_FORMATS = {
    "llama": "llama-2",
    "gemma": "gemma",
    "gemma2": "gemma",
    "gemma3": "gemma",
    "gemma3n": "gemma",
    "qwen": "qwen",
    "qwen2": "chatml",
    "qwen2moe": "chatml",
    "qwen3": "chatml",
    "qwen3moe": "chatml",
    "chatglm": "chatglm3",
    "baichuan": "baichuan-2",
}
LLAMA3_PRE_TOKENIZER = "llama-bpe"  # tokenizer.ggml.pre of Llama 3 GGUFs (convert_hf_to_gguf.py)

# llama-cpp-python 0.3's registered formats (llama_chat_format.py), for --chat-format.
KNOWN_FORMATS = (
    "llama-2", "llama-3", "alpaca", "qwen", "vicuna", "oasst_llama", "baichuan-2", "baichuan", "openbuddy",
    "redpajama-incite", "snoozy", "phind", "intel", "open-orca", "mistrallite", "zephyr", "pygmalion", "chatml",
    "mistral-instruct", "chatglm3", "openchat", "saiga", "gemma",
)  # fmt: skip


class ExportedFormat(NamedTuple):
    """One format as other tools take it. llama_server: the built-in template name of llama.cpp's
    llama-chat.cpp LLM_CHAT_TEMPLATES (applied by the legacy path, hence --no-jinja: with Jinja, on by
    default in common/common.h, a name would be read as template text). ollama: a TEMPLATE in Ollama's Go
    template syntax (.Messages, .Role, .Content) and the PARAMETER stop strings that end a turn."""

    llama_server: str
    ollama: str
    stops: tuple[str, ...]


_CHATML = ExportedFormat(
    "chatml",
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n",
    ("<|im_start|>", "<|im_end|>"),
)
# Keyed by the llama-cpp-python names above; each text is what that format's llama_chat_format.py function writes.
EXPORTED_FORMATS: dict[str, ExportedFormat] = {
    "chatml": _CHATML,
    "qwen": _CHATML,  # llama-cpp-python's qwen is ChatML with a default system turn
    "gemma": ExportedFormat(
        "gemma",
        '{{- range .Messages }}<start_of_turn>{{ if eq .Role "assistant" }}model{{ else }}user{{ end }}\n'
        "{{ .Content }}<end_of_turn>\n{{ end }}<start_of_turn>model\n",
        ("<start_of_turn>", "<end_of_turn>"),
    ),
    "llama-3": ExportedFormat(
        "llama3",
        "{{- range .Messages }}<|start_header_id|>{{ .Role }}<|end_header_id|>\n\n{{ .Content }}<|eot_id|>{{ end }}"
        "<|start_header_id|>assistant<|end_header_id|>\n\n",
        ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"),
    ),
    "llama-2": ExportedFormat(
        "llama2",
        '{{- range .Messages }}{{ if eq .Role "system" }}<<SYS>>\n{{ .Content }}\n<</SYS>>\n\n'
        '{{ else if eq .Role "user" }}[INST] {{ .Content }} [/INST]{{ else }} {{ .Content }} </s>{{ end }}{{ end }}',
        ("[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"),
    ),
    "chatglm3": ExportedFormat(
        "chatglm3",
        "{{- range .Messages }}<|{{ .Role }}|>\n {{ .Content }}{{ end }}<|assistant|>",
        ("<|user|>", "<|observation|>", "<|system|>"),
    ),
}


def exported_format(name: str, tool: str) -> ExportedFormat:
    """How llama-server and Ollama spell chat format `name`; a UsageError where mm knows no spelling."""
    known = EXPORTED_FORMATS.get(name)
    if known is None:
        raise UsageError(
            f"chat format {name!r}: mm knows no {tool} equivalent, so the export would answer in another format",
            hint=f"choose a format that exports: {', '.join(EXPORTED_FORMATS)}",
            param="chat_format",
        )
    return known


def check_format(name: str) -> str:
    """`name` if llama-cpp-python knows the format (what `mm run` loads), or llama.cpp's spelling of one (llama3:
    llama-3), else a UsageError listing them."""
    if name in KNOWN_FORMATS:
        return name
    spelled = next((mm for mm, known in EXPORTED_FORMATS.items() if known.llama_server == name), None)
    if spelled is not None:
        return spelled
    close = difflib.get_close_matches(name, KNOWN_FORMATS, n=1, cutoff=0.6)
    raise UsageError(
        f"unknown chat format {name!r}" + (f"; did you mean {close[0]}?" if close else ""),
        hint=f"one of: {', '.join(KNOWN_FORMATS)}", param="chat_format",
    )  # fmt: skip


class ChatFormat(NamedTuple):
    name: str | None  # a llama-cpp-python chat_format; None: the GGUF's own template
    notice: str | None  # one line for the user when mm chose for them


def _arch_format(metadata: Mapping[str, object]) -> str | None:
    arch = str(metadata.get("general.architecture", ""))
    if arch == "llama" and metadata.get("tokenizer.ggml.pre") == LLAMA3_PRE_TOKENIZER:
        return "llama-3"
    return ARCH_FORMATS.get(arch)


def choose_chat_format(metadata: Mapping[str, object], requested: str | None = None) -> ChatFormat:
    """The requested format, else the GGUF's template, else the architecture's format (with a notice, also
    when the architecture's format was requested: a profile stores what publish chose for a GGUF without one)."""
    arch = str(metadata.get("general.architecture", "?"))
    templated = isinstance(metadata.get(TEMPLATE_KEY), str)
    known = None if templated else _arch_format(metadata)
    if requested is not None:
        chosen = check_format(requested)
        return ChatFormat(chosen, _notice(chosen, arch) if chosen == known else None)
    if templated:
        return ChatFormat(None, None)
    if known is None:
        raise UsageError(
            f"the model has no chat template ({TEMPLATE_KEY}) and mm knows no format for architecture {arch!r}",
            hint=f"choose a chat format ({', '.join(KNOWN_FORMATS)}), or plain completion",
            param="chat_format",
        )
    return ChatFormat(known, _notice(known, arch))


def _notice(name: str, arch: str) -> str:
    return f"no chat template in the GGUF; using the {name} format for {arch}"


def describe_chat_template(metadata: Mapping[str, object]) -> str:
    """For `mm inspect`: whether the GGUF has a template, and what `mm run` would use without one."""
    template = metadata.get(TEMPLATE_KEY)
    if isinstance(template, str):
        return f"yes ({len(template)} characters)"
    known = _arch_format(metadata)
    return f"none (mm run uses {known})" if known else "none (mm run needs a chat format named, or raw completion)"
