"""A RabbitMQ node of a test's own, for tests that stop and restart the broker without
touching the machine's shared server: its own node name, ports and data directory, owned by
the `rabbitmq` user the server scripts switch to."""

import os
import shutil
import socket
import subprocess
import time
import uuid

#: A node boots in 5-20 s on a loaded 2-core machine.
START_TIMEOUT = 90


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RabbitNode:
    def __init__(self, directory):
        self.directory = directory
        self.node = f"celeriac-{uuid.uuid4().hex[:8]}@localhost"
        self.port = free_port()
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        self.process = None

    def env(self):
        d = self.directory
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq.conf"),
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_MNESIA_DIR": str(d / "mnesia" / "db"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(d / "feature_flags"),
            "RABBITMQ_QUORUM_DIR": str(d / "quorum"),
            "RABBITMQ_STREAM_DIR": str(d / "stream"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(d / "plugins"),
        }

    def start(self):
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "rabbitmq.conf").write_text(
            f"listeners.tcp.local = 127.0.0.1:{self.port}\nloopback_users = none\n"
        )
        shutil.chown(self.directory, "rabbitmq")
        self.process = subprocess.Popen(
            ["rabbitmq-server"], env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT
        )
        self.wait_accepting()
        return self

    def wait_accepting(self):
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"RabbitMQ node {self.node} exited: {self.log_tail()}"
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"RabbitMQ node {self.node} not up after {START_TIMEOUT} s: {self.log_tail()}")

    def ctl(self, *args):
        subprocess.run(["rabbitmqctl", "-n", self.node, *args], check=True, capture_output=True, timeout=120)

    def set_env(self, key, value):
        """Sets the `rabbit` application's `key` (an Erlang term) for channels opened from now."""
        self.ctl("eval", f"application:set_env(rabbit, {key}, {value}).")

    def stop_app(self):
        """Stops the broker inside the node: every connection drops, durable queues and
        persistent messages stay."""
        self.ctl("stop_app")

    def start_app(self):
        self.ctl("start_app")
        self.wait_accepting()

    def stop(self):
        if self.process and self.process.poll() is None:
            subprocess.run(["rabbitmqctl", "-n", self.node, "stop"], capture_output=True, timeout=120)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()

    def log_tail(self):
        logs = sorted((self.directory / "log").glob("*.log"))
        return logs[-1].read_text()[-3000:] if logs else "(no log)"
