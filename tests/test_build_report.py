"""The build report: JSON written whole, and the one-row-per-recipe summary a person reads."""

from __future__ import annotations

from pathlib import Path

from pipeline.build.report import BuildReport, RecipeReport, StageReport, summary_rows, write_report


def _report() -> BuildReport:
    stages = [
        StageReport(name="resolve", status="skipped", reason="up to date"),
        StageReport(name="quantize:q4_k_m", status="ran", reason="new upstream commit", seconds=2.5),
        StageReport(name="publish:q4_k_m", status="not_run", reason="an earlier stage failed"),
    ]
    return BuildReport(
        recipes=[
            RecipeReport(name="a", path="a.toml", status="built", seconds=3.0, stages=stages),
            RecipeReport(name="b", path="b.toml", status="failed", reason="resolve: no such repo\nmore detail"),
        ]
    )


def test_the_json_report_round_trips(tmp_path: Path) -> None:
    report = _report()
    path = tmp_path / "reports" / "nightly.json"
    write_report(report, path)
    assert BuildReport.model_validate_json(path.read_text()) == report
    assert [p.name for p in path.parent.iterdir()] == ["nightly.json"]  # no temp left beside it


def test_the_summary_counts_stages_and_gives_the_first_line_of_why() -> None:
    report = _report()
    assert report.counts() == {"built": 1, "failed": 1} and [r.name for r in report.failed] == ["b"]
    built, failed = summary_rows(report)
    assert built == ["a", "built", "1", "1", "1", "3.0", "new upstream commit"]
    assert failed[1] == "failed" and failed[-1] == "resolve: no such repo…"
