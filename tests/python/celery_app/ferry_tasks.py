"""The Celery application of test_client_celery.py: the worker subprocess and the test process
both import it. Broker URL and queue name come from the environment the test sets."""

import os

from celery import Celery

app = Celery("ferry_tasks", broker=os.environ["FERRY_CELERY_BROKER"], backend="rpc://")
app.conf.update(
    task_default_queue=os.environ["FERRY_CELERY_QUEUE"],
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_prefetch_multiplier=4,
)


@app.task
def add(x, y):
    return x + y


@app.task
def multiply(x, y):
    return x * y


@app.task
def fail(message):
    raise ValueError(message)


@app.task(bind=True, max_retries=5)
def flaky(self, succeed_on_attempt):
    """Fails (and retries) until its `succeed_on_attempt`-th run."""
    attempt = self.request.retries + 1
    if attempt < succeed_on_attempt:
        raise self.retry(exc=RuntimeError(f"attempt {attempt} failed"), countdown=0.1)
    return {"attempt": attempt}


@app.task(bind=True, max_retries=1)
def always_fails(self):
    raise self.retry(exc=KeyError("still broken"), countdown=0.05)


@app.task(bind=True)
def where(self):
    """What the worker saw of its delivery."""
    info = self.request.delivery_info or {}
    return {"routing_key": info.get("routing_key"), "exchange": info.get("exchange"),
            "redelivered": info.get("redelivered"), "hostname": self.request.hostname}
