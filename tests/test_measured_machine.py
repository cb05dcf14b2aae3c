"""A measurement names the machine it ran on: `mm ls`, `mm show` and the stored profile keep a profile's plan for
its hardware class apart from what `mm bench` measured on this machine, each under its own name, and compare a
measurement only with the prediction made for the machine it ran on; older records read as "machine unknown"."""

from __future__ import annotations

import json
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

from typer.testing import Result

Mm = Callable[..., Result]


def _cpu_model() -> str:
    """This machine's CPU as the kernel names it (what a person reads in /proc/cpuinfo or lscpu)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    raise AssertionError("no model name in /proc/cpuinfo")


def _section(text: str, title: str) -> tuple[str, str]:
    before, _, after = text.partition(title)
    assert after, text
    return before, after


def test_a_measurement_on_this_machine_is_never_shown_as_the_classs(mm: Mm, tiny_model: Path, tmp_path: Path) -> None:
    model = shutil.copy(tiny_model, tmp_path / "tiny.gguf")
    assert mm("publish", str(model), "--hardware", "rtx3060-12g", "--ctx", "512", "--name", "t@gpu").exit_code == 0
    benched = mm("bench", "t@gpu", "-p", "16", "-n", "8", "-r", "1", "--json")
    assert benched.exit_code == 0, benched.output
    result = json.loads(benched.stdout)
    machine = result["machine"]
    assert set(machine) == {"cpu", "cores", "gpus", "backend", "id"}  # what the figures depend on, no host or user
    assert machine["cpu"] == _cpu_model() and machine["cores"] == os.cpu_count()
    if len(socket.gethostname()) > 3:
        assert socket.gethostname() not in json.dumps(machine)
    measured, there = f"{result['tg']['median_ts']:.1f}", f"{result['predicted_tg_ts']:.1f}"

    listed = mm("ls").stdout
    plans, measurements = _section(listed, "Measured by mm bench")
    plan = next(line for line in plans.splitlines() if line.startswith("t@gpu"))
    assert "rtx3060-12g" in plan and measured not in plan  # the class's row has its prediction alone
    row = next(line for line in measurements.splitlines() if line.startswith("t@gpu"))
    assert _cpu_model() in row and machine["id"][:8] in row and "rtx3060-12g" not in row
    assert measured in row and there in row  # beside the prediction for this machine, not the class's
    summary = json.loads(mm("ls", "--json").stdout)["profiles"][0]
    (on_this_machine,) = summary["measured"]
    assert summary["hardware"] == "rtx3060-12g" and on_this_machine["machine_id"] == machine["id"]
    assert on_this_machine["predicted_tokens_per_second"] == result["predicted_tg_ts"]

    shown = mm("show", "t@gpu").stdout
    assert "prediction for rtx3060-12g" in shown
    measured_row = next(line for line in shown.splitlines() if line.startswith("measured on"))
    assert _cpu_model() in measured_row and f"predicted there {there} tok/s" in measured_row


def test_a_measurement_from_before_machines_were_kept_reads_as_machine_unknown(
    mm: Mm, tiny_model: Path, tmp_path: Path
) -> None:
    model = shutil.copy(tiny_model, tmp_path / "tiny.gguf")
    assert mm("publish", str(model), "--hardware", "cpu-32g", "--ctx", "512", "--name", "old").exit_code == 0
    assert mm("bench", "old", "-p", "0", "-n", "4", "-r", "1").exit_code == 0
    stored = Path(os.environ["MM_HOME"]) / "profiles" / "old.json"
    document = json.loads(stored.read_text())
    (bench,) = document["measured"].pop("benches")
    del bench["machine"]  # as mm wrote it before (bench schema 1, one bench in profile schema 3)
    bench["schema_version"] = 1
    document["measured"]["bench"] = bench
    document["schema_version"] = 3
    stored.write_text(json.dumps(document))
    listed = mm("ls")
    assert listed.exit_code == 0 and "error" not in listed.stderr
    row = next(line for line in _section(listed.stdout, "Measured by mm bench")[1].splitlines() if "old" in line)
    assert "machine unknown" in row
    assert "measured on machine unknown" in mm("show", "old").stdout
    assert [m["machine_id"] for m in json.loads(mm("ls", "--json").stdout)["profiles"][0]["measured"]] == [None]


def test_a_bench_on_a_second_machine_is_kept_beside_the_first(mm: Mm, tiny_model: Path, tmp_path: Path) -> None:
    """A profile travels (push, pull): each machine's figure stays under its own name, a machine's newer bench
    replaces its older one."""
    model = shutil.copy(tiny_model, tmp_path / "tiny.gguf")
    assert mm("publish", str(model), "--hardware", "cpu-32g", "--ctx", "512", "--name", "two").exit_code == 0
    assert mm("bench", "two", "-p", "0", "-n", "4", "-r", "1").exit_code == 0
    stored = Path(os.environ["MM_HOME"]) / "profiles" / "two.json"
    document = json.loads(stored.read_text())
    (elsewhere,) = document["measured"]["benches"]
    elsewhere["machine"].update(cpu="Another CPU", cores=64, id="f" * 16)  # as if benched there, then pulled here
    stored.write_text(json.dumps(document))
    for _ in range(2):  # the second run on this machine replaces the first
        assert mm("bench", "two", "-p", "0", "-n", "4", "-r", "1").exit_code == 0
    rows = json.loads(mm("ls", "--json").stdout)["profiles"][0]["measured"]
    there, here = rows
    assert there["machine_id"] == "f" * 16 and here["machine_id"] not in (None, "f" * 16)
    listed = _section(mm("ls").stdout, "Measured by mm bench")[1]
    assert "Another CPU x64" in listed and _cpu_model() in listed
    shown = [line for line in mm("show", "two").stdout.splitlines() if line.startswith("measured on")]
    assert len(shown) == 2 and "Another CPU" in shown[0] and _cpu_model() in shown[1]
