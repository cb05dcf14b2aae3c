"""Timing on a machine shared with other work: robust centres, spreads, and rounds repeated until they agree.

Two habits make a timing repeatable when other processes compete for the cores:
  - time each decoded token on its own and keep the median token. A token is short (well under a
    scheduler time slice), so most tokens run uninterrupted; the ones that waited for a core are the
    slow tail, and a median ignores them, where a whole run's wall time (or its fastest run) does not;
  - run the tests in interleaved rounds (A B C, A B C, ...): a burst of other work then slows one round of
    every test rather than every run of one test. A round's level (the geometric mean of its tests) is taken
    out before the median over rounds, so one test's figure relative to the others is as steady as the
    machine allows, and the median level over rounds drops the slow minutes. When the rounds
    still disagree so much that their median is uncertain by more than the target (its standard error,
    1.2533 x the spread / sqrt(rounds) for normal samples), more rounds are run, up to a limit.
The spread reported is a robust relative standard deviation (1.4826 x the median absolute deviation over
the median: equal to stdev / mean for normally distributed samples, unmoved by a few outliers).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

MAD_TO_SIGMA = 1.4826  # the normal distribution's stdev / median absolute deviation
MEDIAN_ERROR = 1.2533  # standard error of a median / (stdev / sqrt(n)), normal samples
TARGET_ERROR = 0.02  # a median less certain than this (relative) calls for more rounds
MIN_ROUNDS = 5
MAX_ROUNDS = 11

RoundProgress = Callable[[int, int], None]  # (round done, rounds planned)


@dataclass(frozen=True)
class Estimate:
    """A robust centre of repeated timings and their relative spread."""

    centre: float
    spread: float  # robust relative stdev of one sample (0.03 = 3%)
    samples: int

    @property
    def error(self) -> float:
        """Relative standard error of the centre: how far a repeat of the whole measurement may move it."""
        return MEDIAN_ERROR * self.spread / math.sqrt(self.samples)


def robust(samples: Sequence[float]) -> Estimate:
    """The median and the MAD-based relative spread of `samples` (at least one)."""
    if not samples:
        raise ValueError("no samples to estimate from")
    centre = statistics.median(samples)
    mad = statistics.median(abs(s - centre) for s in samples)
    spread = MAD_TO_SIGMA * mad / centre if centre > 0 else 0.0
    return Estimate(centre=centre, spread=spread, samples=len(samples))


def median_token_seconds(token_seconds: Sequence[float]) -> float:
    """Seconds of the median decoded token of a run (the first, which warms caches, is left out)."""
    return statistics.median(token_seconds[1:] if len(token_seconds) > 2 else token_seconds)


def interleaved(
    tests: Mapping[str, Callable[[], float]],
    *,
    min_rounds: int = MIN_ROUNDS,
    max_rounds: int = MAX_ROUNDS,
    target_error: float = TARGET_ERROR,
    progress: RoundProgress | None = None,
    groups: Mapping[str, str] | None = None,
) -> dict[str, Estimate]:
    """Run every test once per round, in turn, `min_rounds` times; then more rounds while some test's median
    is less certain than `target_error`, up to `max_rounds`. Returns each test's robust estimate; `groups`
    (test -> group name) keeps tests that other work slows differently (in cache, from RAM) apart when a
    round's level is taken out."""
    samples: dict[str, list[float]] = {name: [] for name in tests}
    rounds = 0
    while rounds < max_rounds:
        for name, test in tests.items():
            samples[name].append(test())
        rounds += 1
        if progress is not None:
            progress(rounds, max(min_rounds, rounds))
        estimates = by_group_level(samples, groups or {})
        if rounds >= min_rounds and all(e.error <= target_error for e in estimates.values()):
            break
    return by_group_level(samples, groups or {})


def by_group_level(samples: Mapping[str, Sequence[float]], groups: Mapping[str, str]) -> dict[str, Estimate]:
    """by_round_level within each group of tests (a test without a group is a group of its own kind: "")."""
    out: dict[str, Estimate] = {}
    for group in dict.fromkeys(groups.get(name, "") for name in samples):
        out.update(by_round_level({k: v for k, v in samples.items() if groups.get(k, "") == group}))
    return {name: out[name] for name in samples}


def by_round_level(samples: Mapping[str, Sequence[float]]) -> dict[str, Estimate]:
    """Each test's estimate from interleaved rounds, the round's level taken out: a round's level is the
    geometric mean of its tests (a slow minute slows them all), each test is the median of its share of its
    round's level times the median level. The spread is the test's own and the level's, combined."""
    names = list(samples)
    n = min(len(values) for values in samples.values())
    levels = [math.exp(statistics.fmean(math.log(samples[k][r]) for k in names)) for r in range(n)]
    level = robust(levels)
    out = {}
    for name in names:
        share = robust([samples[name][r] / levels[r] for r in range(n)])
        out[name] = Estimate(share.centre * level.centre, math.hypot(share.spread, level.spread), n)
    return out
