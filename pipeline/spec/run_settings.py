"""Run settings: what llama.cpp is given to load and run a model, one model with llama.cpp's names.

Recipes (`[run]`), `mm fit`, profiles, exports and `mm run` read and write this one shape, and every rule
that ties two settings together, or a setting to the model, is here: a quantized V cache and flash
attention, n_ubatch and n_batch, the context and the model's trained context, --n-cpu-moe and the layer
count, and the only tensor overrides mm writes (so a profile from elsewhere cannot hand llama.cpp a
regular expression of its choice). Older spellings (a recipe's `ctx`, `batch`, `ubatch`, `threads`; an
older profile's `type_k`/`type_v` ids) are read and checked, never written.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationError,
    computed_field,
    field_validator,
    model_validator,
)
from pydantic_core import ErrorDetails

from pipeline.base.errors import MMError, UsageError
from pipeline.gguf.chat_format import check_format
from pipeline.gguf.header import EXPERTS_RE
from pipeline.spec.devices import DeviceLayout

KvType = Literal["f16", "q8_0", "q4_0"]
# ggml.h enum ggml_type: the ids llama_context_params.type_k/type_v take for the KV types mm plans with.
KV_TYPE_IDS: dict[str, int] = {"f16": 1, "q4_0": 2, "q8_0": 8}
MAX_TOKENS = 1 << 24  # context and batch sizes: far above any trained context, far below an overflow
MAX_THREADS = 512  # ggml.h GGML_MAX_N_THREADS
MAX_SEQ = 256  # llama-cparams.h LLAMA_MAX_SEQ
MAX_LAYERS = 1 << 16  # -ngl 999 ("all") must pass; fit caps it at n_layers + 1
MAX_OVERRIDES = 4096  # one -ot string per layer at most

# The only -ot strings mm writes (expert_overrides): `EXPERTS=CPU` or `blk\.N` + `EXPERTS=CPU`. They are
# matched as text, never compiled, so a stored profile cannot bring its own (possibly catastrophic) regex.
_OVERRIDE_RE = re.compile(
    r"(?:" + re.escape("blk\\.") + r"(0|[1-9][0-9]{0,4}))?" + re.escape(EXPERTS_RE.pattern + "=CPU")
)
_OVERRIDE_MAX_CHARS = 64


def expert_overrides(n_cpu_moe: int, n_layers: int) -> list[str]:
    """The `-ot` strings equal to `--n-cpu-moe n_cpu_moe`: one per layer, or one for every layer (--cpu-moe)."""
    if n_cpu_moe <= 0:
        return []
    if n_cpu_moe >= n_layers:
        return [f"{EXPERTS_RE.pattern}=CPU"]  # common.h llm_ffn_exps_cpu_override: what --cpu-moe adds
    return [rf"blk\.{i}{EXPERTS_RE.pattern}=CPU" for i in range(n_cpu_moe)]


def override_layer(text: str) -> int | None:
    """The layer an -ot string of mm's form names (None: every layer); ValueError for any other string."""
    match = _OVERRIDE_RE.fullmatch(text) if len(text) <= _OVERRIDE_MAX_CHARS else None
    if match is None:
        raise ValueError(
            f"{text[:_OVERRIDE_MAX_CHARS]!r} is not a tensor override mm writes "
            f"(expected {EXPERTS_RE.pattern}=CPU, optionally after blk\\.N)"
        )
    return None if match.group(1) is None else int(match.group(1))


def _count(default: int | None, low: int, high: int, *names: str) -> Any:
    aliases = AliasChoices(*names) if len(names) > 1 else None
    return Field(default=default, ge=low, le=high, validation_alias=aliases)


class RunSettings(BaseModel):
    """llama.cpp's context and model parameters for one model (llama_context_params, llama_model_params,
    common/arg.cpp where llama.cpp has no struct field). mm uses one type for K and V, as Ollama does."""

    model_config = ConfigDict(extra="forbid")

    n_ctx: StrictInt = _count(4096, 16, MAX_TOKENS, "n_ctx", "ctx")
    n_batch: StrictInt = _count(2048, 1, MAX_TOKENS, "n_batch", "batch")  # more than n_ctx is never used
    n_ubatch: StrictInt = _count(512, 1, MAX_TOKENS, "n_ubatch", "ubatch")
    kv_type: KvType = "f16"
    flash_attn: StrictBool = False  # turned on for a quantized KV cache unless asked off (see _rules)
    parallel: StrictInt = _count(1, 1, MAX_SEQ)  # n_seq_max
    n_threads: StrictInt | None = _count(None, 1, MAX_THREADS, "n_threads", "threads")  # None: the physical cores
    use_mmap: StrictBool = Field(default=True, validation_alias=AliasChoices("use_mmap", "mmap"))
    n_gpu_layers: StrictInt | None = _count(None, 0, MAX_LAYERS)  # None: as many as fit
    # Mixture of experts: keep the routed experts of the first n_cpu_moe layers in RAM (llama.cpp
    # --n-cpu-moe; None: fit chooses for speed), or every layer's (cpu_moe = true, --cpu-moe).
    n_cpu_moe: StrictInt | None = _count(None, 0, MAX_LAYERS)
    cpu_moe: StrictBool = False
    # The same expert placement as -ot strings (expert_overrides), which `mm run` hands to llama.cpp.
    tensor_overrides: list[str] = Field(default_factory=list, max_length=MAX_OVERRIDES)
    swa_full: StrictBool = True  # llama.cpp's default: the SWA cache as large as the full one
    kv_unified: StrictBool = False  # llama.cpp's default: one KV stream per sequence (llama-server turns it on)
    # Several devices (--rpc workers, -ts split; spec/devices.py). A profile across RPC workers runs through
    # llama-server (registry/run_server.py); None: one GPU and the CPU.
    devices: DeviceLayout | None = None
    # The chat format `mm run` talks in and exports name (a llama-cpp-python name, gguf/chat_format.py); None:
    # the GGUF's own template. Publish stores the architecture's format for a GGUF without a template.
    chat_format: str | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def type_k(self) -> int:
        """llama_context_params.type_k: the ggml type id of the K cache."""
        return KV_TYPE_IDS[self.kv_type]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def type_v(self) -> int:
        return KV_TYPE_IDS[self.kv_type]

    @model_validator(mode="before")
    @classmethod
    def _cache_type_ids(cls, data: Any) -> Any:
        """type_k/type_v as llama.cpp's ids (what mm wrote beside kv_type): checked, then dropped."""
        if not isinstance(data, dict) or not ({"type_k", "type_v"} & data.keys()):
            return data
        data = dict(data)
        names = {ident: name for name, ident in KV_TYPE_IDS.items()}
        for key in ("type_k", "type_v"):
            if key not in data:
                continue
            value = data.pop(key)
            if type(value) is not int or value not in names:
                raise ValueError(
                    f"{key}: {repr(value)[:40]} is not a KV cache type id; expected "
                    + ", ".join(f"{i} ({n})" for i, n in names.items())
                )
            if names[value] != data.setdefault("kv_type", names[value]):
                raise ValueError(f"{key}: {value} ({names[value]}) differs from kv_type {data['kv_type']!r}")
        return data

    @model_validator(mode="after")
    def _rules(self) -> RunSettings:
        # llama-context.cpp refuses a quantized V cache without flash attention, and its default (auto) mode
        # turns flash attention on for it: mm does the same, and refuses only when it was asked off.
        if self.kv_type != "f16" and not self.flash_attn:
            if "flash_attn" in self.model_fields_set:
                raise ValueError(
                    f"kv_type: a {self.kv_type} KV cache needs flash attention (llama.cpp refuses a quantized V "
                    "cache without it); turn flash attention on, or use an f16 KV cache"
                )
            self.__dict__["flash_attn"] = True  # as llama.cpp's auto: not a choice the user made
        # llama-context.cpp: cparams.n_ubatch = min(n_batch, n_ubatch)
        self.__dict__["n_ubatch"] = min(self.n_ubatch, self.n_batch)
        return self

    @field_validator("chat_format")
    @classmethod
    def _chat_format(cls, value: str | None) -> str | None:
        return None if value is None else check_format(value)

    @field_validator("tensor_overrides")
    @classmethod
    def _overrides(cls, values: list[str]) -> list[str]:
        for text in values:
            override_layer(text)
        return values

    def placed(
        self, n_gpu_layers: int, n_cpu_moe: int, tensor_overrides: list[str], n_threads: int | None
    ) -> RunSettings:
        """These settings with the placement fit chose and the threads to run on (what a profile keeps)."""
        update = {"n_gpu_layers": n_gpu_layers, "n_cpu_moe": n_cpu_moe, "tensor_overrides": tensor_overrides}
        return self.model_copy(update={**update, "n_threads": n_threads if n_threads is not None else self.n_threads})

    def unplaced(self) -> RunSettings:
        """These settings with the placement left to fit (a profile's, fitted again for other hardware)."""
        placement: dict[str, Any] = {"n_gpu_layers": None, "n_cpu_moe": None, "cpu_moe": False, "tensor_overrides": []}
        return self.model_copy(update=placement)

    def with_flags(self, **flags: Any) -> RunSettings:
        """These settings with the flags a user gave on top (None: not given), checked as a whole."""
        given = {key: value for key, value in flags.items() if value is not None}
        return run_settings({**self.model_dump(exclude_unset=True, exclude={"type_k", "type_v"}), **given})


def run_settings(document: dict[str, Any], *, where: str = "", error: type[MMError] | None = None) -> RunSettings:
    """RunSettings from a document, or one `error` (default UsageError) naming the first field at fault."""
    try:
        return RunSettings.model_validate(document)
    except ValidationError as exc:
        field, message = describe_error(exc.errors()[0])
        raise (error or UsageError)(f"{where}{field}: {message}", param=field) from None


def describe_error(error: ErrorDetails) -> tuple[str, str]:
    """(field, problem) of one pydantic error: its location, and within it the field a rule names first
    (a model-level rule's message starts "kv_type: ..."), so that the message names a field."""
    where, message = [str(p) for p in error["loc"]], error["msg"].removeprefix("Value error, ")
    head, _, rest = message.partition(": ")
    if rest and (head in RunSettings.model_fields or head in ("type_k", "type_v")):
        where, message = [*where, head], rest
    return ".".join(where) or "(document)", message


def beyond_training(settings: RunSettings, n_ctx_train: int | None) -> str | None:
    """Why the context is beyond the model's trained context (None when it is not, or unknown)."""
    if not n_ctx_train or settings.n_ctx <= n_ctx_train:
        return None
    return (
        f"a context of {settings.n_ctx} tokens is beyond the {n_ctx_train} the model was trained for: answers "
        "past that degrade unless RoPE scaling is configured"
    )


def model_problems(settings: RunSettings, *, n_layers: int, n_ctx_train: int | None) -> list[tuple[str, str]]:
    """(field, problem) for each setting the model itself rules out: a context past its training, experts
    of layers it does not have, an override naming a layer it does not have."""
    problems: list[tuple[str, str]] = []
    if (why := beyond_training(settings, n_ctx_train)) is not None:
        problems.append(("n_ctx", why))
    if settings.n_cpu_moe is not None and settings.n_cpu_moe > n_layers:
        problems.append(("n_cpu_moe", f"{settings.n_cpu_moe} is more than the model's {n_layers} layers"))
    for text in settings.tensor_overrides:
        layer = override_layer(text)
        if layer is not None and layer >= n_layers:
            problems.append(("tensor_overrides", f"{text!r} names layer {layer}; the model has {n_layers}"))
            break
    return problems


def check_for_model(
    settings: RunSettings, *, n_layers: int, n_ctx_train: int | None, where: str = "", error: type[MMError],
    hint: str | None = None, context_warns: bool = False,
) -> RunSettings:  # fmt: skip
    """`settings` if the model allows them, else one `error` naming the first field at fault (with
    `context_warns`, a context past the training is left to the caller to warn about: fit explores)."""
    problems = model_problems(settings, n_layers=n_layers, n_ctx_train=None if context_warns else n_ctx_train)
    for field, problem in problems[:1]:
        raise error(f"{where}{field}: {problem}", param=field, hint=hint)
    return settings
