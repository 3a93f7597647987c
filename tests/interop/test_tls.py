"""`rediss://`: a Celery client and `celeriac worker` share a Redis that speaks only TLS,
with Celery's `ssl_cert_reqs`/`ssl_ca_certs` URL options, and a worker that cannot verify
the server refuses to start rather than talk in clear."""

import subprocess

from celery import Celery

from conftest import CELERIAC, TASKS, worker_env

TIMEOUT = 20


def test_tasks_run_over_tls_with_a_trusted_ca(start_redis, start_celeriac_worker, unique_queue):
    server = start_redis(tls=True)
    worker = start_celeriac_worker(unique_queue, env_overrides=server.env())
    app = Celery("tls", broker=server.url, backend=server.url)
    app.conf.task_default_queue = unique_queue
    try:
        assert app.send_task("tasks.add", args=(2, 3)).get(timeout=TIMEOUT) == 5
        assert app.send_task("rs.add", args=(4, 5)).get(timeout=TIMEOUT) == 9
    finally:
        app.close()
    assert "rediss://127.0.0.1" in worker.output(), "the banner shows the TLS transport"


def test_a_worker_that_cannot_verify_the_server_does_not_start(start_redis, unique_queue):
    server = start_redis(tls=True)
    untrusted = server.url.split("?")[0]  # the system's roots do not include our CA
    done = subprocess.run(
        [str(CELERIAC), "worker", "--tasks", str(TASKS), "-Q", unique_queue],
        env=worker_env({"CELERY_BROKER_URL": untrusted, "CELERY_RESULT_BACKEND": untrusted}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "broker rediss://127.0.0.1" in done.stderr, done.stderr
