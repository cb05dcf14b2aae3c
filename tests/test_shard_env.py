"""`mm build --shard auto`: the job index of Slurm arrays, Kubernetes Indexed Jobs and GitHub Actions matrices."""

from __future__ import annotations

import pytest

from pipeline.base.errors import UsageError
from pipeline.build.runner import parse_shard
from pipeline.build.shard_env import shard_from_environment


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        # sbatch --array=1-4: ids 1..4, SLURM_ARRAY_TASK_MIN=1
        ({"SLURM_ARRAY_TASK_ID": "3", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}, (3, 4)),
        ({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "0"}, (1, 2)),
        ({"JOB_COMPLETION_INDEX": "2", "JOB_COMPLETIONS": "3"}, (3, 3)),
        ({"GITHUB_ACTIONS": "true", "MM_JOB_INDEX": "0", "MM_JOB_TOTAL": "5"}, (1, 5)),
    ],
)
def test_job_index_becomes_the_shard(env: dict[str, str], expected: tuple[int, int]) -> None:
    assert shard_from_environment(env) == expected


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({}, "no job index"),
        ({"JOB_COMPLETION_INDEX": "0"}, "JOB_COMPLETIONS"),
        ({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}, "part 7 of 4"),
        ({"MM_JOB_INDEX": "x", "MM_JOB_TOTAL": "2"}, "not a number"),
    ],
)
def test_missing_or_bad_job_index_is_one_usage_error(env: dict[str, str], words: str) -> None:
    with pytest.raises(UsageError, match=words):
        shard_from_environment(env)


def test_shard_auto_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT", "SLURM_ARRAY_TASK_MIN", "JOB_COMPLETION_INDEX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("MM_JOB_INDEX", "1")
    monkeypatch.setenv("MM_JOB_TOTAL", "2")
    assert parse_shard("auto") == (2, 2)
