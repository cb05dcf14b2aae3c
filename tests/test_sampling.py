"""Timing statistics for a shared machine: robust centres, interleaved rounds, more rounds when they disagree."""

from __future__ import annotations

import itertools

import pytest

from pipeline.measure.sampling import by_group_level, by_round_level, interleaved, median_token_seconds, robust
from pipeline.spec import results


def test_the_centre_is_the_median_and_a_few_outliers_move_neither_it_nor_the_spread() -> None:
    steady = robust([1.0, 1.02, 0.98, 1.01, 0.99, 1.0, 1.0])
    with_outliers = robust([1.0, 1.02, 0.98, 1.01, 0.99, 1.0, 1.0, 5.0, 9.0])
    assert steady.centre == with_outliers.centre == 1.0
    assert 0 < steady.spread < 0.03 and with_outliers.spread < 0.03
    assert robust([1.0, 2.0, 3.0]).spread == pytest.approx(1.4826 / 2)  # MAD 1 over the median 2


def test_the_first_token_of_a_run_warms_caches_and_is_left_out() -> None:
    assert median_token_seconds([9.0, 1.0, 1.0, 2.0]) == 1.0


def test_a_slow_round_slows_every_test_alike_and_is_taken_out() -> None:
    calm = {"a": [1.0, 1.0, 1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0, 2.0, 2.0]}
    busy = {"a": [1.0, 1.0, 3.0, 1.0, 2.5], "b": [2.0, 2.0, 6.0, 2.0, 5.0]}  # two rounds slowed 3x and 2.5x
    for samples in (calm, busy):
        estimates = by_round_level(samples)
        assert estimates["a"].centre == pytest.approx(1.0) and estimates["b"].centre == pytest.approx(2.0)
    drifting = {"a": [1.0, 1.1, 3.0, 0.9, 2.5], "b": [2.0, 2.2, 6.0, 1.8, 5.0]}  # the machine's level wanders
    estimates = by_round_level(drifting)
    assert estimates["b"].centre == pytest.approx(2 * estimates["a"].centre)  # their ratio stays exact
    assert estimates["a"].spread == estimates["b"].spread > 0  # and the level's own spread is reported


def test_rounds_stop_when_the_medians_are_certain_and_go_on_while_they_are_not() -> None:
    steady = interleaved({"a": lambda: 1.0, "b": lambda: 2.0}, min_rounds=5, max_rounds=11)
    assert steady["a"].samples == 5 and steady["a"].error == 0
    noise = itertools.cycle([1.0, 1.3, 0.8, 1.2, 0.7])  # one test's own noise, not the machine's
    noisy = interleaved({"a": lambda: 1.0, "b": lambda: next(noise)}, min_rounds=5, max_rounds=11)
    assert noisy["b"].samples == 11 and noisy["b"].error > 0.02


def test_bench_holds_the_prediction_to_the_steady_figure() -> None:
    seconds = [1.0, 2.0, 1.0]
    tokens = [0.01] * 50 + [0.05] * 10  # a sixth of the tokens waited for a core
    figure = results.TestFigure.of("tg64", 64, seconds, tokens)
    assert figure.steady_ts == pytest.approx(100.0) and figure.median_ts == pytest.approx(64.0)
    result = results.BenchResult(model_path="m.gguf", threads=1, n_prompt=0, n_gen=64, repetitions=3, settings={},
                                 pp=None, tg=figure, predicted_tg_ts=110.0, llama_cpp="test")  # fmt: skip
    assert result.prediction_error == pytest.approx(0.1)


def test_tests_that_other_work_slows_differently_keep_their_own_level() -> None:
    """A stretch of memory-bound work nearby slows the tests reading RAM, not those in cache: grouped, the
    in-cache tests do not inherit the RAM test's wandering."""
    samples = {"cache-a": [1.0] * 5, "cache-b": [2.0] * 5, "ram": [10.0, 12.0, 14.0, 16.0, 18.0]}
    grouped = by_group_level(samples, {"ram": "ram"})
    assert grouped["cache-a"].centre == pytest.approx(1.0) and grouped["ram"].centre == pytest.approx(14.0)
    assert grouped["cache-a"].spread == 0 < grouped["ram"].spread
    assert by_round_level(samples)["cache-a"].spread > 0
