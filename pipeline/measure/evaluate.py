"""`mm eval`: a quant's quality against its source on a text — perplexity of both, mean KL-divergence,
same-top-token rate — computed as llama.cpp's `llama-perplexity --kl-divergence` computes them.

tools/perplexity/perplexity.cpp, mirrored step by step: the text is tokenized once with the reference
model (BOS added when the vocabulary adds one), cut into chunks of n_ctx tokens; each chunk is decoded
from an empty cache with its first token replaced by BOS, and only the second half of each chunk is
scored (`first = n_ctx/2`: the model always has context). The reference's log-probabilities are stored as
llama.cpp stores them in its base-logits file (uint16 over the top 16 nats, plus scale and minimum per
token), and the quant's distribution is compared against those: KLD sums p_base * (log p_base - log p_q)
over tokens with log p_base > -16. Runs in-process with llama-cpp-python; the reference is unloaded
before the quant loads, so only one model is in memory at a time.
"""

from __future__ import annotations

import ctypes
import logging
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.base.errors import LlamaError, UsageError
from pipeline.llama.llama_log import llama_log_file
from pipeline.llama.overrides import load_llama
from pipeline.probe.local_machine import this_machine
from pipeline.resolve.texts import read_text, text_budget
from pipeline.spec.results import EvalResult

log = logging.getLogger(__name__)

EvalProgress = Callable[[str, int, int], None]  # (phase "ref" | "quant", chunk done, chunks)
LOG_PROB_FLOOR = 16.0  # perplexity.cpp: min_logit = max(min_logit, max_logit - 16); terms below -16 skipped


class _Model:
    """A model loaded for scoring: decodes a chunk and returns the logits of its scored half."""

    def __init__(self, path: Path, n_ctx: int, threads: int | None) -> None:
        self.llm = load_llama(
            {"model_path": str(path), "n_ctx": n_ctx, "n_batch": n_ctx, "n_threads": threads, "n_gpu_layers": 0}
        )
        self.n_vocab = self.llm.n_vocab()
        self.add_bos = bool(self.llm._model.add_bos_token())
        self.bos = self.llm.token_bos()

    def logits(self, chunk: list[int], first: int) -> np.ndarray:
        import llama_cpp

        ctx = self.llm._ctx.ctx
        n = len(chunk)
        batch = llama_cpp.llama_batch_init(n, 0, 1)
        try:
            for i, token in enumerate(chunk):
                batch.token[i] = self.bos if (i == 0 and self.add_bos) else token
                batch.pos[i] = i
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = i >= first
            batch.n_tokens = n
            llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
            if llama_cpp.llama_decode(ctx, batch) != 0:
                raise LlamaError("llama.cpp failed to decode a chunk of the text")
            pointer = llama_cpp.llama_get_logits(ctx)
            rows = n - first
            floats = ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float))
            values: np.ndarray = np.ctypeslib.as_array(floats, shape=(rows, self.n_vocab)).copy()
            return values
        finally:
            llama_cpp.llama_batch_free(batch)

    def close(self) -> None:
        self.llm.close()


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    top = logits.max(axis=1, keepdims=True)
    sums = np.exp((logits - top).astype(np.float32)).sum(axis=1, dtype=np.float64, keepdims=True)
    result: np.ndarray = (logits - top - np.log(sums)).astype(np.float64)
    return result


def compress_log_probs(logits: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """perplexity.cpp's log_softmax(.., uint16_t * log_prob, ..): (uint16 codes, scale, min log-prob) per row."""
    top = logits.max(axis=1)
    low = np.maximum(logits.min(axis=1), top - LOG_PROB_FLOOR)
    log_sum = np.log(np.exp((logits - top[:, None]).astype(np.float32)).sum(axis=1, dtype=np.float64))
    scale = ((top - low) / 65535.0).astype(np.float32)
    min_log_prob = (low - top - log_sum).astype(np.float32)
    inv = np.where(scale > 0, 1.0 / np.where(scale > 0, scale, 1), 0).astype(np.float32)
    codes = np.where(logits > low[:, None], np.rint(inv[:, None] * (logits - low[:, None])), 0)
    return codes.astype(np.uint16), scale, min_log_prob


class Reference:
    """The reference's log-probabilities over a text, scored once and compared against any number of quants
    (llama-perplexity's base-logits file, held in a temporary spill file)."""

    def __init__(
        self, ref: Path, text_path: Path, *, text: str, n_ctx: int = 512, chunks: int | None = None,
        threads: int | None = None, progress: EvalProgress | None = None,
    ) -> None:  # fmt: skip
        if n_ctx < 16 or n_ctx % 2:
            raise UsageError(f"context {n_ctx}: expected an even number of tokens, at least 16", param="n_ctx")
        if chunks is not None and chunks < 1:
            raise UsageError("chunks must be at least 1", param="chunks")
        self.ref, self.n_ctx, self.threads = ref, n_ctx, threads
        first = n_ctx // 2
        scored = n_ctx - 1 - first  # perplexity.cpp: tokens [first, n_ctx - 1) predict the next one
        base = _Model(ref, n_ctx, threads)
        try:
            text_bytes = read_text(text_path, text_budget(chunks, n_ctx))  # --chunks bounds what is read
            self.tokens = base.llm.tokenize(text_bytes, add_bos=True, special=False)
            if len(self.tokens) < 2 * n_ctx:
                raise UsageError(
                    f"{text}: {len(self.tokens)} tokens; scoring with a context of {n_ctx} needs at least {2 * n_ctx}",
                    hint="use a longer text or a smaller context",
                    param="n_ctx",
                )
            self.n_chunk = min(chunks or len(self.tokens) // n_ctx, len(self.tokens) // n_ctx)
            self.n_vocab = base.n_vocab
            self._spill = tempfile.TemporaryFile()  # noqa: SIM115  # lives as long as the Reference (close)
            self.codes = np.memmap(self._spill, dtype=np.uint16, mode="w+", shape=(self.n_chunk, scored, self.n_vocab))
            self.scales = np.zeros((self.n_chunk, scored), np.float32)
            self.mins = np.zeros((self.n_chunk, scored), np.float32)
            self.nll = 0.0
            for c in range(self.n_chunk):
                chunk = self.tokens[c * n_ctx : (c + 1) * n_ctx]
                logits = base.logits(chunk, first)[:scored]
                self.codes[c], self.scales[c], self.mins[c] = compress_log_probs(logits)
                self.nll -= float(_log_softmax(logits)[np.arange(scored), chunk[first + 1 :]].sum())
                if progress:
                    progress("ref", c + 1, self.n_chunk)
        finally:
            base.close()

    def compare(self, model: Path, progress: EvalProgress | None = None) -> dict[str, float]:
        """perplexity.cpp's KL-divergence sums of `model` against this reference."""
        quant = _Model(model, self.n_ctx, self.threads)
        try:
            if quant.n_vocab != self.n_vocab:
                raise UsageError(
                    f"{model} has {quant.n_vocab} tokens, {self.ref} has {self.n_vocab}: not the same vocabulary"
                )
            return _kld_sums(quant, self.tokens, self.codes, self.scales, self.mins, self.n_chunk, self.n_ctx, progress)
        finally:
            quant.close()

    def result(
        self, model: Path, sums: dict[str, float], *, text: str, text_sha256: str, ref_sha256: str | None,
        seconds: float,
    ) -> EvalResult:  # fmt: skip
        """The figures llama-perplexity prints, from `compare`'s sums."""
        count = self.n_chunk * (self.n_ctx - 1 - self.n_ctx // 2)
        nll, nll_base, kld, kld2, same = (sums[k] for k in ("nll", "nll_base", "kld", "kld2", "same"))
        mean_kld = kld / count
        var = kld2 / count - mean_kld * mean_kld
        return EvalResult(
            model_path=str(model), ref_path=str(self.ref), ref_sha256=ref_sha256, text=text, text_sha256=text_sha256,
            n_ctx=self.n_ctx, chunks=self.n_chunk, tokens_scored=count, ppl=math.exp(nll / count),
            ppl_ref=math.exp(self.nll / count), ln_ppl_ratio=(nll - nll_base) / count, kld_mean=mean_kld,
            kld_stdev=math.sqrt(var / (count - 1)) if var > 0 and count > 10 else 0.0, same_top_rate=same / count,
            seconds=round(seconds, 3), machine=this_machine(),
        )  # fmt: skip

    def close(self) -> None:
        self._spill.close()

    def __enter__(self) -> Reference:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def evaluate(
    model: Path,
    ref: Path,
    text_path: Path,
    *,
    text: str,
    text_sha256: str,
    n_ctx: int = 512,
    chunks: int | None = None,
    threads: int | None = None,
    ref_sha256: str | None = None,
    progress: EvalProgress | None = None,
) -> EvalResult:
    """Perplexity of `model` and `ref` on the text, and the KL-divergence of `model` from `ref`."""
    started = time.perf_counter()
    with (
        llama_log_file(f"eval-{model.stem}"),
        Reference(ref, text_path, text=text, n_ctx=n_ctx, chunks=chunks, threads=threads, progress=progress) as base,
    ):
        sums = base.compare(model, progress)
        return base.result(
            model, sums, text=text, text_sha256=text_sha256, ref_sha256=ref_sha256,
            seconds=time.perf_counter() - started,
        )  # fmt: skip


def _kld_sums(
    quant: _Model, tokens: list[int], codes: Any, scales: np.ndarray, mins: np.ndarray, n_chunk: int, n_ctx: int,
    progress: EvalProgress | None,
) -> dict[str, float]:  # fmt: skip
    """perplexity.cpp's kl_divergence_result sums over every scored token of every chunk."""
    first = n_ctx // 2
    scored = n_ctx - 1 - first
    sums = dict.fromkeys(("nll", "nll_base", "kld", "kld2", "same"), 0.0)
    rows = np.arange(scored)
    for c in range(n_chunk):
        chunk = tokens[c * n_ctx : (c + 1) * n_ctx]
        targets = np.asarray(chunk[first + 1 :])
        logits = quant.logits(chunk, first)[:scored]
        log_q = _log_softmax(logits)
        log_base = scales[c][:, None].astype(np.float64) * codes[c].astype(np.float64) + mins[c][:, None]
        sums["nll"] -= float(log_q[rows, targets].sum())
        sums["nll_base"] -= float(log_base[rows, targets].sum())
        kept = log_base > -LOG_PROB_FLOOR
        per_token = np.where(kept, np.exp(log_base) * (log_base - log_q), 0.0).sum(axis=1)
        sums["kld"] += float(per_token.sum())
        sums["kld2"] += float((per_token * per_token).sum())
        sums["same"] += float((logits.argmax(axis=1) == log_base.argmax(axis=1)).sum())
        if progress:
            progress("quant", c + 1, n_chunk)
    return sums
