"""`mm bench`: prompt-processing and decode speed measured as llama.cpp's llama-bench measures them.

In-process with llama-cpp-python, the library `mm run` generates with, so the figure is the speed a
profile's user gets. The tests mirror tools/llama-bench/llama-bench.cpp: `pp` decodes n_prompt random
tokens in n_batch batches (BOS first when the vocabulary adds one), `tg` decodes n_gen random tokens one
at a time from an empty cache; one warm-up run each, then `repetitions` timed runs from an empty cache.
llama-bench reports mean ± stdev of tokens/s; mm reports the median and the spread (min, max, stdev), and
for tg also the steady rate: the median single token over all runs, which leaves out the tokens that waited
while other processes held the cores (pipeline/measure/sampling.py), the figure a prediction is held to.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pipeline.base.errors import UsageError
from pipeline.llama.llama_log import llama_log_file
from pipeline.llama.overrides import load_llama
from pipeline.llama.tools import llama_cpp_version
from pipeline.probe.local_machine import default_threads, this_machine
from pipeline.spec.results import BenchResult, TestFigure

log = logging.getLogger(__name__)

BenchProgress = Callable[[str, int, int], None]  # (test, run done, runs in all)


def decode_token_seconds(llm: Any, tokens: Sequence[int]) -> list[float]:
    """Seconds of each token decoded one at a time from an empty cache (llama-bench's tg), each timed on its
    own so that a robust statistic can leave out the tokens that waited for a core (measure/sampling.py)."""
    llm.reset()
    times = []
    for token in tokens:
        begin = time.perf_counter()
        llm.eval([token])
        times.append(time.perf_counter() - begin)
    return times


def run_bench(
    kwargs: dict[str, Any],
    *,
    n_prompt: int = 512,
    n_gen: int = 128,
    repetitions: int = 5,
    warmup: bool = True,
    progress: BenchProgress | None = None,
    seed: int = 0,
    tensor_overrides: Sequence[str] = (),
) -> BenchResult:
    """Load the model with `kwargs` (llama_cpp.Llama's) and the profile's `tensor_overrides` (-ot strings:
    experts kept in RAM) and time pp`n_prompt` and tg`n_gen`."""
    if n_prompt < 0 or n_gen < 0 or n_prompt + n_gen == 0:
        raise UsageError("prompt and generated tokens: at least one count must be positive", param="n_prompt")
    if repetitions < 1:
        raise UsageError("repetitions must be at least 1", param="repetitions")
    threads = int(kwargs.get("n_threads") or default_threads())
    # llama-bench runs prompt batches on the same threads (llama_set_n_threads(ctx, t, t)); llama-cpp-python
    # would use every core for them (n_threads_batch = cpu_count()).
    settings = {
        **kwargs, "n_threads": threads, "n_threads_batch": int(kwargs.get("n_threads_batch") or threads),
        "n_ctx": max(int(kwargs.get("n_ctx", 0)), n_prompt + n_gen),
    }  # fmt: skip
    started = time.perf_counter()
    with llama_log_file(f"bench-{Path(str(settings['model_path'])).stem}"):
        llm = load_llama(settings, overrides=tensor_overrides)
        rng = random.Random(seed)
        n_vocab = llm.n_vocab()
        bos = llm.token_bos() if llm._model.add_bos_token() else None  # llama_vocab_get_add_bos

        def tokens(count: int) -> list[int]:
            return [rng.randrange(n_vocab) for _ in range(count)]

        def prompt() -> float:
            batch = tokens(n_prompt)
            if bos is not None and bos >= 0:
                batch[0] = bos
            llm.reset()
            begin = time.perf_counter()
            llm.eval(batch)
            return time.perf_counter() - begin

        token_seconds: list[float] = []  # every timed decoded token, for the steady figure

        def generate(count: int) -> float:
            first = bos if bos is not None and bos >= 0 else rng.randrange(n_vocab)
            times = decode_token_seconds(llm, [first, *tokens(count - 1)])
            token_seconds.extend(times[1:])
            return sum(times)

        pp = tg = None
        for test, count, run in (("pp", n_prompt, prompt), ("tg", n_gen, lambda: generate(n_gen))):
            if count == 0:
                continue
            if warmup:
                run() if test == "pp" else generate(1)
            seconds, token_seconds[:] = [], []
            for index in range(repetitions):
                seconds.append(run())
                if progress is not None:
                    progress(f"{test}{count}", index + 1, repetitions)
            figure = TestFigure.of(f"{test}{count}", count, seconds, token_seconds if test == "tg" else ())
            pp, tg = (figure, tg) if test == "pp" else (pp, figure)
        llm.close()
    return BenchResult(
        model_path=str(settings["model_path"]), threads=threads, n_prompt=n_prompt, n_gen=n_gen,
        repetitions=repetitions, settings={k: v for k, v in settings.items() if k != "model_path"}
        | ({"tensor_overrides": list(tensor_overrides)} if tensor_overrides else {}),
        pp=pp, tg=tg, llama_cpp=llama_cpp_version(), machine=this_machine(),
        seconds=round(time.perf_counter() - started, 3),
    )  # fmt: skip
