"""GPU discovery from the stand-in nvidia-smi: inventory, readings, vanished GPUs and
processes this system did not start."""

from __future__ import annotations

import json

import pytest

from conductor.transitions import case_register
from gpus.models import GPUResource
from mqi_site.config import get_config
from tests.conductor.helpers import held_gpu, holder
from workers.gpu_discovery.sync import sync_gpus

pytestmark = pytest.mark.django_db(transaction=True)


def gpu(index: int, **readings) -> dict:
    return {
        "index": index,
        "uuid": f"GPU-{index:08d}-aaaa-bbbb-cccc-000000000000",
        "name": "NVIDIA A100-SXM4-80GB",
        "memory_used": 1024,
        "memory_total": 81920,
        "utilization": 12,
        "temperature": 41,
        **readings,
    }


@pytest.fixture
def fake_gpus(monkeypatch, tmp_path):
    """Set what the stand-in nvidia-smi reports (the local transport passes the env on)."""

    def report(gpus: list[dict], apps: list[dict] = ()) -> None:
        (tmp_path / "gpus.json").write_text(json.dumps(gpus))
        (tmp_path / "apps.json").write_text(json.dumps(list(apps)))
        monkeypatch.setenv("MQI_FAKE_GPUS", str(tmp_path / "gpus.json"))
        monkeypatch.setenv("MQI_FAKE_GPU_APPS", str(tmp_path / "apps.json"))

    return report


def test_discovery_creates_one_row_per_gpu_with_its_readings(stub_broker, fake_gpus):
    fake_gpus([gpu(0), gpu(1, utilization=97, temperature=70)])

    (report,) = sync_gpus(get_config())

    assert (report.seen, report.added, report.error) == (2, 2, "")
    rows = list(GPUResource.objects.order_by("index"))
    assert [(g.host, g.index, g.status) for g in rows] == [
        ("local", 0, "AVAILABLE"),
        ("local", 1, "AVAILABLE"),
    ]
    assert (rows[1].utilization_pct, rows[1].temperature_c, rows[1].memory_total_mib) == (
        97,
        70,
        81920,
    )
    assert rows[0].name == "NVIDIA A100-SXM4-80GB" and rows[0].last_seen is not None


def test_a_vanished_free_gpu_goes_offline_and_comes_back(stub_broker, fake_gpus):
    fake_gpus([gpu(0), gpu(1)])
    sync_gpus(get_config())

    fake_gpus([gpu(0)])
    (gone,) = sync_gpus(get_config())
    assert gone.offline == 1
    assert GPUResource.objects.get(index=1).status == GPUResource.Status.OFFLINE

    fake_gpus([gpu(0), gpu(1)])
    (back,) = sync_gpus(get_config())
    assert back.back == 1
    assert GPUResource.objects.get(index=1).status == GPUResource.Status.AVAILABLE


def test_a_vanished_reserved_gpu_is_never_taken_from_its_case(stub_broker, fake_gpus):
    fake_gpus([gpu(0)])
    sync_gpus(get_config())
    case = case_register(case_id="QA-1", source_path="/in/QA-1")

    fake_gpus([])
    sync_gpus(get_config())

    held = GPUResource.objects.get(index=0)
    assert held.status == GPUResource.Status.RESERVED
    assert holder(held) == case


def test_a_gpu_busy_with_a_foreign_process_is_not_handed_out(stub_broker, fake_gpus):
    fake_gpus([gpu(0), gpu(1)], apps=[{"gpu_index": 0, "pid": 4242, "used_memory": 2048}])

    (report,) = sync_gpus(get_config())
    case = case_register(case_id="QA-2", source_path="/in/QA-2")

    assert report.foreign_busy == [0]
    assert GPUResource.objects.get(index=0).foreign_processes == 1
    case.refresh_from_db()
    assert held_gpu(case).index == 1

    fake_gpus([gpu(0), gpu(1)])  # the foreign process ended
    sync_gpus(get_config())
    assert GPUResource.objects.get(index=0).foreign_processes == 0


def test_a_failing_nvidia_smi_leaves_the_gpus_as_they_were(stub_broker, fake_gpus, monkeypatch):
    fake_gpus([gpu(0)])
    sync_gpus(get_config())
    monkeypatch.setenv("MQI_FAKE_SMI_FAIL", "1")

    (report,) = sync_gpus(get_config())

    assert "nvidia-smi on local exited with 9" in report.error
    assert GPUResource.objects.get(index=0).status == GPUResource.Status.AVAILABLE


def test_static_gpus_for_hosts_without_nvidia_smi(stub_broker, use_config):
    use_config(
        lambda raw: raw["hosts"]["local"].update(
            gpu_discovery="static", static_gpus=[{"index": 0, "name": "RTX A6000"}, {"index": 3}]
        )
    )

    sync_gpus(get_config())

    assert list(GPUResource.objects.order_by("index").values_list("index", "name")) == [
        (0, "RTX A6000"),
        (3, "GPU"),
    ]


def test_discovery_over_ssh(discovered_gpus):
    assert list(GPUResource.objects.values_list("host", "index")) == [("gpu1", 0), ("gpu1", 1)]
