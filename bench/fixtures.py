"""Rows and messages a benchmark starts from, made in bulk: GPUs in the database, and
Dramatiq messages pushed onto a queue as the Redis broker's enqueue would."""

from __future__ import annotations

import uuid

from dramatiq import Message

from bench.infra import queue_key, redis_client
from gpus.models import GPUResource


def gpus(count: int, *, host: str = "gpu1", first_index: int = 0) -> list[GPUResource]:
    return GPUResource.objects.bulk_create(
        GPUResource(host=host, index=first_index + i, uuid=f"GPU-{host}-{first_index + i}")
        for i in range(count)
    )


def bulk_enqueue(queue: str, actor: str, payloads: list[tuple[str, dict]]) -> None:
    """Put many messages on ``queue`` at once, as the Redis broker's enqueue would."""
    client = redis_client()
    key = queue_key(queue)
    pipe = client.pipeline(transaction=False)
    for command, payload in payloads:
        redis_id = str(uuid.uuid4())
        message = Message(
            queue_name=queue,
            actor_name=actor,
            args=(command, payload),
            kwargs={},
            options={"redis_message_id": redis_id},
        )
        pipe.hset(f"{key}.msgs", redis_id, message.encode())
        pipe.rpush(key, redis_id)
        if len(pipe) >= 2000:
            pipe.execute()
    pipe.execute()
