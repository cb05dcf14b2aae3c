"""Option types shared by every command, so each flag is spelled and explained the same way everywhere.

Where llama.cpp, Ollama or `hf` has a well-known spelling, it is an alias here (`-c`, `-ngl`, `-ctk/-ctv`,
`-t`, `-b`, `-ub`, `-np`), and the values they take are parsed at this edge (`-ngl auto|all|-1`).
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast, get_args, get_type_hints

import typer

from pipeline.base.errors import UsageError
from pipeline.base.units import parse_size

if TYPE_CHECKING:
    from pipeline.spec.devices import DeviceLayout
    from pipeline.spec.run_settings import KvType, RunSettings

JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON result on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
RevisionOpt = Annotated[
    str | None,
    typer.Option("--revision", "-r", metavar="REV", help="Branch, tag or 40-hex commit on the Hub (default: main)."),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        metavar="TOKEN",
        help=(
            "Hugging Face token for gated or private repos (default: HF_TOKEN or the saved login). "
            "Never printed or stored."
        ),
        show_default=False,
    ),
]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Use only the local cache (as HF_HUB_OFFLINE=1).")]
RecipesDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--recipes",
        metavar="DIR",
        exists=True,
        file_okay=False,
        help="Recipes folder (default: MM_RECIPES or ./recipes).",
    ),
]
HardwareOpt = Annotated[
    str | None,
    typer.Option(
        "--hardware", "-H", metavar="CLASS", help="Hardware class to plan for, e.g. rtx3060-12g (`mm hw` lists them)."
    ),
]


def _model_from_url(value: str | None) -> str | None:
    """A Hub URL pasted from the browser becomes owner/name:FILE[@revision]."""
    from pipeline.resolve.hub_ref import model_text_from_url

    return None if value is None else model_text_from_url(value)


ModelArg = Annotated[
    str,
    typer.Argument(
        metavar="MODEL",
        callback=_model_from_url,
        help="A .gguf path, a Hub file owner/name:FILE.gguf[@revision] (or its URL), or a recipe name.",
        show_default=False,
    ),
]
NameArg = Annotated[str, typer.Argument(metavar="NAME", help="Profile name (`mm ls` lists them).")]

# Run settings, spelled as mm and as llama.cpp's common/arg.cpp spell them.
VramOpt = Annotated[
    str | None, typer.Option(metavar="SIZE", help="GPU memory, e.g. 12G (a bare number is GiB); 0 = CPU only.")
]
RamOpt = Annotated[str | None, typer.Option(metavar="SIZE", help="System RAM, e.g. 64G (a bare number is GiB).")]
CtxOpt = Annotated[
    int | None, typer.Option("--ctx", "-c", "--ctx-size", metavar="N", min=16, help="Context length (tokens).")
]
KvTypeOpt = Annotated[
    list[str],
    typer.Option(
        "--kv-type",
        "-ctk",
        "-ctv",
        "--cache-type-k",
        "--cache-type-v",
        metavar="TYPE",
        help="KV cache type: f16, q8_0 or q4_0 (one type for K and V).",
        show_default=False,
    ),
]
FlashAttnOpt = Annotated[
    bool | None,
    typer.Option(
        "--flash-attn/--no-flash-attn", help="Flash attention (also llama.cpp's -fa on|off|auto).", show_default=False
    ),
]
GpuLayersOpt = Annotated[
    str | None,
    typer.Option(
        "--n-gpu-layers",
        "-ngl",
        "--gpu-layers",
        metavar="N|auto|all",
        help="Layers on the GPU: a number, all, or auto/-1 = as many as fit (the default).",
    ),
]
ThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", "-t", metavar="N", min=1, help="CPU threads (default: physical cores, as llama-bench)."),
]
BatchOpt = Annotated[
    int | None, typer.Option("--batch", "-b", "--batch-size", metavar="N", min=1, help="Logical batch (n_batch).")
]
UbatchOpt = Annotated[
    int | None,
    typer.Option("--ubatch", "-ub", "--ubatch-size", metavar="N", min=1, help="Physical batch (n_ubatch)."),
]
ParallelOpt = Annotated[
    int | None,
    typer.Option("--parallel", "-np", metavar="N", min=1, help="Parallel sequences (n_seq_max)."),
]

NCpuMoeOpt = Annotated[
    int | None,
    typer.Option(
        metavar="N", help="MoE: keep the routed experts of the first N layers in RAM (llama.cpp --n-cpu-moe).", min=0
    ),
]
CpuMoeOpt = Annotated[bool, typer.Option("--cpu-moe", help="MoE: keep every layer's routed experts in RAM.")]

ALL_LAYERS = 999  # llama.cpp's habit for "all of them" (-ngl 999); fit caps it at n_layers + 1


def parse_gpu_layers(text: str | None) -> int | None:
    """`-ngl` as llama.cpp reads it: a count, `all`, or `auto`/-1 (None: as many as fit)."""
    if text is None or text.strip().lower() in ("auto", "-1"):
        return None
    if text.strip().lower() == "all":
        return ALL_LAYERS
    try:
        value = int(text)
    except ValueError:
        value = -2
    if value < 0:
        raise UsageError(f"--n-gpu-layers: {text!r} is not a layer count; expected a number >= 0, all, or auto/-1")
    return value


def parse_kv_type(values: list[str]) -> KvType | None:
    """One KV cache type from --kv-type / -ctk / -ctv (mm, like Ollama, uses one type for K and V)."""
    from pipeline.spec.run_settings import KvType

    allowed: tuple[str, ...] = get_args(KvType)
    chosen = {v.strip().lower() for v in values}
    for value in chosen:
        if value not in allowed:
            close = difflib.get_close_matches(value, allowed, n=1, cutoff=0.5)
            raise UsageError(
                f"--kv-type: {value!r} is not a KV cache type; expected one of {', '.join(allowed)}",
                hint=f"did you mean {close[0]}?" if close else None,
            )
    if len(chosen) > 1:
        raise UsageError(f"-ctk/-ctv: {' and '.join(sorted(chosen))} differ; mm uses one type for K and V")
    return cast(KvType, chosen.pop()) if chosen else None  # checked against KvType above


ChatFormatOpt = Annotated[
    str | None,
    typer.Option(
        "--chat-format",
        "--chat-template",
        metavar="FORMAT",
        help="The chat format (chatml, llama-3, gemma, ...) instead of the GGUF's own template or, without one, "
        "its architecture's; `mm run` and every export use the same one.",
    ),
]


# Several devices, spelled as llama.cpp's common/arg.cpp spells them.
RpcOpt = Annotated[
    str | None,
    typer.Option(
        "--rpc", metavar="HOST:PORT,...", help="RPC workers (`mm rpc serve` on each host), asked for their devices."
    ),
]
TensorSplitOpt = Annotated[
    str | None,
    typer.Option(
        "--tensor-split",
        "-ts",
        metavar="N0,N1,...",
        help="Share of the layers per device, in llama.cpp's device order (RPC workers first), e.g. 3,1. "
        "Default: proportional to each device's free memory.",
    ),
]
SplitModeOpt = Annotated[
    str | None,
    typer.Option("--split-mode", "-sm", metavar="layer|row|none", help="How to split across devices (default layer)."),
]
MainGpuOpt = Annotated[
    int | None,
    typer.Option("--main-gpu", "-mg", metavar="I", min=0, help="The device used with --split-mode none."),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option("--device", "-dev", metavar="DEV,...", help="Use only these devices (names as `mm rpc ls` shows)."),
]


# Every run-setting flag: the parameter typer hands over -> (its option type, its default). Declared once here;
# `fit`, `publish`, `bench` and `run` take them all through run_options.
_RUN_OPTIONS: dict[str, tuple[Any, Any]] = {
    "ctx": (CtxOpt, None),
    "kv_type": (KvTypeOpt, []),
    "flash_attn": (FlashAttnOpt, None),
    "batch": (BatchOpt, None),
    "ubatch": (UbatchOpt, None),
    "parallel": (ParallelOpt, None),
    "n_gpu_layers": (GpuLayersOpt, None),
    "threads": (ThreadsOpt, None),
    "n_cpu_moe": (NCpuMoeOpt, None),
    "cpu_moe": (CpuMoeOpt, False),
    "rpc": (RpcOpt, None),
    "tensor_split": (TensorSplitOpt, None),
    "split_mode": (SplitModeOpt, None),
    "main_gpu": (MainGpuOpt, None),
    "device": (DeviceOpt, None),
}


@dataclass(frozen=True)
class RunFlags:
    """The run-setting flags a user gave, by RunSettings field (only those given; the device flags as one
    `devices` layout)."""

    given: dict[str, Any]

    @property
    def n_gpu_layers(self) -> int | None:
        return cast("int | None", self.given.get("n_gpu_layers"))

    def on(self, base: RunSettings | None) -> RunSettings:
        """`base` (a recipe's [run] or a profile's settings; None: the defaults) with these flags on top,
        checked as a whole: one UsageError naming the setting at fault."""
        from pipeline.spec.run_settings import RunSettings

        return (base or RunSettings()).with_flags(**self.given)


def _run_flags(ctx: int | None, kv_type: list[str], flash_attn: bool | None, batch: int | None, ubatch: int | None,
               parallel: int | None, n_gpu_layers: str | None, threads: int | None, n_cpu_moe: int | None,
               cpu_moe: bool, rpc: str | None, tensor_split: str | None, split_mode: str | None,
               main_gpu: int | None, device: str | None) -> RunFlags:  # fmt: skip
    values = {
        "n_ctx": ctx, "kv_type": parse_kv_type(kv_type), "flash_attn": flash_attn, "n_batch": batch,
        "n_ubatch": ubatch, "parallel": parallel, "n_gpu_layers": parse_gpu_layers(n_gpu_layers), "n_threads": threads,
        "n_cpu_moe": n_cpu_moe, "cpu_moe": cpu_moe or None,
        "devices": device_layout(rpc, tensor_split, split_mode, main_gpu, device),
    }  # fmt: skip
    return RunFlags({key: value for key, value in values.items() if value is not None})


def run_options(command: Callable[..., None]) -> Callable[..., None]:
    """`command` with every run-setting flag added to its options, handed to it as one `run: RunFlags`."""
    signature = inspect.signature(command, eval_str=True)
    params = [p for p in signature.parameters.values() if p.name != "run"]
    at = next((i for i, p in enumerate(params) if p.default is not inspect.Parameter.empty), len(params))
    added = [
        inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=annotation)
        for name, (annotation, default) in _RUN_OPTIONS.items()
    ]

    @functools.wraps(command)
    def with_flags(**kwargs: Any) -> None:
        flags = _run_flags(**{name: kwargs.pop(name) for name in _RUN_OPTIONS})
        command(**kwargs, run=flags)

    hints = {k: v for k, v in get_type_hints(command, include_extras=True).items() if k != "run"}
    with_flags.__annotations__ = {**hints, **{name: annotation for name, (annotation, _) in _RUN_OPTIONS.items()}}
    with_flags.__signature__ = signature.replace(parameters=[*params[:at], *added, *params[at:]])  # type: ignore[attr-defined]
    return with_flags


def parse_memory(text: str | None, flag: str) -> int | None:
    """--vram/--ram: sizes as in hardware.toml; a bare number means GiB (64 is 64 GiB, not 64 bytes)."""
    return None if text is None else parse_size(text, what=flag, bare_unit="G")


def writable_target(path: Path | None, flag: str) -> None:
    """A file mm will write at the end of long work: its folder must exist now, not after the work."""
    if path is not None and not path.expanduser().absolute().parent.is_dir():
        raise UsageError(f"{flag} {path}: folder {path.expanduser().absolute().parent} does not exist")


def device_layout(
    rpc: str | None, tensor_split: str | None, split_mode: str | None, main_gpu: int | None, device: str | None
) -> DeviceLayout | None:
    """llama.cpp's device flags as one layout (None when none was given: one GPU and the CPU, as before)."""
    if rpc is None and tensor_split is None and split_mode is None and main_gpu is None and device is None:
        return None
    from pipeline.llama.rpc import parse_endpoints
    from pipeline.spec.devices import DeviceLayout

    mode = (split_mode or "layer").strip().lower()
    if mode not in ("layer", "row", "none"):
        raise UsageError(f"--split-mode {split_mode!r}: expected layer, row or none", param="split_mode")
    return DeviceLayout(
        rpc=parse_endpoints(rpc) if rpc else [],
        tensor_split=parse_tensor_split(tensor_split),
        split_mode=mode,  # type: ignore[arg-type]  # checked above
        main_gpu=main_gpu or 0,
        devices=parse_device_names(device),
    )


def parse_device_names(text: str | None) -> list[str] | None:
    """`--device A,B`: device names as llama.cpp (or `mm rpc ls`) shows them."""
    from pipeline.spec.devices import device_name_problem

    if text is None:
        return None
    names = [d.strip() for d in text.split(",") if d.strip()]
    problems = [p for p in map(device_name_problem, names) if p] or ([] if names else ["no device named"])
    if problems:
        raise UsageError(f"--device {text!r}: {problems[0]}", param="device")
    return names


def parse_tensor_split(text: str | None) -> list[float] | None:
    """`-ts 3,1` (llama.cpp also takes `3/1`): one non-negative share per device."""
    if text is None:
        return None
    try:
        shares = [float(part) for part in text.replace("/", ",").split(",") if part.strip()]
    except ValueError:
        shares = []
    if not shares or any(s < 0 for s in shares) or not any(shares):
        raise UsageError(f"--tensor-split {text!r}: expected shares such as 1,1 or 3,1", param="tensor_split")
    return shares
