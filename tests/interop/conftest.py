"""Fixtures for the interoperability tests: a real `celeriac worker` on the machine's Redis
(or RabbitMQ), serving the example components, and an unmodified Celery client pointed at it.

Each test module uses its own queue, so nothing else on the servers is touched. Tests that
need a worker of their own (other options, or started only after messages are queued) start
one with `start_celeriac_worker` on a `unique_queue`. The broker is the `broker` fixture:
Redis, unless a module runs on every broker (`every_broker.py`). Results always go to Redis.
"""

import os
import pathlib
import queue
import re
import signal
import socket
import subprocess
import threading
import time
import uuid

import kombu
import pytest
import redis
from celery import Celery

ROOT = pathlib.Path(__file__).resolve().parents[2]
CELERIAC = ROOT / "target" / "release" / "celeriac"
TASKS = ROOT / "target" / "wasm-tasks"
REDIS_URL = os.environ.get("CELERIAC_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("CELERIAC_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
READY_TIMEOUT = 90
STOP_TIMEOUT = 30
#: kombu's Redis transport keeps priority 3, 6 and 9 messages of queue `q` in the lists
#: `q\x06\x163`, `q\x06\x166`, `q\x06\x169`, next to `q` for 0 (its default `sep`, `priority_steps`).
PRIORITY_SEP = "\x06\x16"


#: The environment variable through which tests/interop/configured_tasks.py gives a Python
#: worker extra Celery settings (a JSON object); not `CELERY_*`, which worker_env drops.
PYTHON_WORKER_SETTINGS = "INTEROP_CELERY_SETTINGS"

#: Seconds a test waits for a result or a condition.
TIMEOUT = 30


def wait_until(condition, what, timeout=TIMEOUT):
    """Polls `condition` every 50 ms; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def worker_env(overrides=None):
    """The environment a worker runs with: ours without any `CELERY_*`/`CELERIAC_*`
    variable, pointed at the test Redis, then `overrides`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "CELERIAC_"))}
    env["CELERY_BROKER_URL"] = REDIS_URL
    env["CELERY_RESULT_BACKEND"] = REDIS_URL
    env["CELERIAC_CACHE_DIR"] = str(ROOT / "target" / "test-compile-cache")
    env.update(overrides or {})
    return env


class WorkerProcess:
    """A worker process (`celeriac worker` or `celery worker`) started at construction, with
    every line it has logged so far in `log` (stdout and stderr together)."""

    def __init__(self, name, argv, env):
        self.name = name
        self.log = []
        self._lines = queue.Queue()
        self.process = subprocess.Popen(
            argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._pump_thread = threading.Thread(target=self._pump, daemon=True)
        self._pump_thread.start()

    def _pump(self):
        for line in self.process.stdout:
            self.log.append(line)
            self._lines.put(line)

    def output(self):
        return "".join(self.log)

    def wait_ready(self):
        """Returns self once the worker has logged `ready.`; fails (killing it) if it exits
        or takes longer than READY_TIMEOUT."""
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.process.poll() is not None:
                self.process.kill()
                raise AssertionError(f"{self.name} did not become ready:\n{self.output()}")
            try:
                if "ready." in self._lines.get(timeout=min(remaining, 1.0)):
                    return self
            except queue.Empty:
                continue

    def task_ids(self, event):
        """The ids of the tasks the worker logged `event` for ("received", "succeeded"), in
        log order."""
        pattern = re.compile(r"Task \S+\[([^\]]+)\] " + re.escape(event) + r"\b")
        return [match.group(1) for line in list(self.log) for match in pattern.finditer(line)]

    def wait_logged(self, event, task_ids, timeout=5):
        """`task_ids(event)` once every id in `task_ids` is among them: a worker's log lines
        may trail the results it stored by a moment."""
        deadline = time.monotonic() + timeout
        while not set(task_ids) <= set(self.task_ids(event)):
            assert time.monotonic() < deadline, f"not every task logged {event!r}:\n{self.output()}"
            time.sleep(0.02)
        return self.task_ids(event)

    def stop(self):
        """SIGTERM, then waits for the warm shutdown; fails if it takes too long."""
        if self.process.poll() is not None:
            self._read_to_end()
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.process.kill()
            raise AssertionError(
                f"{self.name} did not stop within {STOP_TIMEOUT} s of SIGTERM:\n{self.output()}"
            )
        self._read_to_end()

    def kill(self):
        """SIGKILL: no shutdown at all."""
        self.process.kill()
        self.process.wait()
        self._read_to_end()

    def _read_to_end(self):
        """Waits until every line the exited process wrote is in `log`."""
        self._pump_thread.join(timeout=10)


def start_celeriac(task_queue, *options, concurrency=2, env_overrides=None, tasks_dir=TASKS):
    """Starts `celeriac worker -Q task_queue -c concurrency -l info *options` serving
    `tasks_dir` (the example components unless told otherwise), on the test Redis unless
    `env_overrides` says otherwise, and returns it once it is ready."""
    assert CELERIAC.is_file(), f"{CELERIAC} is missing: run scripts/test.sh (it builds it)"
    assert (TASKS / "tasks.wasm").is_file(), f"{TASKS} has no tasks.wasm: run scripts/build-examples.sh"
    argv = [str(CELERIAC), "worker", "--tasks", str(tasks_dir), "-Q", task_queue,
            "-c", str(concurrency), "-l", "info", *options]
    return WorkerProcess("celeriac worker", argv, worker_env(env_overrides)).wait_ready()


def make_certificates(directory):
    """A test CA and a server certificate it signed for localhost and 127.0.0.1 (a
    self-signed CA certificate cannot serve as the server's own: rustls refuses it), as
    (ca.pem, cert.pem, key.pem) paths in `directory`."""
    ca, ca_key = directory / "ca.pem", directory / "ca-key.pem"
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-keyout", ca_key,
             "-out", ca, "-subj", "/CN=celeriac test CA")
    cert, key = _sign(directory, "cert", "/CN=localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1")
    return ca, cert, key


def make_client_certificate(directory):
    """A client certificate signed by the CA `make_certificates(directory)` made, as
    (client.pem, client-key.pem) paths in `directory`."""
    return _sign(directory, "client", "/CN=celeriac test client", "extendedKeyUsage=clientAuth")


def _sign(directory, name, subject, extension):
    """A key and a certificate for `subject` with `extension`, signed by the CA in
    `directory`, as (<name>.pem, <name>-key.pem) paths there."""
    cert, key = directory / f"{name}.pem", directory / f"{name}-key.pem"
    request, extensions = directory / f"{name}.csr", directory / f"{name}.ext"
    extensions.write_text(extension + "\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", request, "-subj", subject)
    _openssl("x509", "-req", "-in", request, "-CA", directory / "ca.pem", "-CAkey",
             directory / "ca-key.pem", "-CAcreateserial", "-days", "2", "-out", cert,
             "-extfile", extensions)
    return cert, key


def _openssl(*argv):
    subprocess.run(["openssl", *map(str, argv)], check=True, capture_output=True)


class RedisServer:
    """A private `redis-server` in `directory`, for tests that restart it or need settings
    of their own. With `persistent`, every write reaches the append-only file before Redis
    answers it, so a restart keeps the queues. With `tls`, it listens for TLS only, with a
    self-signed certificate made in `directory`, and `url` is a Celery `rediss://` URL
    that trusts it."""

    def __init__(self, directory, persistent=False, tls=False):
        self.directory = directory
        self.persistent = persistent
        self.tls = tls
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        if tls:
            self.ca, self.cert, self.key = make_certificates(directory)
            self.url = (f"rediss://127.0.0.1:{self.port}/0"
                        f"?ssl_cert_reqs=required&ssl_ca_certs={self.ca}")
        else:
            self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process = None

    def start(self):
        if self.persistent:
            persistence = ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            persistence = ["--appendonly", "no"]
        if self.tls:
            listen = ["--port", "0", "--tls-port", str(self.port), "--tls-cert-file", str(self.cert),
                      "--tls-key-file", str(self.key), "--tls-auth-clients", "no"]
        else:
            listen = ["--port", str(self.port)]
        self.process = subprocess.Popen(
            ["redis-server", *listen, "--bind", "127.0.0.1", "--save", "",
             "--dir", str(self.directory), "--logfile", str(self.directory / "redis.log"), *persistence],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client().ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise AssertionError(f"redis-server on port {self.port} did not start:\n{self.log()}")
                time.sleep(0.05)

    def stop(self):
        """SIGTERM: Redis's own clean shutdown, which flushes the append-only file."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(timeout=10)

    def client(self):
        return redis.Redis.from_url(self.url, decode_responses=True)

    def env(self):
        """Worker environment pointing broker and result backend at this server."""
        return {"CELERY_BROKER_URL": self.url, "CELERY_RESULT_BACKEND": self.url}

    def log(self):
        path = self.directory / "redis.log"
        return path.read_text() if path.exists() else ""


@pytest.fixture
def start_redis(tmp_path):
    """Starts private Redis servers for one test (`start_redis(persistent=False, tls=False)`);
    they are stopped when the test ends, after its workers."""
    servers = []

    def start(persistent=False, tls=False):
        directory = tmp_path / f"redis-{len(servers)}"
        directory.mkdir()
        server = RedisServer(directory, persistent, tls)
        servers.append(server)
        return server.start()

    yield start
    for server in servers:
        server.stop()


class Broker:
    """A broker the tests run on: its URL, the environment and clients that use it (with
    results in the test Redis unless told otherwise), and how its queues are deleted."""

    def __init__(self, name, url):
        self.name = name
        self.url = url

    def __repr__(self):
        return self.name

    def env(self, backend=REDIS_URL):
        """A worker's environment overrides for this broker and `backend`."""
        return {"CELERY_BROKER_URL": self.url, "CELERY_RESULT_BACKEND": backend}

    def client(self, task_queue, backend=REDIS_URL, **settings):
        """An unmodified Celery client sending to `task_queue`, with extra `settings`."""
        client = Celery("interop", broker=self.url, backend=backend)
        client.conf.task_default_queue = task_queue
        client.conf.result_expires = 600
        client.conf.update(settings)
        return client


class RedisBroker(Broker):
    def delete_queues(self, names):
        """Deletes each queue's lists (every priority) and its kombu binding."""
        client = redis.Redis.from_url(self.url)
        try:
            for name in names:
                client.delete(name, *(f"{name}{PRIORITY_SEP}{step}" for step in (3, 6, 9)),
                              f"_kombu.binding.{name}")
        finally:
            client.close()


class RabbitBroker(Broker):
    def delete_queues(self, names):
        """Deletes each queue and the direct exchange Celery declares beside it."""
        with kombu.Connection(self.url) as connection:
            channel = connection.default_channel
            for name in names:
                channel.queue_delete(name)
                channel.exchange_delete(name)


REDIS = RedisBroker("redis", REDIS_URL)
RABBITMQ = RabbitBroker("rabbitmq", AMQP_URL)


@pytest.fixture(scope="module")
def broker():
    """The broker of a module's workers and clients: Redis. A module imports
    `every_broker.on_every_broker` to run on RabbitMQ as well."""
    return REDIS


@pytest.fixture(scope="module")
def make_queue(broker):
    """Makes queue names no other test uses (`make_queue(prefix="interop")`); they are
    deleted from the broker when the module (or its broker) is done."""
    names = []

    def make(prefix="interop"):
        name = f"{prefix}-{uuid.uuid4()}"
        names.append(name)
        return name

    yield make
    broker.delete_queues(names)


@pytest.fixture(scope="module")
def task_queue(make_queue):
    return make_queue()


def queue_for_one_test(broker, prefix):
    """Yields a queue name no other test uses, then deletes the queue from `broker`."""
    name = f"{prefix}-{uuid.uuid4()}"
    yield name
    broker.delete_queues([name])


@pytest.fixture
def unique_queue(broker):
    """A queue name no other test uses, on the module's broker; deleted after the test."""
    yield from queue_for_one_test(broker, "interop")


@pytest.fixture
def rabbitmq_queue():
    """A queue name no other test uses, on RabbitMQ whatever the module's broker; the queue
    and its exchange are deleted after the test."""
    yield from queue_for_one_test(RABBITMQ, "interop-amqp")


@pytest.fixture(scope="module")
def celeriac_worker(task_queue, broker):
    """A `celeriac worker` consuming `task_queue`; its log lines are kept for assertions."""
    worker = start_celeriac(task_queue, env_overrides=broker.env())
    yield worker.log
    worker.stop()


@pytest.fixture
def start_celeriac_worker(broker):
    """Starts extra workers for one test on the module's broker: `start_celeriac_worker(queue,
    *options, **kw)` takes `start_celeriac`'s arguments (`env_overrides` on top of the
    broker's) and returns a ready `WorkerProcess`; every worker it started is stopped when
    the test ends."""
    started = []

    def start(task_queue, *options, env_overrides=None, **kw):
        env = {**broker.env(), **(env_overrides or {})}
        worker = start_celeriac(task_queue, *options, env_overrides=env, **kw)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="module")
def make_client(task_queue, broker):
    """Builds Celery clients on the module's broker sending to `task_queue`, each with extra
    settings (`make_client(accept_content=[...])`); they are closed at the end."""
    clients = []

    def make(**settings):
        client = broker.client(task_queue, **settings)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture(scope="session")
def redis_client():
    """A plain redis-py client on the test Redis, to look at what a client queued or stored."""
    client = redis.Redis.from_url(REDIS_URL)
    yield client
    client.close()


@pytest.fixture(scope="module")
def app(make_client):
    """An unmodified Celery client on the module's broker, sending to the worker's queue."""
    return make_client()
