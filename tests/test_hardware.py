"""Hardware classes (built in, or from hardware.toml) and this machine's own description."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.base.errors import HardwareError
from pipeline.probe.local_machine import local_class, local_machine
from pipeline.spec.hardware import (
    BUILTIN_CLASSES,
    HARDWARE_FILE,
    LOCAL_GPU_BANDWIDTH_GBPS,
    get_hardware,
    hardware_catalog,
)


def test_a_hardware_file_adds_and_overrides_classes(tmp_path: Path) -> None:
    path = tmp_path / HARDWARE_FILE
    path.write_text(
        '[mybox]\nvram = "8G"\nram = "16G"\ngpu_bandwidth_gbps = 300\nram_bandwidth_gbps = 40\n'
        '[cpu-32g]\nram = "48G"\nram_bandwidth_gbps = 60\n'
    )
    catalog = hardware_catalog(path)
    assert catalog["mybox"].vram_bytes == 8 << 30 and catalog["mybox"].has_gpu
    assert catalog["cpu-32g"].ram_bytes == 48 << 30 and not catalog["cpu-32g"].builtin
    assert set(catalog) == {c.name for c in BUILTIN_CLASSES} | {"mybox"}


def test_an_unknown_class_names_the_known_ones() -> None:
    with pytest.raises(HardwareError, match="rtx3060-12g"):
        get_hardware("no-such-card")


def test_sizes_given_on_the_command_line_replace_the_class_and_rename_it() -> None:
    cpu = get_hardware("cpu-64g")
    assert cpu.with_sizes(None, None) is cpu
    gpu = cpu.with_sizes(12 << 30, None)
    assert gpu.has_gpu and gpu.gpu_bandwidth_gbps == LOCAL_GPU_BANDWIDTH_GBPS  # a GPU needs a bandwidth
    assert gpu.name == "cpu-64g with 12 GiB VRAM" and gpu.ram_bytes == cpu.ram_bytes


def test_this_machine_reports_its_ram_and_cpus() -> None:
    machine = local_machine()
    pages = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert machine.ram_bytes == pages and machine.cpu_count == os.cpu_count()
    assert machine.gpu_source in ("nvml", "nvidia-smi", "none")
    assert {c.name for c in BUILTIN_CLASSES} <= {c.name for c in machine.classes}
    here = local_class()
    assert here.name == "local" and here.ram_bytes == pages and here.has_gpu == bool(machine.gpus)
