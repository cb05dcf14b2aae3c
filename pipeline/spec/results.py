"""What mm measures, as profiles and reports store it: llama-bench-style speed figures and
llama-perplexity-style quality figures. Shapes only; measure/ produces them, registry/ keeps them."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, Field

from pipeline.base.provenance import utc_now

# 2: `machine`, the machine a result was measured on (version 1 records read as "machine unknown")
BENCH_SCHEMA_VERSION = 2
EVAL_SCHEMA_VERSION = 2
UNKNOWN_MACHINE = "machine unknown"  # how a record from before `machine` is shown


class Machine(BaseModel):
    """The machine a measurement ran on, as what its figures depend on: CPU model and logical cores, GPU names
    and whether llama.cpp could offload to them. Never a host or user name; `id` is a digest of the rest, the
    same on every run of the same machine, so figures from two machines are never taken for one."""

    cpu: str
    cores: int
    gpus: list[str] = Field(default_factory=list)
    backend: str  # "cpu" (llama.cpp without a GPU backend, or no GPU) or "gpu"
    id: str

    @property
    def label(self) -> str:
        """A short name for tables: `AMD EPYC x2, CPU` or `Ryzen 9 5900X x24, NVIDIA GeForce RTX 3060`."""
        devices = ", ".join(self.gpus) if self.gpus and self.backend == "gpu" else "CPU"
        return f"{self.cpu} x{self.cores}, {devices} [{self.id[:8]}]"


def machine_label(machine: Machine | None) -> str:
    return machine.label if machine is not None else UNKNOWN_MACHINE


class TestFigure(BaseModel):
    """One llama-bench test (pp512 or tg128): tokens/s of each timed run, their median and spread."""

    test: str
    n_tokens: int
    samples_ts: list[float]
    median_ts: float
    mean_ts: float
    stdev_ts: float
    min_ts: float
    max_ts: float
    # tg: 1 / the median single decoded token over every timed run (the first of each run left out): the
    # machine's decode rate with other processes' interruptions left out (pipeline/measure/sampling.py)
    steady_ts: float | None = None

    @classmethod
    def of(cls, test: str, n_tokens: int, seconds: list[float], token_seconds: Sequence[float] = ()) -> TestFigure:
        ts = [n_tokens / s for s in seconds]
        steady = round(1 / statistics.median(token_seconds), 3) if token_seconds else None
        return cls(steady_ts=steady,
            test=test, n_tokens=n_tokens, samples_ts=[round(t, 3) for t in ts],
            median_ts=round(statistics.median(ts), 3), mean_ts=round(statistics.fmean(ts), 3),
            stdev_ts=round(statistics.stdev(ts), 3) if len(ts) > 1 else 0.0, min_ts=round(min(ts), 3),
            max_ts=round(max(ts), 3),
        )  # fmt: skip


class BenchResult(BaseModel):
    """What `mm bench` measured, with the settings it measured under; stored in the profile."""

    schema_version: int = BENCH_SCHEMA_VERSION
    model_path: str
    threads: int
    n_prompt: int
    n_gen: int
    repetitions: int
    settings: dict[str, Any]  # the Llama(...) keyword arguments used (model_path aside)
    pp: TestFigure | None
    tg: TestFigure | None
    predicted_tg_ts: float | None = None  # fit's prediction for this machine and these settings
    predicted_pp_ts: float | None = None  # ... and of pp512, where fit predicts it (a class with catalog GPUs)
    predicted_tg_spread: float | None = None  # its ± from the spreads of the measured rates
    hardware: str | None = None  # the class of this machine the prediction used (never another machine's)
    llama_cpp: str  # the llama.cpp that ran it (llama.tools.llama_cpp_version)
    machine: Machine | None = None  # where it ran (None: a record from before mm kept it)
    measured_at: str = Field(default_factory=utc_now)
    seconds: float = 0.0

    @property
    def prediction_error(self) -> float | None:
        """(predicted - measured) / measured for decode, when both are known. The prediction is the machine's
        rate, so it is held to the steady figure (other processes' interruptions left out) where there is one."""
        measured = self.tg and (self.tg.steady_ts or self.tg.median_ts)
        if self.predicted_tg_ts is None or not measured:
            return None
        return (self.predicted_tg_ts - measured) / measured


class EvalResult(BaseModel):
    """One quant measured against its reference on one text (the figures llama-perplexity prints)."""

    schema_version: int = EVAL_SCHEMA_VERSION
    model_path: str
    ref_path: str
    ref_sha256: str | None = None
    text: str  # where the text came from (path, or repo:file@commit)
    text_sha256: str
    n_ctx: int
    chunks: int
    tokens_scored: int
    ppl: float  # the quant's perplexity (llama-perplexity --kl-divergence: "Mean PPL(Q)")
    ppl_ref: float  # the reference's (llama-perplexity's "Final estimate" of the base run)
    ln_ppl_ratio: float  # mean ln(PPL(Q)/PPL(base)), with the base log-probs as stored
    kld_mean: float  # "Mean KLD"
    kld_stdev: float  # its uncertainty, as llama.cpp computes it
    same_top_rate: float  # "Same top p", as a fraction
    seconds: float
    machine: Machine | None = None  # where it ran (None: a record from before mm kept it)
    measured_at: str = Field(default_factory=utc_now)

    @property
    def ppl_delta(self) -> float:
        return self.ppl - self.ppl_ref
