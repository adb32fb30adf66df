"""One bad value from nvidia-smi costs only its own line: the host's other GPUs and the
other hosts are still brought in line, nothing reaches the database that it would refuse,
and no GPU is taken for vanished because of a line that could not be read."""

from __future__ import annotations

import json

import pytest

from gpus.models import GPUResource
from mqi_site.config import get_config
from workers.gpu_discovery.sync import sync_gpus

pytestmark = pytest.mark.django_db(transaction=True)

STANDIN = 'python "$MQI_PROJECT_DIR/hpc_standins/nvidia-smi"'


def gpu(index: int, **values: object) -> dict:
    return {
        "index": index,
        "uuid": f"GPU-{index:08d}-aaaa",
        "name": "NVIDIA A100",
        "temperature": 41,
        **values,
    }


@pytest.fixture
def two_hosts(use_config, tmp_path):
    """Hosts ``a`` and ``b`` on this machine, each with its own fake nvidia-smi output."""

    def report(a: list[dict], b: list[dict]) -> None:
        for host, gpus in (("a", a), ("b", b)):
            (tmp_path / f"{host}.json").write_text(json.dumps(gpus))

    def edit(raw: dict) -> None:
        raw["hosts"] = {
            host: {
                "transport": "local",
                "nvidia_smi": f"MQI_FAKE_GPUS={tmp_path}/{host}.json {STANDIN}",
            }
            for host in ("a", "b")
        }

    report([gpu(0), gpu(1)], [gpu(0)])
    use_config(edit)
    return report


def rows() -> dict[tuple[str, int], GPUResource]:
    return {(g.host, g.index): g for g in GPUResource.objects.all()}


BAD = {
    "5000-digit temperature": {"temperature": "9" * 5000},
    "memory beyond 32 bits": {"memory_total": 10**12},
    "utilization of 250 %": {"utilization": 250},
    "a word for a reading": {"utilization": "hot"},
    "a 300-character name": {"name": "A" * 300},
    "a NUL in the name": {"name": "A100\u0000"},
    "an escape in the uuid": {"uuid": "GPU-\u001b[2J"},
    "a 100-character uuid": {"uuid": "GPU-" + "a" * 100},
    "a word for the index": {"index": "one"},
}


@pytest.mark.parametrize("bad", BAD.values(), ids=BAD.keys())
def test_one_bad_value_costs_only_its_gpu(two_hosts, stub_broker, bad):
    sync_gpus(get_config())  # all four GPUs known and free
    two_hosts([gpu(0, temperature=55), {**gpu(1), **bad}], [gpu(0, temperature=66)])

    report_a, report_b = sync_gpus(get_config())

    found = rows()
    assert found["a", 0].temperature_c == 55  # the host's good GPU was read
    assert found["b", 0].temperature_c == 66  # and the other host
    assert found["a", 1].status == GPUResource.Status.AVAILABLE  # unread, not vanished
    assert (found["a", 1].name, found["a", 1].temperature_c) == ("NVIDIA A100", 41)
    assert "unexpected nvidia-smi output on line 2" in report_a.error
    assert report_b.error == ""


def test_a_gpu_that_is_really_gone_still_goes_offline(two_hosts, stub_broker):
    sync_gpus(get_config())
    two_hosts([gpu(0)], [gpu(0)])

    sync_gpus(get_config())

    assert rows()["a", 1].status == GPUResource.Status.OFFLINE


def test_an_unreadable_process_list_keeps_the_readings_coming(
    two_hosts, stub_broker, tmp_path, monkeypatch
):
    (tmp_path / "apps.json").write_text(json.dumps([{"gpu_index": 0, "pid": "x" * 50}]))
    monkeypatch.setenv("MQI_FAKE_GPU_APPS", str(tmp_path / "apps.json"))
    two_hosts([gpu(0, temperature=55), gpu(1)], [gpu(0)])

    report_a, _ = sync_gpus(get_config())

    assert rows()["a", 0].temperature_c == 55
    assert "pid is not a non-negative integer" in report_a.error
