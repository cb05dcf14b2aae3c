"""`mm build --shard auto`: this job's part K of N, read from the scheduler that started it.

Schedulers that run one job per index say which one it is in the environment:
- Slurm job arrays: SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT and SLURM_ARRAY_TASK_MIN (ids may start at 1);
- Kubernetes Indexed Jobs: JOB_COMPLETION_INDEX (0-based); the number of completions is not in the pod's
  environment, so the Job passes it as JOB_COMPLETIONS (or MM_JOB_TOTAL);
- GitHub Actions matrices: `strategy.job-index` and `strategy.job-total` are expressions, not variables, so
  the workflow passes them as MM_JOB_INDEX and MM_JOB_TOTAL (the README's workflow does);
- anything else: MM_JOB_INDEX (0-based) and MM_JOB_TOTAL.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from pipeline.base.errors import UsageError

AUTO = "auto"


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except ValueError:
        raise UsageError(f"shard auto: {name}={env[name]!r} is not a number", param="shard") from None


def _checked(k: int, n: int, source: str) -> tuple[int, int]:
    if not 1 <= k <= n:
        raise UsageError(f"shard auto: {source} gives part {k} of {n}", param="shard")
    return k, n


def shard_from_environment(env: Mapping[str, str] | None = None) -> tuple[int, int]:
    """(K, N), 1-based K, from the scheduler's variables; an error naming what is missing otherwise."""
    env = os.environ if env is None else env
    if "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        first = _int(env, "SLURM_ARRAY_TASK_MIN") if "SLURM_ARRAY_TASK_MIN" in env else 0
        k = _int(env, "SLURM_ARRAY_TASK_ID") - first + 1
        return _checked(k, _int(env, "SLURM_ARRAY_TASK_COUNT"), "the Slurm job array")
    if "JOB_COMPLETION_INDEX" in env:
        total = next((name for name in ("JOB_COMPLETIONS", "MM_JOB_TOTAL") if name in env), None)
        if total is None:
            raise UsageError(
                "shard auto: a Kubernetes Indexed Job gives JOB_COMPLETION_INDEX but not the number of jobs",
                hint="set JOB_COMPLETIONS in the pod template to the Job's .spec.completions",
                param="shard",
            )
        return _checked(_int(env, "JOB_COMPLETION_INDEX") + 1, _int(env, total), "the Kubernetes Indexed Job")
    if "MM_JOB_INDEX" in env and "MM_JOB_TOTAL" in env:
        return _checked(_int(env, "MM_JOB_INDEX") + 1, _int(env, "MM_JOB_TOTAL"), "MM_JOB_INDEX/MM_JOB_TOTAL")
    raise UsageError(
        "shard auto: no job index in the environment (Slurm array, Kubernetes Indexed Job or MM_JOB_INDEX)",
        hint="in a GitHub Actions matrix set MM_JOB_INDEX: ${{ strategy.job-index }} and "
        "MM_JOB_TOTAL: ${{ strategy.job-total }}; or give the part as K/N",
        param="shard",
    )
