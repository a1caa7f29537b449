"""The web console in a real headless browser: Debian's chromium driven by Playwright, against
a real broker, with pika and the HTTP API as the independent checks. Each test is one user
journey. Skipped (with the reason) when chromium or Playwright is not installed;
scripts/test.sh installs both."""

import json
import os
import re
import shutil
import urllib.parse

import pika
import pytest

from test_management import Http, eventually, q, uniq

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the machine
    sync_playwright = None

if sync_playwright is not None:
    # The console refreshes every few seconds; a check waits for more than one refresh.
    expect.set_options(timeout=20_000)

pytestmark = [
    pytest.mark.skipif(sync_playwright is None, reason="playwright is not installed (pip install -r tests/python/requirements.txt)"),
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"no chromium at {CHROMIUM} (apt-get install chromium)"),
    pytest.mark.skipif(bool(os.environ.get("AMQP_TEST_PORT")), reason="FerryMQ's own console"),
]


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture
def page(browser, broker):
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    pg.set_default_timeout(20_000)
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    # Confirmations (purge, delete) are accepted as a user clicking OK would.
    pg.on("dialog", lambda d: d.accept())
    pg.base = f"http://127.0.0.1:{broker.http_port}/"
    yield pg
    ctx.close()
    assert errors == [], errors


@pytest.fixture
def api(broker):
    return Http(broker.http_port)


def login(page, user="guest", password="guest"):
    page.goto(page.base)
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", password)
    page.click("form.login button[type=submit]")


def logged_in(page):
    login(page)
    expect(page.locator("#logout")).to_be_visible()


def open_queue(page, name, vhost="/"):
    page.goto(page.base + f"#/queues/{q(vhost)}/{q(name)}")
    expect(page.locator("main h1")).to_have_text(name)


def ready(api, name):
    status, body, _ = api.get(f"/api/queues/%2F/{q(name)}")
    assert status == 200, body
    return body["messages_ready"]


def test_login_refuses_a_wrong_password_then_logs_in_and_out(page):
    login(page, "guest", "not-the-password")
    expect(page.locator(".login-error")).to_contain_text("Login failed")
    expect(page.locator("#logout")).to_have_count(0)
    login(page)
    expect(page.locator("main h1")).to_have_text("Overview")
    expect(page.locator("header .who")).to_have_text("guest")
    # The session survives a reload (credentials are in sessionStorage) ...
    page.reload()
    expect(page.locator("main h1")).to_have_text("Overview")
    # ... and ends with a logout.
    page.click("#logout")
    expect(page.locator("form.login")).to_be_visible()
    page.reload()
    expect(page.locator("form.login")).to_be_visible()


def test_credentials_that_stop_working_show_the_login_again(page, api):
    user = uniq("temp")
    api.ok("PUT", f"/api/users/{user}", {"password": "pw", "tags": "administrator"})
    api.ok("PUT", f"/api/permissions/%2F/{user}", {"configure": ".*", "write": ".*", "read": ".*"})
    login(page, user, "pw")
    expect(page.locator("main h1")).to_have_text("Overview")
    api.ok("DELETE", f"/api/users/{user}")
    # The next refresh gets a 401 and the console asks for a login.
    expect(page.locator("form.login")).to_be_visible()
    expect(page.locator(".login-error")).to_contain_text("log in again")


def test_queue_depth_shows_on_the_overview_and_queue_charts(page, broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.confirm_delivery()  # publishes return once the broker has them
    name = uniq("depth")
    ch.queue_declare(queue=name, durable=True)
    logged_in(page)
    chart = page.locator('[data-chart="overview-depth"]')
    expect(chart).to_have_attribute("data-last-messages-ready", "0")
    for i in range(3):
        ch.basic_publish("", name, f"m{i}".encode())
    expect(chart).to_have_attribute("data-last-messages-ready", "3")
    expect(page.locator('[data-stat="messages_ready"] .tile-value')).to_have_text("3")
    open_queue(page, name)
    qchart = page.locator('[data-chart="queue-depth"]')
    expect(qchart).to_have_attribute("data-last-messages-ready", "3")
    ch.basic_publish("", name, b"m3")
    expect(qchart).to_have_attribute("data-last-messages-ready", "4")
    # uPlot drew the chart.
    expect(qchart.locator("canvas")).to_have_count(1)
    conn.close()


def test_peek_shows_a_message_and_leaves_it_in_the_queue(page, broker, api):
    conn = broker.connect()
    ch = conn.channel()
    ch.confirm_delivery()  # publishes return once the broker has them
    name = uniq("peek")
    ch.queue_declare(queue=name)
    body = json.dumps({"order": 42, "items": ["tea", "milk"]}).encode()
    ch.basic_publish("", name, body, pika.BasicProperties(
        content_type="application/json", headers={"tenant": "acme"}, correlation_id="c-1"))
    logged_in(page)
    open_queue(page, name)
    page.click("#get-messages")  # the default mode is peek
    msg = page.locator("article.message").first
    expect(msg).to_contain_text("tenant")
    expect(msg).to_contain_text("acme")
    expect(msg).to_contain_text("c-1")
    pre = msg.locator("pre.body")
    expect(pre).to_have_attribute("data-view", "json")
    expect(pre).to_contain_text('"order": 42')
    msg.get_by_role("button", name="Hex").click()
    expect(pre).to_contain_text("7b 22 6f 72 64 65 72")  # {"order
    msg.get_by_role("button", name="Text").click()
    expect(pre).to_have_text(body.decode())
    # Still there: the API counts it and pika gets it (marked redelivered).
    assert ready(api, name) == 1
    method, props, got = ch.basic_get(name, auto_ack=True)
    assert got == body and method.redelivered and props.headers == {"tenant": "acme"}
    conn.close()


def test_publish_from_the_console_reaches_a_pika_consumer(page, broker):
    conn = broker.connect()
    ch = conn.channel()
    ch.confirm_delivery()  # publishes return once the broker has them
    name = uniq("pub")
    ch.queue_declare(queue=name)
    logged_in(page)
    open_queue(page, name)
    form = page.locator("form.publish-form")
    form.locator("input[name=headers]").fill('{"source": "console"}')
    form.locator("input[name=content_type]").fill("text/plain")
    form.locator("textarea[name=payload]").fill("hello from the browser")
    page.click("#publish")
    expect(page.locator(".toast")).to_contain_text("Message published")

    def get():
        return ch.basic_get(name, auto_ack=True)
    method, props, body = eventually(lambda: (lambda r: r if r[0] else None)(get()), "the message")
    assert body == b"hello from the browser"
    assert props.headers == {"source": "console"}
    assert props.content_type == "text/plain" and props.delivery_mode == 2
    conn.close()


def test_purge_empties_the_queue(page, broker, api):
    conn = broker.connect()
    ch = conn.channel()
    ch.confirm_delivery()  # publishes return once the broker has them
    name = uniq("purge")
    ch.queue_declare(queue=name)
    for i in range(5):
        ch.basic_publish("", name, b"x")
    logged_in(page)
    open_queue(page, name)
    expect(page.locator('[data-stat="messages_ready"] .tile-value')).to_have_text("5")
    page.click("#purge")
    expect(page.locator(".toast")).to_contain_text("purged")
    eventually(lambda: ready(api, name) == 0, "an empty queue")
    assert ch.basic_get(name, auto_ack=True)[0] is None
    expect(page.locator('[data-stat="messages_ready"] .tile-value')).to_have_text("0")
    conn.close()


def test_move_messages_to_another_queue(page, broker, api):
    conn = broker.connect()
    ch = conn.channel()
    ch.confirm_delivery()  # publishes return once the broker has them
    src, dst = uniq("from"), uniq("to")
    ch.queue_declare(queue=src, durable=True)
    ch.queue_declare(queue=dst, durable=True)
    for i in range(4):
        ch.basic_publish("", src, f"m{i}".encode(), pika.BasicProperties(delivery_mode=2))
    logged_in(page)
    open_queue(page, src)
    page.fill("input[name=destination]", dst)
    page.click("#move-messages")
    expect(page.locator(".toast")).to_contain_text(f"Moved 4 message(s) to {dst}")
    assert ready(api, src) == 0
    got = [ch.basic_get(dst, auto_ack=True)[2] for _ in range(4)]
    assert got == [b"m0", b"m1", b"m2", b"m3"]
    # A destination that does not exist is an error on the page, and nothing moves.
    ch.basic_publish("", src, b"stay")
    page.fill("input[name=destination]", "no-such-queue")
    page.click("#move-messages")
    expect(page.locator(".toast.error")).to_contain_text("Not Found")
    assert ready(api, src) == 1
    conn.close()


def test_add_a_user_and_a_policy(page, api):
    logged_in(page)
    user = uniq("alice")
    page.goto(page.base + "#/users")
    page.fill("input[name=username]", user)
    page.fill("input[name=password]", "s3cret")
    page.fill("input[name=tags]", "monitoring, management")
    page.click("#add-user")
    expect(page.locator("table.list").first).to_contain_text(user)
    status, u, _ = api.get(f"/api/users/{user}")
    assert status == 200 and sorted(u["tags"]) == ["management", "monitoring"]
    # The password set in the console works.
    assert Http(api.base.rsplit(":", 1)[1], user, "s3cret").get("/api/whoami")[0] == 200

    page.goto(page.base + "#/policies")
    page.fill("input[name=policy-name]", "cap-orders")
    page.fill("input[name=pattern]", "^orders\\.")
    page.fill("input[name=priority]", "3")
    page.fill("textarea[name=definition]", '{"max-length": 1000}')
    page.click("#add-policy")
    expect(page.locator("table.list")).to_contain_text("cap-orders")
    status, p, _ = api.get("/api/policies/%2F/cap-orders")
    assert status == 200, p
    assert p["pattern"] == "^orders\\." and p["definition"] == {"max-length": 1000}
    assert p["priority"] == 3 and p["apply-to"] == "queues"


def test_lists_page_on_the_server(page, api):
    for i in range(120):
        api.ok("PUT", f"/api/queues/%2F/bulk-{i:03}", {})
    urls = []
    page.on("request", lambda r: urls.append(r.url) if "/api/queues" in r.url else None)
    logged_in(page)
    page.goto(page.base + "#/queues")
    table = page.locator('[data-table="queues"]')
    expect(table.locator(".pager-info")).to_have_text("1–50 of 120")
    expect(table.locator("tbody tr")).to_have_count(50)
    table.get_by_role("button", name="Next ›").click()
    expect(table.locator("tbody tr").first).to_contain_text("bulk-050")
    table.locator("input.filter").fill("bulk-11")
    expect(table.locator(".pager-info")).to_have_text("1–10 of 10 (filtered from 120)")
    table.get_by_role("button", name=re.compile("^Name")).click()  # name descending
    expect(table.locator("tbody tr").first).to_contain_text("bulk-119")
    # Every request asked for one page: the console never loads a whole list.
    assert urls
    for u in urls:
        qs = urllib.parse.parse_qs(urllib.parse.urlparse(u).query)
        assert qs.get("page") and int(qs["page_size"][0]) <= 500, u
        assert "columns" in qs, u


def test_a_resource_alarm_is_shown_with_its_reason(browser, tmp_path):
    from conftest import Broker
    b = Broker(tmp_path, ["--disk-free-limit", str(10**18)])
    ctx = browser.new_context()
    try:
        pg = ctx.new_page()
        pg.base = f"http://127.0.0.1:{b.http_port}/"
        conn = b.connect()
        ch = conn.channel()
        name = uniq("blocked")
        ch.queue_declare(queue=name)
        ch.basic_publish("", name, b"x")  # a publisher: its connection turns blocked
        logged_in(pg)
        expect(pg.locator("#alarm-banner")).to_contain_text("disk alarm")
        expect(pg.locator("#node-alarms")).to_contain_text("Disk alarm")
        pg.goto(pg.base + "#/connections")
        expect(pg.locator(".alarm-note")).to_contain_text("disk alarm")
        expect(pg.locator('[data-table="connections"] tbody')).to_contain_text("blocked")
    finally:
        # No graceful close: the broker reads nothing more from a blocked publisher, so
        # pika would wait for close-ok; stopping the broker drops the connection.
        ctx.close()
        b.stop()


def test_console_files_have_types_and_cache_headers_and_api_404s_stay_json(broker):
    import urllib.request
    base = f"http://127.0.0.1:{broker.http_port}"
    with urllib.request.urlopen(base + "/") as r:
        assert r.headers["Content-Type"].startswith("text/html")
        assert r.headers["Cache-Control"] == "no-cache" and r.headers["ETag"]
        tag = r.headers["ETag"]
    with urllib.request.urlopen(base + "/console/js/app.js") as r:
        assert r.headers["Content-Type"].startswith("text/javascript")
    req = urllib.request.Request(base + "/", headers={"If-None-Match": tag})
    try:
        urllib.request.urlopen(req)
        raise AssertionError("expected 304")
    except urllib.error.HTTPError as e:
        assert e.code == 304
    status, body, _ = Http(broker.http_port).get("/api/no-such-thing")
    assert status == 404 and body["error"] == "Object Not Found"
    status, _, _ = Http(broker.http_port).get("/console/../Cargo.toml")
    assert status == 404


def test_trace_page_shows_where_a_message_went(page, broker, api):
    # Where is my message: trace the vhost, publish and consume with pika, filter by the
    # message id, and see the publish (routed to the queue) and the delivery from it.
    conn = broker.connect()
    ch = conn.channel()
    name = uniq("traced")
    ch.queue_declare(queue=name)
    logged_in(page)
    page.goto(page.base + "#/trace")
    expect(page.locator("main h1")).to_have_text("Trace")
    page.click("#trace-start")
    expect(page.locator(".toast")).to_contain_text("Tracing started")
    assert eventually(lambda: api.get("/api/vhosts/%2F")[1]["tracing"], "the firehose on")
    ch.basic_publish("", name, b"find me", properties=pika.BasicProperties(message_id="order-42"))
    ch.basic_publish("", name, b"not me", properties=pika.BasicProperties(message_id="order-43"))
    eventually(lambda: ch.basic_get(name, auto_ack=True)[0], "the first message back")
    page.fill("input[name=filter]", "order-42")
    rows = page.locator("table.list tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("deliver")
    expect(rows.nth(0)).to_contain_text(name)
    expect(rows.nth(1)).to_contain_text("publish")
    expect(rows.nth(1)).to_contain_text("find me")
    expect(page.locator("table.list")).not_to_contain_text("not me")
    # Stopping (or leaving the page) ends the trace and turns the firehose off.
    page.click("#trace-stop")
    assert eventually(lambda: api.get("/api/vhosts/%2F")[1]["tracing"] is False, "the firehose off")
    conn.close()


def test_a_malformed_escape_in_the_address_is_not_found_not_a_script_error(page):
    # decodeURI / decodeURIComponent throw on it: the page stayed on the previous one with
    # its refresh timers stopped, and the error went to the console (the fixture fails on it).
    logged_in(page)
    expect(page.locator("main h1")).to_have_text("Overview")
    page.goto(page.base + "#/queues/%2F/%E0%A4%A")
    expect(page.locator("main h1")).to_have_text("Not found")
    page.goto(page.base + "#/queues")
    expect(page.locator("main h1")).to_have_text("Queues")
