"""scan_cases and sync_gpus through call_command."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
from django.core.management import call_command

from gpus.models import GPUResource
from mqi_site.config import get_config
from mqi_site.messaging import QUEUES
from tests.conftest import drain
from tests.workers.conftest import make_case

pytestmark = pytest.mark.django_db(transaction=True)


def test_scan_cases_reports_new_and_waiting_folders(stub_broker):
    watch = Path(get_config().scanner.watch_dir)
    watch.mkdir(parents=True)
    make_case(watch, "QA-1")
    unfinished = make_case(watch, "QA-2")
    (unfinished / "READY").unlink()
    out = StringIO()

    call_command("scan_cases", stdout=out)

    assert "new: QA-1" in out.getvalue()
    assert "not complete yet: QA-2" in out.getvalue()
    assert [m.args[1]["case_id"] for m in drain(stub_broker, QUEUES["conductor"])] == ["QA-1"]


def test_sync_gpus_lists_the_gpus_it_found(stub_broker):
    out = StringIO()

    call_command("sync_gpus", stdout=out)

    assert "local: 2 seen, 2 new" in out.getvalue()
    assert "local:0" in out.getvalue() and "AVAILABLE" in out.getvalue()
    assert GPUResource.objects.count() == 2
