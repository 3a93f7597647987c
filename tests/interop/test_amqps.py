"""`amqps://`: a Celery client and `celeriac worker` reach RabbitMQ over TLS, with a private
CA and a client certificate given as Celery's `ssl_*` URL options (`broker_use_ssl` on the
Python side). The machine's RabbitMQ speaks plain text only, so a TLS-terminating proxy
of this module's own stands in front of it. A worker that cannot verify the server, or
has no certificate for a server that asks for one, refuses to start."""

import socket
import ssl
import subprocess
import threading
import urllib.parse

import pytest
from celery import Celery

from conftest import (
    AMQP_URL,
    CELERIAC,
    RABBITMQ,
    REDIS_URL,
    TASKS,
    make_certificates,
    make_client_certificate,
    worker_env,
)

TIMEOUT = 20


@pytest.fixture(scope="module")
def broker():
    """Queues live on RabbitMQ (and are deleted there)."""
    return RABBITMQ


class TlsProxy:
    """Listens for TLS on a free port of 127.0.0.1 with the test server certificate (asking
    for a client certificate signed by the test CA if `require_client_cert`), and relays
    each connection to RabbitMQ's plain-text port, a thread per direction. Blocking
    sockets, not asyncio: a refused handshake then still sends its alert, so the client
    learns why (asyncio drops the connection before the alert leaves)."""

    def __init__(self, ca, cert, key, require_client_cert):
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        if require_client_cert:
            self.context.verify_mode = ssl.CERT_REQUIRED
            self.context.load_verify_locations(ca)
        upstream = urllib.parse.urlsplit(AMQP_URL)
        self.upstream = (upstream.hostname or "127.0.0.1", upstream.port or 5672)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)  # so the accepting thread sees `closed` soon
        self.port = self.listener.getsockname()[1]
        self.sockets = []  # every socket opened, closed at the end
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.closed.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            connection.settimeout(None)
            self.sockets.append(connection)
            threading.Thread(target=self._relay, args=(connection,), daemon=True).start()

    def _relay(self, connection):
        try:
            client = self.context.wrap_socket(connection, server_side=True)
            server = socket.create_connection(self.upstream)
        except OSError:  # ssl.SSLError included: a refused handshake
            connection.close()
            return
        self.sockets += [client, server]
        threading.Thread(target=_pipe, args=(server, client), daemon=True).start()
        _pipe(client, server)

    def url(self, **ssl_options):
        """The `amqps://` URL of the proxy with `ssl_*` query options."""
        query = urllib.parse.urlencode({f"ssl_{name}": value for name, value in ssl_options.items()})
        return f"amqps://guest:guest@127.0.0.1:{self.port}//" + (f"?{query}" if query else "")

    def close(self):
        """Stops listening and ends every relayed connection."""
        self.closed.set()
        self.thread.join(10)
        self.listener.close()
        for sock in self.sockets:
            sock.close()


def _pipe(source, destination):
    """Copies `source` to `destination` until either ends, then closes both (so the other
    direction's thread ends too)."""
    try:
        while data := source.recv(65536):
            destination.sendall(data)
    except OSError:
        pass
    finally:
        source.close()
        destination.close()


@pytest.fixture(scope="module")
def certificates(tmp_path_factory):
    """(ca, server cert, server key, client cert, client key) paths, made for this module."""
    directory = tmp_path_factory.mktemp("amqps-certificates")
    ca, cert, key = make_certificates(directory)
    return (ca, cert, key, *make_client_certificate(directory))


@pytest.fixture(scope="module")
def proxies(certificates):
    """Two proxies to RabbitMQ: `proxies["mutual"]` asks for a client certificate,
    `proxies["server_only"]` does not. Module-scoped, so they outlive every worker."""
    ca, cert, key, _, _ = certificates
    started = {name: TlsProxy(ca, cert, key, require_client_cert=(name == "mutual"))
               for name in ("mutual", "server_only")}
    yield started
    for proxy in started.values():
        proxy.close()


def run_worker_to_exit(url, task_queue):
    """Runs `celeriac worker` on broker `url` until it exits (it should, at once)."""
    return subprocess.run(
        [str(CELERIAC), "worker", "--tasks", str(TASKS), "-Q", task_queue],
        env=worker_env({"CELERY_BROKER_URL": url, "CELERY_RESULT_BACKEND": REDIS_URL}),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_tasks_run_over_tls_with_a_client_certificate(
        proxies, certificates, start_celeriac_worker, unique_queue):
    ca, _, _, client_cert, client_key = certificates
    proxy = proxies["mutual"]
    url = proxy.url(cert_reqs="required", ca_certs=ca, certfile=client_cert, keyfile=client_key)
    node = f"amqps-{unique_queue}@test"
    worker = start_celeriac_worker(unique_queue, "-n", node, env_overrides={"CELERY_BROKER_URL": url})
    app = Celery("amqps", broker=proxy.url(), backend=REDIS_URL)
    app.conf.task_default_queue = unique_queue
    app.conf.broker_use_ssl = {"ca_certs": str(ca), "certfile": str(client_cert),
                               "keyfile": str(client_key), "cert_reqs": ssl.CERT_REQUIRED}
    try:
        assert app.send_task("tasks.add", args=(2, 3)).get(timeout=TIMEOUT) == 5
        assert app.send_task("rs.add", args=(4, 5)).get(timeout=TIMEOUT) == 9
        # Remote control goes through the worker's broadcast connection, with the same TLS.
        assert app.control.ping(destination=[node], timeout=1) == [{node: {"ok": "pong"}}]
    finally:
        app.close()
    done = subprocess.run(
        [str(CELERIAC), "call", "tasks.add", "-a", "[6, 7]", "-Q", unique_queue, "--wait", str(TIMEOUT)],
        env=worker_env({"CELERY_BROKER_URL": url}), capture_output=True, text=True, timeout=TIMEOUT + 10)
    assert (done.returncode, done.stdout.strip()) == (0, "13"), done.stderr
    assert f"amqps://guest:***@127.0.0.1:{proxy.port}//" in worker.output(), \
        "the banner shows the TLS transport"


def test_a_worker_that_cannot_verify_the_server_does_not_start(proxies, unique_queue):
    proxy = proxies["server_only"]
    done = run_worker_to_exit(proxy.url(), unique_queue)  # the system's roots lack our CA
    assert done.returncode != 0
    assert f"amqps://guest:***@127.0.0.1:{proxy.port}" in done.stderr, done.stderr
    assert "UnknownIssuer" in done.stderr, done.stderr


def test_a_worker_without_a_client_certificate_does_not_start(proxies, certificates, unique_queue):
    ca = certificates[0]
    proxy = proxies["mutual"]
    done = run_worker_to_exit(proxy.url(ca_certs=ca), unique_queue)
    assert done.returncode != 0
    assert f"amqps://guest:***@127.0.0.1:{proxy.port}" in done.stderr, done.stderr
    assert "CertificateRequired" in done.stderr, done.stderr


def test_a_missing_certificate_file_is_named(certificates, unique_queue):
    done = run_worker_to_exit(
        "amqps://guest:guest@127.0.0.1:1//?ssl_ca_certs=/no/such/ca.pem", unique_queue)
    assert done.returncode != 0
    assert "ssl_ca_certs /no/such/ca.pem" in done.stderr, done.stderr
