"""The build runner on its own: stamps, skip decisions and reasons, failures, locks, shards (with test stages)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

from pipeline.base.errors import UsageError
from pipeline.base.home import atomic_write_text, locked, mm_home
from pipeline.build.report import summary_rows
from pipeline.build.runner import BuildOptions, build, in_shard, parse_shard, read_stamp, select_recipes
from pipeline.build.stage import Stage, StageEnv, StageOutcome, Upstream, output_record
from pipeline.build.stages import recipe_stages
from pipeline.spec.recipe import Recipe
from tests.conftest import write_recipe

RECIPE = """
hardware = "cpu-32g"
[source]
path = "model.gguf"
[quantize]
types = ["q8_0"]
"""


class FileStages:
    """Two stages over real files: `make` writes <recipe>.out from the recipe's `source.path` text; `count`
    records its length. Calls are counted so tests see what actually ran."""

    def __init__(self, folder: Path, fail: set[str] | None = None) -> None:
        self.folder = folder
        self.fail = fail or set()
        self.calls: list[str] = []
        self.lock = threading.Lock()

    def __call__(self, recipe: Recipe, env: StageEnv) -> list[Stage]:
        out = self.folder / f"{recipe.name}.out"

        def make_inputs(_: Upstream) -> dict[str, Any]:
            return {"text": str(recipe.source.path), "llama_cpp": env.llama_cpp_version}

        def make(_: Upstream) -> StageOutcome:
            with self.lock:
                self.calls.append(f"{recipe.name}:make")
            if recipe.name in self.fail:
                raise UsageError(f"{recipe.name} is broken on purpose")
            atomic_write_text(out, str(recipe.source.path))
            return StageOutcome(outputs=[output_record(env.home, out)], values={"sha256": "x" + out.read_text()})

        def count_inputs(up: Upstream) -> dict[str, Any]:
            return {"source_sha256": up["make"].values["sha256"]}

        def count(up: Upstream) -> StageOutcome:
            with self.lock:
                self.calls.append(f"{recipe.name}:count")
            return StageOutcome(values={"n": len(up["make"].values["sha256"])})

        return [Stage("make", (), make_inputs, make), Stage("count", ("make",), count_inputs, count)]


def _recipes(folder: Path, *names: str) -> list[Path]:
    return [write_recipe(folder, name, RECIPE) for name in names]


def _statuses(report: Any) -> dict[str, list[tuple[str, str]]]:
    return {r.name: [(s.name, s.status) for s in r.stages] for r in report.recipes}


def test_second_build_skips_everything_and_records_stamps(recipes_folder: Path, tmp_path: Path) -> None:
    stages = FileStages(tmp_path)
    paths = _recipes(recipes_folder, "a", "b")
    first = build(paths, BuildOptions(), stages_for=stages)
    assert [r.status for r in first.recipes] == ["built", "built"]
    assert {s.reason for r in first.recipes for s in r.stages} == {"never built"}
    assert read_stamp(mm_home(), "a", "make") is not None
    stages.calls.clear()
    second = build(paths, BuildOptions(), stages_for=stages)
    assert [r.status for r in second.recipes] == ["skipped", "skipped"]
    assert all(s.status == "skipped" for r in second.recipes for s in r.stages)
    assert stages.calls == []


def test_changed_recipe_reruns_with_reason_and_downstream_inherits(recipes_folder: Path, tmp_path: Path) -> None:
    stages = FileStages(tmp_path)
    paths = _recipes(recipes_folder, "a", "b")
    build(paths, BuildOptions(), stages_for=stages)
    paths[0].write_text(RECIPE.replace("model.gguf", "other.gguf"))
    stages.calls.clear()
    report = build(paths, BuildOptions(), stages_for=stages)
    a = report.recipes[0]
    assert [(s.name, s.status, s.reason) for s in a.stages] == [
        ("make", "ran", "recipe changed"),
        ("count", "ran", "recipe changed"),
    ]
    assert report.recipes[1].status == "skipped"
    assert stages.calls == ["a:make", "a:count"]


def test_deleted_or_edited_output_reruns_its_stage(recipes_folder: Path, tmp_path: Path) -> None:
    stages = FileStages(tmp_path)
    paths = _recipes(recipes_folder, "a")
    build(paths, BuildOptions(), stages_for=stages)
    (tmp_path / "a.out").write_text("tampered, same?")
    report = build(paths, BuildOptions(), stages_for=stages)
    assert report.recipes[0].stages[0].reason.startswith("output changed")
    (tmp_path / "a.out").unlink()
    report = build(paths, BuildOptions(), stages_for=stages)
    assert report.recipes[0].stages[0].reason.startswith("output missing")
    assert (tmp_path / "a.out").read_text() == "model.gguf"


def test_dry_run_plans_without_running_or_stamping(recipes_folder: Path, tmp_path: Path) -> None:
    stages = FileStages(tmp_path)
    paths = _recipes(recipes_folder, "a")
    report = build(paths, BuildOptions(dry_run=True), stages_for=stages)
    assert _statuses(report) == {"a": [("make", "would_run"), ("count", "would_run")]}
    assert report.recipes[0].status == "would_build"
    assert stages.calls == [] and not (tmp_path / "a.out").exists()
    assert read_stamp(mm_home(), "a", "make") is None


def test_llama_cpp_upgrade_is_named_as_the_reason(recipes_folder: Path, tmp_path: Path) -> None:
    stages = FileStages(tmp_path)
    paths = _recipes(recipes_folder, "a")
    build(paths, BuildOptions(), stages_for=stages)

    def upgraded(recipe: Recipe, env: StageEnv) -> list[Stage]:
        return stages(recipe, StageEnv(home=env.home, llama_cpp_version="9.9.9"))

    report = build(paths, BuildOptions(dry_run=True), stages_for=upgraded)
    assert [s.reason for s in report.recipes[0].stages] == ["llama.cpp upgraded", "llama.cpp upgraded"]


def test_failure_is_not_stamped_and_keep_going_builds_the_rest(recipes_folder: Path, tmp_path: Path) -> None:
    stages = FileStages(tmp_path, fail={"a"})
    paths = _recipes(recipes_folder, "a", "b")
    report = build(paths, BuildOptions(keep_going=True), stages_for=stages)
    a, b = report.recipes
    assert a.status == "failed" and "broken on purpose" in a.reason
    assert [(s.name, s.status) for s in a.stages] == [("make", "failed"), ("count", "not_run")]  # never attempted
    assert b.status == "built"
    assert read_stamp(mm_home(), "a", "make") is None


def test_without_keep_going_the_first_failure_stops_the_build(recipes_folder: Path, tmp_path: Path) -> None:
    stages = FileStages(tmp_path, fail={"a"})
    report = build(_recipes(recipes_folder, "a", "b"), BuildOptions(), stages_for=stages)
    assert [r.status for r in report.recipes] == ["failed", "skipped"]
    assert "b:make" not in stages.calls


def test_invalid_recipe_fails_alone_with_its_error(recipes_folder: Path, tmp_path: Path) -> None:
    paths = [*_recipes(recipes_folder, "good"), write_recipe(recipes_folder, "bad", "hardware = 3\n")]
    report = build(paths, BuildOptions(keep_going=True), stages_for=FileStages(tmp_path))
    statuses = {r.name: (r.status, r.reason) for r in report.recipes}
    assert statuses["good"][0] == "built"
    assert statuses["bad"][0] == "failed" and "bad.toml" in statuses["bad"][1]


def test_parallel_jobs_build_every_recipe(recipes_folder: Path, tmp_path: Path) -> None:
    stages = FileStages(tmp_path)
    paths = _recipes(recipes_folder, *[f"r{i}" for i in range(6)])
    report = build(paths, BuildOptions(jobs=3), stages_for=stages)
    assert [r.name for r in report.recipes] == [p.stem for p in paths]
    assert all(r.status == "built" for r in report.recipes)
    assert sorted(stages.calls) == sorted(f"r{i}:{s}" for i in range(6) for s in ("make", "count"))


def test_no_wait_skips_a_recipe_another_build_holds(recipes_folder: Path, tmp_path: Path) -> None:
    stages = FileStages(tmp_path)
    paths = _recipes(recipes_folder, "a")
    with locked(mm_home(), "build-a"):
        report = build(paths, BuildOptions(no_wait=True), stages_for=stages)
    assert report.recipes[0].status == "skipped"
    assert "another mm build" in report.recipes[0].reason
    assert stages.calls == []


def test_a_second_build_waits_for_the_first_then_finds_it_done(recipes_folder: Path, tmp_path: Path) -> None:
    stages = FileStages(tmp_path)
    paths = _recipes(recipes_folder, "a")
    held, release = threading.Event(), threading.Event()

    # Another mm build (a thread here) holds the recipe's lock while this one starts.
    def holder() -> None:
        with locked(mm_home(), "build-a"):
            held.set()
            release.wait(5)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    threading.Timer(0.5, release.set).start()
    report = build(paths, BuildOptions(), stages_for=stages)
    thread.join()
    assert release.is_set()  # it returned only after the lock was given up
    assert report.recipes[0].status == "built"


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_shards_cover_every_recipe_exactly_once(recipes_folder: Path, n: int) -> None:
    names = [f"recipe-{i:02d}" for i in range(17)]
    _recipes(recipes_folder, *names)
    picked: list[str] = []
    for k in range(1, n + 1):
        picked += [p.stem for p in select_recipes([], all_recipes=True, folder=recipes_folder, shard=(k, n))]
    assert sorted(picked) == names


def test_a_recipe_stays_in_its_shard_when_others_are_added(recipes_folder: Path) -> None:
    _recipes(recipes_folder, *[f"r{i}" for i in range(8)])
    before = {p.stem for p in select_recipes([], all_recipes=True, folder=recipes_folder, shard=(2, 3))}
    _recipes(recipes_folder, *[f"new{i}" for i in range(8)])
    after = {p.stem for p in select_recipes([], all_recipes=True, folder=recipes_folder, shard=(2, 3))}
    assert before == {name for name in after if name.startswith("r")}
    assert all(in_shard(name, (2, 3)) for name in after)


@pytest.mark.parametrize("text", ["0/3", "4/3", "x", "1/0", "1/2/3"])
def test_bad_shard_is_a_usage_error(text: str) -> None:
    with pytest.raises(UsageError, match=r"expected K/N|between 1 and N") as raised:
        parse_shard(text)
    assert raised.value.param == "shard"


def test_names_and_all_together_are_refused(recipes_folder: Path) -> None:
    _recipes(recipes_folder, "a")
    with pytest.raises(UsageError):
        select_recipes(["a"], all_recipes=True, folder=recipes_folder)
    with pytest.raises(UsageError):
        select_recipes([], all_recipes=False, folder=recipes_folder)


def test_a_changed_text_is_named_by_its_own_stage(recipes_folder: Path) -> None:
    """The calibration and eval texts are separate volatile stages: each names its own text when it changes."""
    (recipes_folder / "calib.txt").write_text("the river runs to the sea\n")
    (recipes_folder / "eval.txt").write_text("the sea gives the rain back\n")
    recipe = RECIPE.replace('types = ["q8_0"]', 'types = ["iq2_xxs"]\nimatrix = "auto"')
    path = write_recipe(recipes_folder, "texts", recipe + '[imatrix]\ntext = "calib.txt"\n[eval]\ntext = "eval.txt"\n')

    def texts_only(recipe: Recipe, env: StageEnv) -> list[Stage]:
        return [s for s in recipe_stages(recipe, env) if s.name in {"calibration", "eval-text"}]

    first = build([path], BuildOptions(), stages_for=texts_only)
    assert [(s.name, s.status) for s in first.recipes[0].stages] == [("calibration", "ran"), ("eval-text", "ran")]
    (recipes_folder / "eval.txt").write_text("a different evaluation text\n")
    changed = build([path], BuildOptions(), stages_for=texts_only)
    assert [(s.name, s.status, s.reason) for s in changed.recipes[0].stages] == [
        ("calibration", "skipped", "up to date"),
        ("eval-text", "ran", "eval text changed"),
    ]
    (recipes_folder / "calib.txt").write_text("a different calibration text\n")
    again = build([path], BuildOptions(), stages_for=texts_only)
    assert [(s.name, s.status, s.reason) for s in again.recipes[0].stages] == [
        ("calibration", "ran", "calibration text changed"),
        ("eval-text", "skipped", "up to date"),
    ]


class TypedStages(FileStages):
    """FileStages whose `count` also reads the recipe's quant types, as publish reads the recipe's settings."""

    def __call__(self, recipe: Recipe, env: StageEnv) -> list[Stage]:
        make, count = super().__call__(recipe, env)
        types = list(recipe.quantize.types)
        return [make, Stage("count", count.deps, lambda up: {**count.inputs(up), "types": types}, count.action)]


def test_a_dry_run_names_the_reason_the_real_run_gives_and_counts_nothing_as_ran(
    recipes_folder: Path, tmp_path: Path
) -> None:
    stages = TypedStages(tmp_path)
    [path] = _recipes(recipes_folder, "a")
    build([path], BuildOptions(), stages_for=stages)
    (tmp_path / "a.out").unlink()  # make must run again ...
    path.write_text(RECIPE.replace('"q8_0"', '"q4_0"'))  # ... and count's own input changed
    planned = build([path], BuildOptions(dry_run=True), stages_for=stages)
    real = build([path], BuildOptions(), stages_for=stages)
    assert [(s.name, s.reason) for s in planned.recipes[0].stages] == [
        (s.name, s.reason) for s in real.recipes[0].stages
    ]
    assert real.recipes[0].stages[1].reason == "recipe changed"
    assert planned.recipes[0].ran == [] and summary_rows(planned)[0][2] == "0"
