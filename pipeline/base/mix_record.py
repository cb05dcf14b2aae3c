"""What a budget quant's search chose and measured: the record that travels with the file.

`mm quantize --budget` writes it into the output's sidecar (QuantRecord.mix), `mm publish` copies it into the
profile's provenance, and `mm ls`, `mm show` and the pushed model card render it: a mix is only worth its
figures, so the figures go wherever the file goes.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from pipeline.base.units import format_size


class JudgedQuant(BaseModel):
    """One quant judged on the evaluation text against the unquantized source (llama-perplexity's way)."""

    model_config = ConfigDict(extra="forbid")

    name: str  # "mix" or a uniform preset's type
    size_bytes: int
    bits_per_weight: float
    kld_mean: float
    kld_stdev: float
    ppl: float
    ppl_delta: float


class MixRecord(BaseModel):
    """The mix (group -> ggml type), the budget it was chosen for, and how it measured beside the uniform presets
    nearest in size, on an evaluation text the search never used."""

    model_config = ConfigDict(extra="forbid")

    budget_bytes: int  # the size the mix was chosen within (`--budget fit`: the largest that `mm fit` places)
    target: str | None = None  # the hardware class of `--budget fit`
    mix: dict[str, str]  # group (or "group:first-last" layer band) -> ggml type
    measured: JudgedQuant  # the mix
    presets: list[JudgedQuant]  # the uniform presets nearest in size, measured the same way
    calibration_text: str  # where the sensitivities were measured
    calibration_sha256: str
    evaluation_text: str  # where the figures above were measured
    evaluation_sha256: str
    n_ctx: int
    evaluation_chunks: int | None
    evals: int  # quantize+score runs the search and the judging took
    seconds: float

    def label(self) -> str:
        """A short name for tables: `mix@11G` (a size budget) or `mix@fit` (a hardware one)."""
        if self.target is not None:
            return "mix@fit"
        return "mix@" + format_size(self.budget_bytes).replace(" ", "").replace("iB", "")
