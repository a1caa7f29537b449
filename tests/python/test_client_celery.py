"""A real Celery worker (a subprocess, solo pool) with the broker under test, results back over
Celery's AMQP RPC backend (`rpc://`): tasks, failures, retries, countdowns, groups, chains and
remote control. The application is tests/python/celery_app/ferry_tasks.py.

The rpc backend does not support chords (Celery refuses them itself), so none is tested.
Every test also passes against RabbitMQ 3.10 (AMQP_TEST_PORT=5681)."""

import importlib
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

APP_DIR = Path(__file__).resolve().parent / "celery_app"


class Worker:
    def __init__(self, broker_url, queue, node):
        env = dict(os.environ, FERRY_CELERY_BROKER=broker_url, FERRY_CELERY_QUEUE=queue,
                   PYTHONPATH=str(APP_DIR))
        self.node = node
        self.log = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "ferry_tasks", "worker", "--pool=solo",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "-n", node,
             "--loglevel=INFO"],
            cwd=APP_DIR, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        ready = threading.Event()

        def pump():
            for line in self.proc.stdout:
                if len(self.log) < 500:
                    self.log.append(line)
                if " ready." in line:
                    ready.set()
        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + 60
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("celery worker did not start:\n" + "".join(self.log[-40:]))

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()  # warm shutdown
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def celery(module_broker):
    """The tasks module, configured for this broker, with one worker consuming its queue."""
    queue = f"celery-{uuid.uuid4().hex[:8]}"
    broker_url = f"amqp://guest:guest@127.0.0.1:{module_broker.port}//"
    os.environ["FERRY_CELERY_BROKER"] = broker_url
    os.environ["FERRY_CELERY_QUEUE"] = queue
    sys.path.insert(0, str(APP_DIR))
    try:
        tasks = importlib.import_module("ferry_tasks")
        tasks = importlib.reload(tasks)  # this module's broker, if imported before
        worker = Worker(broker_url, queue, f"ferry-{uuid.uuid4().hex[:6]}@localhost")
        try:
            yield tasks, worker, queue
        finally:
            # Celery's remote shutdown: the broadcast also wakes the worker's event loop, which
            # a SIGTERM alone leaves asleep until its next timer (up to ~10 s).
            try:
                tasks.app.control.shutdown(destination=[worker.node])
            finally:
                worker.stop()
            with tasks.app.connection_for_write() as conn:
                ch = conn.default_channel
                ch.queue_delete(queue)
                ch.exchange_delete(queue)
            tasks.app.close()
    finally:
        sys.path.remove(str(APP_DIR))
        os.environ.pop("FERRY_CELERY_BROKER", None)
        os.environ.pop("FERRY_CELERY_QUEUE", None)


def test_a_task_runs_on_the_worker_and_its_result_comes_back(celery):
    tasks, worker, queue = celery
    result = tasks.add.delay(2, 3)
    assert result.get(timeout=30) == 5
    assert result.state == "SUCCESS" and result.successful()
    seen = tasks.where.delay().get(timeout=30)
    # Celery sends a task for its default queue through the default exchange.
    assert seen == {"routing_key": queue, "exchange": "", "redelivered": False, "hostname": worker.node}


def test_a_failing_task_raises_its_exception_in_the_caller(celery):
    tasks, _, _ = celery
    result = tasks.fail.delay("boom")
    with pytest.raises(ValueError, match="boom"):
        result.get(timeout=30)
    assert result.state == "FAILURE"
    assert isinstance(result.result, ValueError)


def test_a_task_that_retries_succeeds_on_a_later_attempt(celery):
    tasks, _, _ = celery
    assert tasks.flaky.delay(3).get(timeout=30) == {"attempt": 3}
    result = tasks.always_fails.delay()
    # After max_retries the task fails with the exception it retried with.
    with pytest.raises(KeyError, match="still broken"):
        result.get(timeout=30)
    assert result.state == "FAILURE"


def test_a_countdown_task_is_held_by_the_worker_and_then_run(celery):
    tasks, _, _ = celery
    # The worker takes the ETA message at once and keeps it unacknowledged until it is due,
    # raising its prefetch so that the tasks sent after it still arrive.
    later = tasks.add.apply_async((1, 1), countdown=1)
    now = [tasks.add.delay(i, 100) for i in range(3)]
    assert [r.get(timeout=30) for r in now] == [100, 101, 102]
    assert later.get(timeout=30) == 2


def test_group_and_chain(celery):
    tasks, _, _ = celery
    from celery import chain, group
    assert group(tasks.add.s(i, i) for i in range(20))().get(timeout=60) == [2 * i for i in range(20)]
    assert chain(tasks.add.s(2, 3), tasks.multiply.s(10), tasks.add.s(1))().get(timeout=30) == 51


def test_remote_control_reaches_the_worker(celery):
    tasks, worker, queue = celery
    replies = tasks.app.control.ping(destination=[worker.node], timeout=10)
    assert replies == [{worker.node: {"ok": "pong"}}]
    active = tasks.app.control.inspect(destination=[worker.node], timeout=10).active_queues()
    assert [q["name"] for q in active[worker.node]] == [queue]
