"""Starts a real `ferrymq server` on a free port with a temporary data dir for each test."""

import os
import re
import subprocess
import threading
from pathlib import Path

import pika
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _binary() -> str:
    env = os.environ.get("FERRYMQ_BIN")
    if env:
        return env
    return str(ROOT / "target" / "debug" / "ferrymq")


class ExternalBroker:
    """A broker someone else runs, e.g. RabbitMQ, to check that these tests describe
    RabbitMQ's behaviour: AMQP_TEST_PORT=5680 pytest tests/python"""

    def __init__(self, port: int):
        self.port = port

    def params(self) -> pika.ConnectionParameters:
        return pika.ConnectionParameters(host="127.0.0.1", port=self.port)

    def connect(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(self.params())

    def stop(self):
        pass


class Broker:
    def __init__(self, tmp_path: Path):
        self.proc = subprocess.Popen(
            [_binary(), "server", "--bind", "127.0.0.1", "--amqp-port", "0",
             "--data-dir", str(tmp_path / "data")],
            stderr=subprocess.PIPE, text=True,
        )
        self.port = None
        ready = threading.Event()

        def pump():
            for line in self.proc.stderr:
                m = re.search(r"AMQP listening on [\d.]+:(\d+)", line)
                if m and self.port is None:
                    self.port = int(m.group(1))
                    ready.set()
        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(30):
            self.proc.kill()
            raise RuntimeError("ferrymq did not start")

    def params(self) -> pika.ConnectionParameters:
        return pika.ConnectionParameters(host="127.0.0.1", port=self.port)

    def connect(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(self.params())

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def broker(tmp_path):
    external = os.environ.get("AMQP_TEST_PORT")
    b = ExternalBroker(int(external)) if external else Broker(tmp_path)
    try:
        yield b
    finally:
        b.stop()
