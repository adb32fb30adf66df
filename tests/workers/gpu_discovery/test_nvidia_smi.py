"""Parsing ``nvidia-smi`` csv output, with samples in the real tool's format."""

from __future__ import annotations

import pytest

from workers.gpu_discovery.nvidia_smi import (
    COMPUTE_APPS_COMMAND,
    GPU_COMMAND,
    ComputeApp,
    GPUInfo,
    parse_compute_apps,
    parse_gpus,
)

# A DGX A100 node, two GPUs busy.
DGX_GPUS = """\
0, GPU-3a7f1c52-9be1-6d1c-2b0e-4e1b7c8a9f01, NVIDIA A100-SXM4-80GB, 40213, 81920, 97, 61
1, GPU-8c2e4b19-77aa-0f3d-51c6-90d2e3f4a502, NVIDIA A100-SXM4-80GB, 4, 81920, 0, 33
2, GPU-f1d0b7e2-31c4-88e9-a6b2-7c5d4e3f2a13, NVIDIA A100-SXM4-80GB, 61440, 81920, 100, 70
"""
# A workstation: a consumer card that reports [N/A] / [Not Supported] for some readings.
MIXED_GPUS = (
    "0, GPU-0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0, Tesla V100-PCIE-32GB, 0, 32768, 0, 38\r\n"
    "1,   GPU-99aa88bb-77cc-66dd-55ee-44ff33aa2211 ,  NVIDIA GeForce RTX 3090 , "
    "[N/A], 24576, [Not Supported], [N/A]\r\n"
    "\r\n"
)
DGX_APPS = """\
GPU-3a7f1c52-9be1-6d1c-2b0e-4e1b7c8a9f01, 48213, 40200
GPU-f1d0b7e2-31c4-88e9-a6b2-7c5d4e3f2a13, 48377, 61428
GPU-f1d0b7e2-31c4-88e9-a6b2-7c5d4e3f2a13, 50112, [N/A]
"""


def test_the_command_lines_are_exactly_the_documented_ones() -> None:
    assert GPU_COMMAND == (
        "nvidia-smi --query-gpu=index,uuid,name,memory.used,memory.total,"
        "utilization.gpu,temperature.gpu --format=csv,noheader,nounits"
    )
    assert COMPUTE_APPS_COMMAND == (
        "nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory --format=csv,noheader,nounits"
    )


def test_it_parses_a_dgx_node() -> None:
    gpus = parse_gpus(DGX_GPUS)

    assert [gpu.index for gpu in gpus] == [0, 1, 2]
    assert gpus[0] == GPUInfo(
        index=0,
        uuid="GPU-3a7f1c52-9be1-6d1c-2b0e-4e1b7c8a9f01",
        name="NVIDIA A100-SXM4-80GB",
        memory_used_mib=40213,
        memory_total_mib=81920,
        utilization_pct=97,
        temperature_c=61,
    )


def test_missing_readings_become_none_and_blanks_are_tolerated() -> None:
    gpus = parse_gpus(MIXED_GPUS)

    assert gpus[0].name == "Tesla V100-PCIE-32GB"
    assert gpus[1] == GPUInfo(
        index=1,
        uuid="GPU-99aa88bb-77cc-66dd-55ee-44ff33aa2211",
        name="NVIDIA GeForce RTX 3090",
        memory_used_mib=None,
        memory_total_mib=24576,
        utilization_pct=None,
        temperature_c=None,
    )


@pytest.mark.parametrize("marker", ["[N/A]", "N/A", "[Unknown Error]", "[GPU requires reset]"])
def test_every_unavailable_marker_the_driver_prints_is_none(marker: str) -> None:
    line = f"0, GPU-aa, NVIDIA A100-PCIE-40GB, {marker}, 40960, {marker}, 30"

    gpu = parse_gpus(line)[0]

    assert gpu.memory_used_mib is None
    assert gpu.utilization_pct is None


def test_a_name_with_a_comma_is_kept_whole() -> None:
    gpu = parse_gpus("3, GPU-bb, Quadro RTX 8000, rev 2, 10, 49152, 5, 40")[0]

    assert gpu.name == "Quadro RTX 8000, rev 2"
    assert gpu.memory_used_mib == 10


@pytest.mark.parametrize("text", ["", "\n", "  \r\n", "No devices were found\n"])
def test_no_gpus(text: str) -> None:
    assert parse_gpus(text) == []


@pytest.mark.parametrize(
    "text, message",
    [
        ("garbage", "line 1 'garbage': expected 7 fields"),
        (DGX_GPUS + "Failed to initialize NVML: Driver/library version mismatch\n", "line 4"),
        ("zero, GPU-aa, A100, 1, 2, 3, 4", "index is not a non-negative integer: 'zero'"),
        ("0, [N/A], A100, 1, 2, 3, 4", "uuid is missing ([N/A])"),
        ("0, GPU-aa, , 1, 2, 3, 4", "name is missing (empty)"),
        ("0, GPU-aa, A100, -1, 2, 3, 4", "memory.used is not a non-negative integer: '-1'"),
        ("0, GPU-aa, A100, 1, 2, 3, 45.5", "temperature.gpu is not a non-negative integer"),
        ("0, GPU-aa, A100, 1 MiB, 2, 3, 4", "memory.used is not a non-negative integer"),
    ],
)
def test_garbage_is_refused_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="unexpected nvidia-smi output") as raised:
        parse_gpus(text)

    assert message in str(raised.value)


def test_a_gpu_index_listed_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="index twice"):
        parse_gpus(DGX_GPUS + DGX_GPUS.splitlines()[0])


def test_it_parses_compute_apps() -> None:
    apps = parse_compute_apps(DGX_APPS)

    assert apps == [
        ComputeApp("GPU-3a7f1c52-9be1-6d1c-2b0e-4e1b7c8a9f01", 48213, 40200),
        ComputeApp("GPU-f1d0b7e2-31c4-88e9-a6b2-7c5d4e3f2a13", 48377, 61428),
        ComputeApp("GPU-f1d0b7e2-31c4-88e9-a6b2-7c5d4e3f2a13", 50112, None),
    ]


@pytest.mark.parametrize("text", ["", "\n", "No running processes found\n"])
def test_no_output_means_no_processes(text: str) -> None:
    assert parse_compute_apps(text) == []


@pytest.mark.parametrize(
    "text, message",
    [
        ("GPU-aa, 12", "line 1 'GPU-aa, 12': expected 3 fields"),
        ("GPU-aa, twelve, 10", "pid is not a non-negative integer: 'twelve'"),
        ("\nGPU-aa, 1, 2, 3", "line 2"),
        ("[N/A], 1, 2", "gpu_uuid is missing"),
    ],
)
def test_garbage_compute_apps_are_refused_naming_the_line(text: str, message: str) -> None:
    with pytest.raises(ValueError, match="unexpected nvidia-smi output") as raised:
        parse_compute_apps(text)

    assert message in str(raised.value)
