"""Runs a test module on every broker: `from every_broker import on_every_broker` in it
replaces conftest's `broker` fixture (Redis) with one that is Redis, then RabbitMQ, so the
module's workers, clients and queues are set up once per broker. Results stay in Redis."""

import pytest

from conftest import RABBITMQ, REDIS


@pytest.fixture(scope="module", name="broker", params=[REDIS, RABBITMQ], ids=repr)
def on_every_broker(request):
    return request.param
