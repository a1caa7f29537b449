#!/usr/bin/env python3
"""Takes the README's console screenshots (docs/img/console-overview.png and
docs/img/console-queue.png): starts a debug broker on free ports, gives it some traffic with
pika, and photographs the overview and a queue page with Playwright and Debian's chromium.

    cargo build && .venv/bin/python scripts/console-screenshots.py
"""

import json
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "python"))

import pika  # noqa: E402
from conftest import Broker  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

OUT = ROOT / "docs" / "img"


def traffic(broker, stop):
    """A steady publisher and a slower consumer, so rates and depths move."""
    conn = broker.connect()
    ch = conn.channel()
    for name in ("orders", "invoices", "emails", "audit.log"):
        ch.queue_declare(queue=name, durable=True)
    ch.queue_bind("orders", "amq.topic", "orders.#")
    i = 0
    while not stop.is_set():
        body = json.dumps({"order": i, "items": ["tea", "milk"], "total": 4.2}).encode()
        ch.basic_publish("amq.topic", "orders.eu", body, pika.BasicProperties(
            delivery_mode=2, content_type="application/json", headers={"tenant": "acme"}))
        ch.basic_publish("", "emails", b"welcome", pika.BasicProperties(delivery_mode=2))
        if i % 3 == 0:
            ch.basic_get("emails", auto_ack=True)
            ch.basic_get("orders", auto_ack=True)
        i += 1
        conn.sleep(0.02)
    conn.close()


def main():
    broker = Broker(Path(tempfile.mkdtemp()))
    stop = threading.Event()
    t = threading.Thread(target=traffic, args=(broker, stop), daemon=True)
    try:
        t.start()
        consumer = broker.connect().channel()
        consumer.basic_qos(prefetch_count=10)
        time.sleep(1)
        consumer.basic_consume("invoices", lambda *a: None)
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True)
            page = b.new_page(viewport={"width": 1280, "height": 860})
            base = f"http://127.0.0.1:{broker.http_port}/"
            page.goto(base)
            page.fill("input[name=username]", "guest")
            page.fill("input[name=password]", "guest")
            page.click("form.login button[type=submit]")
            page.wait_for_selector("#logout")
            time.sleep(32)  # a few samples for the charts
            page.goto(base + "#/overview")
            page.wait_for_timeout(2500)
            page.screenshot(path=str(OUT / "console-overview.png"))
            page.goto(base + "#/queues/%2F/orders")
            page.wait_for_timeout(16000)
            page.click("#get-messages")
            page.wait_for_selector("article.message")
            page.screenshot(path=str(OUT / "console-queue.png"), full_page=True)
            b.close()
    finally:
        stop.set()
        t.join(5)
        broker.stop()
    for f in ("console-overview.png", "console-queue.png"):
        print(OUT / f, (OUT / f).stat().st_size, "bytes")


if __name__ == "__main__":
    main()
