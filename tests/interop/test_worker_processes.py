"""`celeriac worker --processes N` on Redis, seen from an unmodified Celery client: each
process is a node of its own that answers `ping` and runs tasks; a SIGTERM to the
supervisor shuts every process down warmly; a process that dies is restarted; processes
whose supervisor is killed stop by themselves. Also for one worker as for several: a
SIGTERM while the components still compile stops the start-up warmly, without leaving a
compile running.
"""

import os
import signal
import socket
import subprocess
import time
import uuid

import pytest

from conftest import (CELERIAC, STOP_TIMEOUT, TASKS, TIMEOUT, WorkerProcess, start_celeriac,
                      wait_until, worker_env)


@pytest.fixture
def node_name():
    return f"procs-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def supervised(task_queue, node_name):
    """A `celeriac worker --processes 2 -c 1` on the module's queue (where `app` sends)."""
    worker = start_celeriac(task_queue, "--processes", "2", "-n", f"{node_name}@%h",
                            concurrency=1)
    yield worker
    if worker.process.poll() is None:
        leftovers = worker_pids(worker)
        worker.kill()
        for pid in leftovers:
            kill_quietly(pid)


def nodes(node_name):
    host = socket.gethostname()
    return {f"{node_name}-1@{host}", f"{node_name}-2@{host}"}


def pinged(app, names):
    """The nodes among `names` that answer a ping."""
    replies = app.control.ping(destination=sorted(names), timeout=1.0)
    return {node for reply in replies for node in reply} & names


def worker_pids(worker):
    """The pids of the supervisor's children (its worker processes)."""
    children = f"/proc/{worker.process.pid}/task/{worker.process.pid}/children"
    try:
        with open(children) as listing:
            return [int(pid) for pid in listing.read().split()]
    except FileNotFoundError:
        return []


def runtime_threads(pid):
    """The threads process `pid`'s tokio runtime was told to run (tokio names its blocking
    threads like its workers, so they cannot be counted apart)."""
    with open(f"/proc/{pid}/environ", "rb") as environ:
        settings = dict(entry.split(b"=", 1) for entry in environ.read().split(b"\0") if entry)
    return int(settings[b"TOKIO_WORKER_THREADS"])


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child of a killed supervisor is reparented and reaped by init; one still listed as a
    # zombie has exited.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def kill_quietly(pid):
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def test_each_process_is_a_node_that_runs_tasks_and_sigterm_stops_all(supervised, app,
                                                                       node_name):
    names = nodes(node_name)
    wait_until(lambda: pinged(app, names) == names, "both processes answering ping")
    results = [app.send_task("tasks.add", (i, i)) for i in range(20)]
    assert [result.get(timeout=TIMEOUT) for result in results] == [2 * i for i in range(20)]
    pids = worker_pids(supervised)
    assert len(pids) == 2, supervised.output()
    # Each process's async runtime gets its share of the CPUs, not all of them.
    share = max(1, len(os.sched_getaffinity(0)) // 2)
    assert [runtime_threads(pid) for pid in pids] == [share, share]

    supervised.stop()

    assert supervised.process.returncode == 0, supervised.output()
    assert not [pid for pid in pids if alive(pid)], supervised.output()
    output = supervised.output()
    assert "WorkerProcess-1" in output and "WorkerProcess-2" in output, output
    assert "Cold shutdown" not in output, "one SIGTERM reached each process once"


def test_a_killed_process_is_restarted_and_serves_again(supervised, app, node_name):
    names = nodes(node_name)
    wait_until(lambda: pinged(app, names) == names, "both processes answering ping")
    first, second = worker_pids(supervised)

    os.kill(first, signal.SIGKILL)

    def replacements():
        return [pid for pid in worker_pids(supervised) if pid not in (first, second)]

    wait_until(replacements, "a new worker process")
    assert len(replacements()) == 1 and second in worker_pids(supervised), supervised.output()
    assert "died (signal: 9 (SIGKILL)); restarting it" in supervised.output()
    wait_until(lambda: pinged(app, names) == names, "both processes answering ping again")
    assert app.send_task("tasks.add", (2, 3)).get(timeout=TIMEOUT) == 5


def test_sigterm_calls_off_a_pending_restart(supervised, app, node_name):
    names = nodes(node_name)
    wait_until(lambda: pinged(app, names) == names, "both processes answering ping")
    survivor, dying = worker_pids(supervised)
    # Each death within 10 s of its start doubles the wait before the restart: 1, 2, 4 s,
    # and after the fourth death 8 s.
    killed = set()
    for _ in range(4):
        os.kill(dying, signal.SIGKILL)
        killed.add(dying)

        def restarted():
            return [pid for pid in worker_pids(supervised) if pid not in killed | {survivor}]

        if len(killed) < 4:
            wait_until(restarted, "the restarted process")
            [dying] = restarted()
    wait_until(lambda: "restarting it in 8 s" in supervised.output(), "the 8 s restart wait")

    started = time.monotonic()
    supervised.stop()

    assert time.monotonic() - started < 6, "the supervisor waited for the restart"
    assert supervised.process.returncode == 0, supervised.output()
    assert not alive(survivor)


def test_processes_stop_when_their_supervisor_is_killed(supervised, app, node_name):
    names = nodes(node_name)
    wait_until(lambda: pinged(app, names) == names, "both processes answering ping")
    pids = worker_pids(supervised)
    assert len(pids) == 2, supervised.output()

    supervised.kill()

    deadline = time.monotonic() + STOP_TIMEOUT
    while [pid for pid in pids if alive(pid)] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if alive(pid)], "orphaned worker processes kept running"
    assert not pinged(app, names)


def test_a_statedb_without_the_node_name_is_refused(unique_queue, tmp_path):
    refused = subprocess.run(
        [str(CELERIAC), "worker", "--tasks", str(TASKS), "-Q", unique_queue, "--processes", "2",
         "--statedb", str(tmp_path / "worker.db")],
        env=worker_env(), capture_output=True, text=True, timeout=60)

    assert refused.returncode == 2, refused
    assert "put %n (the node name) in it" in refused.stderr, refused.stderr


def test_a_process_that_cannot_start_stops_them_all(unique_queue):
    failed = subprocess.run(
        [str(CELERIAC), "worker", "--tasks", str(TASKS), "-Q", unique_queue, "--processes", "2",
         "-b", "redis://127.0.0.1:1/0"],
        env=worker_env(), capture_output=True, text=True, timeout=120)

    assert failed.returncode == 2, failed
    assert "Connection refused" in failed.stderr, failed.stderr
    assert "could not start (exit status: 2); stopping the others" in failed.stderr, failed.stderr
    assert "restarting" not in failed.stderr, failed.stderr


def compile_children(cache_dir):
    """The pids of `celeriac compile-artifact` processes writing into `cache_dir`."""
    pids = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                argv = cmdline.read().split(b"\0")
        except (FileNotFoundError, NotADirectoryError, ProcessLookupError, PermissionError):
            continue
        if b"compile-artifact" in argv and any(str(cache_dir).encode() in arg for arg in argv):
            if alive(int(entry)):
                pids.append(int(entry))
    return pids


@pytest.mark.parametrize("processes", ["1", "2"])
def test_a_sigterm_while_compiling_stops_the_start_up_warmly(unique_queue, tmp_path, processes):
    # An empty compile cache: the Python example takes seconds to compile, in a child process.
    cache = tmp_path / "cache"
    worker = WorkerProcess(
        "celeriac worker",
        [str(CELERIAC), "worker", "--tasks", str(TASKS), "-Q", unique_queue, "-l", "info",
         "--processes", processes],
        worker_env({"CELERIAC_CACHE_DIR": str(cache)}),
    )
    wait_until(lambda: compile_children(cache), "a compile running")

    worker.stop()

    assert worker.process.returncode == 0, worker.output()
    assert "Warm shutdown while starting (nothing was consumed yet)" in worker.output()
    assert "ready." not in worker.output()
    wait_until(lambda: not compile_children(cache), "no compile left running", timeout=5)
