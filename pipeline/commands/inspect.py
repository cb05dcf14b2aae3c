"""`mm inspect`: what a model is — architecture, shape, size, tensor types and chat template — from its header.

Its own module because it is the command people run most and expect at once: loading it builds no other
command and imports no run-settings, device or Hub code for a local file.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import typer

from pipeline.base.units import format_size
from pipeline.commands.options import JsonOpt, ModelArg, OfflineOpt, RecipesDirOpt, TokenOpt
from pipeline.commands.registration import add_command
from pipeline.commands.render import emit_json, note, table

if TYPE_CHECKING:  # imported when the command runs, so `mm` starts fast
    from pipeline.fitting.model_info import ModelSummary


def note_stub(model: str, is_stub: bool) -> None:
    """Say when a Hub file was read from its header alone, so nobody thinks it was pulled."""
    if is_stub:
        note(f"{model}: not pulled; answered from its GGUF header (fetched with Range requests)")


def inspect_command(
    model: ModelArg,
    as_json: JsonOpt = False,
    recipes: RecipesDirOpt = None,
    token: TokenOpt = None,
    offline: OfflineOpt = False,
) -> None:
    """Architecture, size, shape and chat template of a GGUF, read from its header alone (fast on any size).

    A Hub file that is not pulled is inspected from its header, fetched with HTTP Range requests.

    Example: mm inspect TheBloke/Llama-2-70B-chat-GGUF:llama-2-70b-chat.Q4_K_M.gguf
    """
    from pipeline.fitting.model_info import summarize_model
    from pipeline.resolve.model_ref import resolve_model

    resolved = resolve_model(model, recipes, token=token, offline=offline, allow_header_stub=True)
    note_stub(model, resolved.is_stub)
    summary = summarize_model(resolved.path)
    emit_json(summary) if as_json else _show_summary(summary)


def _show_summary(s: ModelSummary) -> None:
    swa = f"{s.sliding_window} tokens on {s.swa_layers}/{s.n_layers} layers" if s.sliding_window else "none"
    rows = [
        ("architecture", s.architecture), ("name", s.name), ("parameters", f"{s.n_params / 1e9:.3g} B"),
        ("layers", s.n_layers), ("context length", s.context_length), ("embedding", s.n_embd),
        ("heads / kv heads", f"{s.n_head} / {s.n_head_kv} (head dim {s.head_dim})"), ("ffn", s.n_ff),
        ("vocabulary", s.n_vocab), ("sliding window", swa), ("file type", s.file_type),
        ("tensor types", ", ".join(f"{k} x{v}" for k, v in s.tensor_types.items())),
        ("chat template", s.chat_template),
        ("size", f"{format_size(s.size_bytes)} in {s.shards} file(s)"),
        ("bits per weight", f"{s.bits_per_weight:.2f}"),
    ]  # fmt: skip
    if s.n_expert:
        rows[5:5] = [
            ("experts", f"{s.n_expert}, {s.n_expert_used} used per token"
                        + (f", {s.n_expert_shared} shared" if s.n_expert_shared else "")),
            ("expert ffn", s.n_ff_exp), ("dense ffn layers", s.n_dense_layers),
            ("active parameters", f"{s.active_params / 1e9:.3g} B per token of {s.n_params / 1e9:.3g} B"),
        ]  # fmt: skip
    table(("field", "value"), rows)


def register(app: typer.Typer) -> None:
    add_command(app, "inspect", inspect_command)
