"""Option types shared by every command, so each flag is spelled and explained the same way everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON result on stdout.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
RevisionOpt = Annotated[
    str | None,
    typer.Option("--revision", "-r", help="Branch, tag or 40-hex commit on the Hub (default: main)."),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token",
        help=(
            "Hugging Face token for gated or private repos (default: HF_TOKEN or the saved login). "
            "Never printed or stored."
        ),
        show_default=False,
    ),
]
OfflineOpt = Annotated[bool, typer.Option("--offline", help="Use only the local cache (as HF_HUB_OFFLINE=1).")]
RecipesDirOpt = Annotated[
    Path | None, typer.Option("--recipes", help="Recipes folder (default: MM_RECIPES or ./recipes).")
]
HardwareOpt = Annotated[
    str | None,
    typer.Option("--hardware", "-H", help="Hardware class to plan for, e.g. rtx3060-12g (`mm hw` lists them)."),
]
NCpuMoeOpt = Annotated[
    int | None,
    typer.Option(help="MoE: keep the routed experts of the first N layers in RAM (llama.cpp --n-cpu-moe).", min=0),
]
CpuMoeOpt = Annotated[bool, typer.Option("--cpu-moe", help="MoE: keep every layer's routed experts in RAM.")]
