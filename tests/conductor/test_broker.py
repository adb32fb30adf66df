"""The broker path end to end: Redis, a real Dramatiq Worker, PostgreSQL."""

from __future__ import annotations

import time

import pytest
from dramatiq import Worker

from cases.models import Case, WorkflowStep
from mqi_site import messaging
from mqi_site.messaging import CONDUCTOR, QUEUES, Command
from tests.brokers import redis_broker_swapped_in
from tests.conductor.helpers import held_gpu, make_gpus

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def redis_broker():
    with redis_broker_swapped_in() as broker:
        yield broker


def next_message(broker, queue_name: str, timeout_sec: float = 10):
    """The next message on ``queue_name``; the consumer yields None while it waits."""
    consumer = broker.consume(queue_name, timeout=100)
    deadline = time.monotonic() + timeout_sec
    try:
        for message in consumer:
            if message is not None:
                consumer.ack(message)
                return message
            if time.monotonic() > deadline:
                raise AssertionError(f"nothing arrived on {queue_name} in {timeout_sec} s")
    finally:
        consumer.close()


def test_new_case_found_produces_the_upload_on_the_file_transfer_queue(redis_broker):
    make_gpus(2)
    worker = Worker(redis_broker, queues={QUEUES[CONDUCTOR]}, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        messaging.send(
            CONDUCTOR,
            Command.NEW_CASE_FOUND,
            {"case_id": "case-1", "source_path": "/incoming/case-1"},
        )
        message = next_message(redis_broker, QUEUES["file_transfer"])
    finally:
        worker.stop()

    run = WorkflowStep.objects.get()
    assert message.actor_name == "file_transfer"
    assert list(message.args) == [Command.UPLOAD_CASE, {"case_id": "case-1", "step_run_id": run.pk}]
    case = Case.objects.get()
    assert case.status == Case.Status.PROCESSING
    assert held_gpu(case) is not None


def test_outcome_through_the_broker_dispatches_the_next_step(redis_broker):
    make_gpus(1)
    worker = Worker(redis_broker, queues={QUEUES[CONDUCTOR]}, worker_threads=2, worker_timeout=100)
    worker.start()
    try:
        messaging.send(CONDUCTOR, Command.NEW_CASE_FOUND, {"case_id": "c", "source_path": "/in/c"})
        upload = next_message(redis_broker, QUEUES["file_transfer"])
        step_run_id = upload.args[1]["step_run_id"]
        reply = {"case_id": "c", "step_run_id": step_run_id}
        messaging.send(CONDUCTOR, Command.CASE_UPLOAD_COMPLETED, reply)
        messaging.send(CONDUCTOR, Command.CASE_UPLOAD_COMPLETED, reply)  # delivered twice
        execute = next_message(redis_broker, QUEUES["remote_executor"])
        redis_broker.join(QUEUES[CONDUCTOR], timeout=10_000)
        worker.join()
    finally:
        worker.stop()

    assert execute.args[0] == Command.EXECUTE_COMMAND
    assert WorkflowStep.objects.filter(case__case_id="c").count() == 2
    assert Case.objects.get().workflow_step == "run_interpreter"
