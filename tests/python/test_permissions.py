"""Access control as RabbitMQ 3.10 does it, recorded from RabbitMQ 3.10.8 (Debian) with pika:
which permission (configure / write / read regex) on which resource each AMQP method checks,
the order of the checks, topic permissions on routing keys, and the exact close that a
refused client sees.

The broker is loaded with definitions (users, vhosts, permissions, topic permissions):
FerryMQ through --load-definitions, an external RabbitMQ (AMQP_TEST_PORT + RABBITMQCTL)
through rabbitmqctl import_definitions.
"""

import os
import re
import time
import uuid
from types import SimpleNamespace

import pika
import pytest

from conftest import permission_def, refusal, topic_permission_def, user_def

CH_CLOSED = pika.exceptions.ChannelClosedByBroker
WAIT = 15

TAG = uuid.uuid4().hex[:6]
VHOST2 = f"perm-{TAG}"
VHOSTS = pytest.mark.parametrize("vhost", ["/", VHOST2], ids=["default-vhost", "second-vhost"])
PASSWORD = "s3cret"

# Permission profiles: (configure, write, read) on both vhosts. "" matches only the empty
# name (RabbitMQ reads it as "^$").
PROFILES = {
    "all": (".*", ".*", ".*"),
    "noconf": ("", ".*", ".*"),
    "nowrite": (".*", "", ".*"),
    "noread": (".*", ".*", ""),
    "empty": ("", "", ""),
}


def user(profile):
    return f"{profile}-{TAG}"


def n(prefix):
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def perm_broker(module_broker_with_definitions):
    users = [user_def(user(p), PASSWORD) for p in PROFILES]
    perms = [permission_def(user(p), v, *PROFILES[p]) for p in PROFILES for v in ("/", VHOST2)]
    # Regexes are searched for anywhere in the name (unanchored), as re:run does.
    users.append(user_def(user("regex"), PASSWORD))
    perms += [permission_def(user("regex"), v, "foo", r"amq\.default", "^bar-") for v in ("/", VHOST2)]
    # No permission entry at all / only on the second vhost.
    users.append(user_def(user("nobody"), PASSWORD))
    users.append(user_def(user("onlyv2"), PASSWORD, tags=["management"]))
    perms.append(permission_def(user("onlyv2"), VHOST2))
    # Topic permissions.
    topic_perms = []
    users.append(user_def(user("topic"), PASSWORD))
    for v in ("/", VHOST2):
        perms.append(permission_def(user("topic"), v))
        topic_perms += [
            topic_permission_def(user("topic"), v, "amq.topic", r"^a\.", r"^b\."),
            # Topic permissions only apply to topic exchanges.
            topic_permission_def(user("topic"), v, "amq.direct", "^a", "^b"),
            topic_permission_def(user("topic"), v, f"vars-{TAG}", r"^{username}\.", r"^{vhost}\."),
            topic_permission_def(user("topic"), v, f"emptyre-{TAG}", "", ""),
            # The normal permission is checked before the topic permission.
            topic_permission_def(user("nowrite"), v, "amq.topic", r"^a\.", r"^b\."),
            topic_permission_def(user("noread"), v, "amq.topic", r"^a\.", r"^b\."),
        ]
    users.append(user_def(user("topicv2"), PASSWORD))
    perms += [permission_def(user("topicv2"), v) for v in ("/", VHOST2)]
    topic_perms.append(topic_permission_def(user("topicv2"), VHOST2, "amq.topic", "^a", "^b"))
    # The exchange of a topic permission is a name, not a pattern.
    topic_perms.append(topic_permission_def(user("topicv2"), "/", r"amq\.top.*", "^a", "^b"))
    return module_broker_with_definitions({
        "users": users,
        "vhosts": [{"name": VHOST2}],
        "permissions": perms,
        "topic_permissions": topic_perms,
    })


class Resources(SimpleNamespace):
    """Names of the exchanges and queues an admin (guest) sets up before an operation."""


@pytest.fixture
def resources(request, perm_broker):
    """Exchanges x (direct), x2 (fanout), ae (fanout), xae (x with alternate-exchange ae),
    queues q (one message, bound to x with key k), qdlx (dead-letters to ae), x2 bound to x;
    new_x / new_q / missing are names that do not exist. Deleted after the test."""
    vhost = request.node.callspec.params["vhost"]
    r = Resources(vhost=vhost, x=n("x"), x2=n("x2"), ae=n("ae"), xae=n("xae"), q=n("q"), qdlx=n("qdlx"),
                  new_x=n("new-x"), new_q=n("new-q"), missing=n("missing"))
    conn = perm_broker.connect(vhost=vhost)
    ch = conn.channel()
    ch.exchange_declare(r.x, "direct")
    ch.exchange_declare(r.x2, "fanout")
    ch.exchange_declare(r.ae, "fanout")
    ch.exchange_declare(r.xae, "direct", arguments={"alternate-exchange": r.ae})
    ch.queue_declare(r.q)
    ch.queue_declare(r.qdlx, arguments={"x-dead-letter-exchange": r.ae})
    ch.queue_bind(r.q, r.x, "k")
    ch.exchange_bind(r.x2, r.x, "k")
    ch.basic_publish("", r.q, b"m")
    try:
        yield r
    finally:
        if not ch.is_open:
            ch = conn.channel()
        for x in (r.x, r.x2, r.ae, r.xae, r.new_x):
            ch.exchange_delete(x)
        for q in (r.q, r.qdlx, r.new_q):
            ch.queue_delete(q)
        conn.close()


def refused(kind, attr):
    """403 'access to <kind> '<name>' in vhost ... refused for user ...', name = r.<attr>."""
    def text(r, username):
        name = getattr(r, attr, attr)
        return f"ACCESS_REFUSED - access to {kind} '{name}' in vhost '{r.vhost}' refused for user '{username}'"
    return 403, text


def not_found(kind, attr):
    def text(r, username):
        return f"NOT_FOUND - no {kind} '{getattr(r, attr)}' in vhost '{r.vhost}'"
    return 404, text


def fixed(code, text):
    return code, lambda r, username: text


def publish(exchange_attr, key="k"):
    def op(ch, r):
        ch.confirm_delivery()
        ch.basic_publish(getattr(r, exchange_attr, exchange_attr), key, b"m")
    return op


DEFAULT_EXCHANGE = fixed(403, "ACCESS_REFUSED - operation not permitted on the default exchange")

# operation -> (callable(ch, r), (class_id, method_id) of the method, {profile: expected close})
# Profiles not listed succeed. "empty" has no permission at all inside the vhost.
MATRIX = {
    "exchange.declare": (
        lambda ch, r: ch.exchange_declare(r.new_x, "direct"), (40, 10),
        {"noconf": refused("exchange", "new_x"), "empty": refused("exchange", "new_x")}),
    "exchange.declare-existing": (
        lambda ch, r: ch.exchange_declare(r.x, "direct"), (40, 10),
        {"noconf": refused("exchange", "x"), "empty": refused("exchange", "x")}),
    # Passive declares check no permission at all.
    "exchange.declare-passive": (
        lambda ch, r: ch.exchange_declare(r.x, passive=True), (40, 10), {}),
    "exchange.declare-passive-missing": (
        lambda ch, r: ch.exchange_declare(r.missing, passive=True), (40, 10),
        {p: not_found("exchange", "missing") for p in PROFILES}),
    # A new exchange with an alternate exchange: configure and read on the exchange, write on
    # the alternate exchange (which need not exist).
    "exchange.declare-alternate-exchange": (
        lambda ch, r: ch.exchange_declare(r.new_x, "direct", arguments={"alternate-exchange": r.ae}), (40, 10),
        {"noconf": refused("exchange", "new_x"), "noread": refused("exchange", "new_x"),
         "nowrite": refused("exchange", "ae"), "empty": refused("exchange", "new_x")}),
    "exchange.declare-missing-alternate-exchange": (
        lambda ch, r: ch.exchange_declare(r.new_x, "direct", arguments={"alternate-exchange": r.missing}), (40, 10),
        {"noconf": refused("exchange", "new_x"), "noread": refused("exchange", "new_x"),
         "nowrite": refused("exchange", "missing"), "empty": refused("exchange", "new_x")}),
    # Redeclaring an existing exchange with the argument checks configure only.
    "exchange.declare-existing-alternate-exchange": (
        lambda ch, r: ch.exchange_declare(r.xae, "direct", arguments={"alternate-exchange": r.ae}), (40, 10),
        {"noconf": refused("exchange", "xae"), "empty": refused("exchange", "xae")}),
    "exchange.delete": (
        lambda ch, r: ch.exchange_delete(r.x), (40, 20),
        {"noconf": refused("exchange", "x"), "empty": refused("exchange", "x")}),
    "exchange.delete-missing": (
        lambda ch, r: ch.exchange_delete(r.missing), (40, 20),
        {"noconf": refused("exchange", "missing"), "empty": refused("exchange", "missing")}),
    "queue.declare": (
        lambda ch, r: ch.queue_declare(r.new_q), (50, 10),
        {"noconf": refused("queue", "new_q"), "empty": refused("queue", "new_q")}),
    "queue.declare-existing": (
        lambda ch, r: ch.queue_declare(r.q), (50, 10),
        {"noconf": refused("queue", "q"), "empty": refused("queue", "q")}),
    "queue.declare-passive": (
        lambda ch, r: ch.queue_declare(r.q, passive=True), (50, 10), {}),
    "queue.declare-passive-missing": (
        lambda ch, r: ch.queue_declare(r.missing, passive=True), (50, 10),
        {p: not_found("queue", "missing") for p in PROFILES}),
    # A new queue with a dead-letter exchange: configure and read on the queue, write on the
    # dead-letter exchange; the default exchange is checked as 'amq.default'.
    "queue.declare-dead-letter-exchange": (
        lambda ch, r: ch.queue_declare(r.new_q, arguments={"x-dead-letter-exchange": r.ae}), (50, 10),
        {"noconf": refused("queue", "new_q"), "noread": refused("queue", "new_q"),
         "nowrite": refused("exchange", "ae"), "empty": refused("queue", "new_q")}),
    "queue.declare-dead-letter-default-exchange": (
        lambda ch, r: ch.queue_declare(r.new_q, arguments={"x-dead-letter-exchange": ""}), (50, 10),
        {"noconf": refused("queue", "new_q"), "noread": refused("queue", "new_q"),
         "nowrite": refused("exchange", "amq.default"), "empty": refused("queue", "new_q")}),
    "queue.declare-existing-dead-letter-exchange": (
        lambda ch, r: ch.queue_declare(r.qdlx, arguments={"x-dead-letter-exchange": r.ae}), (50, 10),
        {"noconf": refused("queue", "qdlx"), "empty": refused("queue", "qdlx")}),
    "queue.delete": (
        lambda ch, r: ch.queue_delete(r.q), (50, 40),
        {"noconf": refused("queue", "q"), "empty": refused("queue", "q")}),
    "queue.delete-missing": (
        lambda ch, r: ch.queue_delete(r.missing), (50, 40),
        {"noconf": refused("queue", "missing"), "empty": refused("queue", "missing")}),
    "queue.purge": (
        lambda ch, r: ch.queue_purge(r.q), (50, 30),
        {"noread": refused("queue", "q"), "empty": refused("queue", "q")}),
    "queue.purge-missing": (
        lambda ch, r: ch.queue_purge(r.missing), (50, 30),
        {"all": not_found("queue", "missing"), "noconf": not_found("queue", "missing"),
         "nowrite": not_found("queue", "missing"),
         "noread": refused("queue", "missing"), "empty": refused("queue", "missing")}),
    # Bindings: write on the destination first, then read on the source.
    "queue.bind": (
        lambda ch, r: ch.queue_bind(r.q, r.x, "k2"), (50, 20),
        {"nowrite": refused("queue", "q"), "noread": refused("exchange", "x"), "empty": refused("queue", "q")}),
    "queue.bind-missing-queue": (
        lambda ch, r: ch.queue_bind(r.missing, r.x, "k2"), (50, 20),
        {"all": not_found("queue", "missing"), "noconf": not_found("queue", "missing"),
         "nowrite": refused("queue", "missing"), "noread": refused("exchange", "x"),
         "empty": refused("queue", "missing")}),
    "queue.bind-missing-exchange": (
        lambda ch, r: ch.queue_bind(r.q, r.missing, "k2"), (50, 20),
        {"all": not_found("exchange", "missing"), "noconf": not_found("exchange", "missing"),
         "nowrite": refused("queue", "q"), "noread": refused("exchange", "missing"),
         "empty": refused("queue", "q")}),
    # The default exchange is refused after the write check and before the read check.
    "queue.bind-default-exchange": (
        lambda ch, r: ch.queue_bind(r.q, "", "k2"), (50, 20),
        {"all": DEFAULT_EXCHANGE, "noconf": DEFAULT_EXCHANGE, "noread": DEFAULT_EXCHANGE,
         "nowrite": refused("queue", "q"), "empty": refused("queue", "q")}),
    "queue.unbind": (
        lambda ch, r: ch.queue_unbind(r.q, r.x, "k"), (50, 50),
        {"nowrite": refused("queue", "q"), "noread": refused("exchange", "x"), "empty": refused("queue", "q")}),
    "exchange.bind": (
        lambda ch, r: ch.exchange_bind(r.x2, r.x, "k2"), (40, 30),
        {"nowrite": refused("exchange", "x2"), "noread": refused("exchange", "x"),
         "empty": refused("exchange", "x2")}),
    "exchange.unbind": (
        lambda ch, r: ch.exchange_unbind(r.x2, r.x, "k"), (40, 40),
        {"nowrite": refused("exchange", "x2"), "noread": refused("exchange", "x"),
         "empty": refused("exchange", "x2")}),
    "basic.publish": (
        publish("x"), (60, 40),
        {"nowrite": refused("exchange", "x"), "empty": refused("exchange", "x")}),
    # The default exchange's resource name is 'amq.default'.
    "basic.publish-default-exchange": (
        publish(""), (60, 40),
        {"nowrite": refused("exchange", "amq.default"), "empty": refused("exchange", "amq.default")}),
    "basic.publish-missing-exchange": (
        publish("missing"), (60, 40),
        {"all": not_found("exchange", "missing"), "noconf": not_found("exchange", "missing"),
         "noread": not_found("exchange", "missing"),
         "nowrite": refused("exchange", "missing"), "empty": refused("exchange", "missing")}),
    "basic.consume": (
        lambda ch, r: ch.basic_consume(r.q, lambda *a: None), (60, 20),
        {"noread": refused("queue", "q"), "empty": refused("queue", "q")}),
    "basic.consume-missing": (
        lambda ch, r: ch.basic_consume(r.missing, lambda *a: None), (60, 20),
        {"all": not_found("queue", "missing"), "noconf": not_found("queue", "missing"),
         "nowrite": not_found("queue", "missing"),
         "noread": refused("queue", "missing"), "empty": refused("queue", "missing")}),
    "basic.get": (
        lambda ch, r: ch.basic_get(r.q), (60, 70),
        {"noread": refused("queue", "q"), "empty": refused("queue", "q")}),
    "basic.get-missing": (
        lambda ch, r: ch.basic_get(r.missing), (60, 70),
        {"all": not_found("queue", "missing"), "noconf": not_found("queue", "missing"),
         "nowrite": not_found("queue", "missing"),
         "noread": refused("queue", "missing"), "empty": refused("queue", "missing")}),
}


def user_channel(broker, profile, vhost, **kwargs):
    conn = broker.connect(user(profile), PASSWORD, vhost, **kwargs)
    return conn, conn.channel()


def expect_close(close_frames, exc_info, code, text, class_method):
    """The channel was closed with (code, text), naming the refused method."""
    got = (exc_info.value.reply_code, exc_info.value.reply_text)
    if isinstance(text, re.Pattern):
        assert got[0] == code and text.fullmatch(got[1]), got
    else:
        assert got == (code, text)
    assert close_frames[-1] == ("channel", code, got[1], *class_method)


@VHOSTS
@pytest.mark.parametrize("profile", list(PROFILES))
@pytest.mark.parametrize("operation", list(MATRIX))
def test_access_matrix(perm_broker, resources, close_frames, vhost, profile, operation):
    op, class_method, expected = MATRIX[operation]
    conn, ch = user_channel(perm_broker, profile, vhost)
    try:
        if profile in expected:
            code, text = expected[profile]
            with pytest.raises(CH_CLOSED) as e:
                op(ch, resources)
            expect_close(close_frames, e, code, text(resources, user(profile)), class_method)
            # Only the channel is closed.
            assert conn.is_open
            conn.channel().queue_declare(resources.q, passive=True)
        else:
            op(ch, resources)
            assert ch.is_open
    finally:
        if conn.is_open:
            conn.close()


@VHOSTS
@pytest.mark.parametrize("profile", ["noconf", "empty"])
def test_server_named_queue_needs_configure_on_its_generated_name(perm_broker, close_frames, vhost, profile):
    conn, ch = user_channel(perm_broker, profile, vhost)
    try:
        with pytest.raises(CH_CLOSED) as e:
            ch.queue_declare("", exclusive=True)
        expect_close(close_frames, e, 403, re.compile(
            rf"ACCESS_REFUSED - access to queue 'amq\.gen-[A-Za-z0-9_-]{{22}}' in vhost '{re.escape(vhost)}' "
            rf"refused for user '{re.escape(user(profile))}'"), (50, 10))
    finally:
        conn.close()
    conn, ch = user_channel(perm_broker, "nowrite", vhost)
    try:
        assert ch.queue_declare("", exclusive=True).method.queue.startswith("amq.gen-")
    finally:
        conn.close()


@VHOSTS
def test_checks_that_come_before_the_permission_check(perm_broker, close_frames, vhost):
    """What 'empty' (no permission at all) sees when something else fails first."""
    u = user("empty")
    cases = [
        # Queue names are checked before configure; exchange names after it.
        (lambda ch: ch.queue_declare("amq.mine"), 403,
         "ACCESS_REFUSED - queue name 'amq.mine' contains reserved prefix 'amq.*'", (50, 10)),
        (lambda ch: ch.exchange_declare("amq.mine", "direct"), 403,
         f"ACCESS_REFUSED - access to exchange 'amq.mine' in vhost '{vhost}' refused for user '{u}'", (40, 10)),
        (lambda ch: ch.exchange_declare("", "direct"), 403,
         "ACCESS_REFUSED - operation not permitted on the default exchange", (40, 10)),
        (lambda ch: ch.exchange_declare("", passive=True), 403,
         "ACCESS_REFUSED - operation not permitted on the default exchange", (40, 10)),
        (lambda ch: ch.exchange_delete(""), 403,
         "ACCESS_REFUSED - operation not permitted on the default exchange", (40, 20)),
        (lambda ch: ch.exchange_delete("amq.direct"), 403,
         f"ACCESS_REFUSED - deletion of system exchange 'amq.direct' in vhost '{vhost}' not allowed", (40, 20)),
        (lambda ch: ch.exchange_declare("amq.direct", "direct", durable=True), 403,
         f"ACCESS_REFUSED - access to exchange 'amq.direct' in vhost '{vhost}' refused for user '{u}'", (40, 10)),
    ]
    for action, code, text, class_method in cases:
        conn, ch = user_channel(perm_broker, "empty", vhost)
        try:
            with pytest.raises(CH_CLOSED) as e:
                action(ch)
            expect_close(close_frames, e, code, text, class_method)
        finally:
            conn.close()
    # An unknown exchange type is a connection error, raised before any permission check.
    conn, ch = user_channel(perm_broker, "empty", vhost)
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as e:
        ch.exchange_declare(n("x"), "bogus")
    assert (e.value.reply_code, e.value.reply_text) == (503, "COMMAND_INVALID - unknown exchange type 'bogus'")
    assert close_frames[-1] == ("connection", 503, "COMMAND_INVALID - unknown exchange type 'bogus'", 40, 10)


@VHOSTS
def test_permission_regexes_are_unanchored_and_empty_means_nothing(perm_broker, close_frames, vhost):
    """'regex' has configure 'foo', write 'amq\\.default', read '^bar-'."""
    u = user("regex")
    admin = perm_broker.connect(vhost=vhost)
    ach = admin.channel()
    q_ok, q_no = f"x{uuid.uuid4().hex[:6]}foox", f"fo-{uuid.uuid4().hex[:6]}"
    bar, xbar = n("bar"), n("xbar")
    ach.queue_declare(bar)
    ach.queue_declare(xbar)
    try:
        conn, ch = user_channel(perm_broker, "regex", vhost)
        ch.queue_declare(q_ok)
        ch.queue_delete(q_ok)
        ch.confirm_delivery()
        ch.basic_publish("", bar, b"m")
        assert ch.basic_get(bar, auto_ack=True)[2] == b"m"
        with pytest.raises(CH_CLOSED) as e:
            ch.queue_declare(q_no)
        expect_close(close_frames, e, 403,
                     f"ACCESS_REFUSED - access to queue '{q_no}' in vhost '{vhost}' refused for user '{u}'", (50, 10))
        ch = conn.channel()
        ch.confirm_delivery()
        with pytest.raises(CH_CLOSED) as e:
            ch.basic_publish("amq.direct", "k", b"m")
        expect_close(close_frames, e, 403,
                     f"ACCESS_REFUSED - access to exchange 'amq.direct' in vhost '{vhost}' refused for user '{u}'",
                     (60, 40))
        ch = conn.channel()
        with pytest.raises(CH_CLOSED) as e:
            ch.basic_get(xbar)
        expect_close(close_frames, e, 403,
                     f"ACCESS_REFUSED - access to queue '{xbar}' in vhost '{vhost}' refused for user '{u}'", (60, 70))
        conn.close()
    finally:
        ach.queue_delete(bar)
        ach.queue_delete(xbar)
        ach.queue_delete(q_ok)
        admin.close()


# ---------------------------------------------------------------------------------------
# connection.open


def test_vhost_access_needs_a_permission_entry(perm_broker, close_frames):
    for who, vhost in [("nobody", "/"), ("nobody", VHOST2), ("onlyv2", "/")]:
        with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as e:
            perm_broker.connect(user(who), PASSWORD, vhost)
        text = f"NOT_ALLOWED - access to vhost '{vhost}' refused for user '{user(who)}'"
        assert refusal(e.value) == (530, text)
        assert close_frames[-1] == ("connection", 530, text, 10, 40)
    # Any entry grants access, even one whose regexes match nothing.
    for who, vhost in [("onlyv2", VHOST2), ("empty", "/"), ("empty", VHOST2)]:
        perm_broker.connect(user(who), PASSWORD, vhost).close()


def test_users_from_definitions_log_in_with_their_password(perm_broker, close_frames):
    perm_broker.connect(user("all"), PASSWORD).close()
    for who, password in [(user("all"), "wrong"), (f"unknown-{TAG}", PASSWORD)]:
        with pytest.raises(pika.exceptions.ProbableAuthenticationError) as e:
            perm_broker.connect(who, password)
        text = "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN. For details see the broker logfile."
        assert refusal(e.value) == (403, text)
        assert close_frames[-1] == ("connection", 403, text, 0, 0)


# ---------------------------------------------------------------------------------------
# Topic permissions: 'topic' has write '^a\.' and read '^b\.' on amq.topic


def topic_refused(vhost, key, exchange="amq.topic", who="topic"):
    return (f"ACCESS_REFUSED - access to topic '{key}' in exchange '{exchange}' in vhost '{vhost}' "
            f"refused for user '{user(who)}'")


@VHOSTS
def test_topic_write_permission_on_publish(perm_broker, close_frames, vhost):
    conn, ch = user_channel(perm_broker, "topic", vhost)
    try:
        ch.confirm_delivery()
        ch.basic_publish("amq.topic", "a.1", b"m")
        for key in ["b.1", "", "xa.1"]:
            with pytest.raises(CH_CLOSED) as e:
                ch.basic_publish("amq.topic", key, b"m")
            expect_close(close_frames, e, 403, topic_refused(vhost, key), (60, 40))
            ch = conn.channel()
            ch.confirm_delivery()
    finally:
        conn.close()


@VHOSTS
def test_topic_read_permission_on_bind_and_unbind(perm_broker, close_frames, vhost):
    admin = perm_broker.connect(vhost=vhost)
    ach = admin.channel()
    q, x = n("tq"), n("tx")
    ach.queue_declare(q)
    ach.exchange_declare(x, "fanout")
    conn, ch = user_channel(perm_broker, "topic", vhost)
    try:
        ch.queue_bind(q, "amq.topic", "b.1")
        ch.queue_bind(q, "amq.topic", "b.#")
        ch.queue_unbind(q, "amq.topic", "b.1")
        ch.exchange_bind(x, "amq.topic", "b.1")
        # The destination of an exchange binding is not checked against topic permissions.
        ch.exchange_bind("amq.topic", x, "zz")
        # Consuming has no topic check.
        ch.basic_consume(q, lambda *a: None)
        for action, class_method in [
            (lambda ch: ch.queue_bind(q, "amq.topic", "a.1"), (50, 20)),
            # also when there is no such binding
            (lambda ch: ch.queue_unbind(q, "amq.topic", "a.1"), (50, 50)),
            (lambda ch: ch.exchange_bind(x, "amq.topic", "a.1"), (40, 30)),
            (lambda ch: ch.exchange_unbind(x, "amq.topic", "a.1"), (40, 40)),
            # the queue need not exist: the topic check comes first
            (lambda ch: ch.queue_bind(n("missing"), "amq.topic", "a.1"), (50, 20)),
        ]:
            ch = conn.channel()
            with pytest.raises(CH_CLOSED) as e:
                action(ch)
            expect_close(close_frames, e, 403, topic_refused(vhost, "a.1"), class_method)
        ch = conn.channel()
        missing = n("missing")
        with pytest.raises(CH_CLOSED) as e:
            ch.queue_bind(missing, "amq.topic", "b.1")
        expect_close(close_frames, e, 404, f"NOT_FOUND - no queue '{missing}' in vhost '{vhost}'", (50, 20))
    finally:
        conn.close()
        ach.exchange_unbind("amq.topic", x, "zz")
        ach.queue_delete(q)
        ach.exchange_delete(x)
        admin.close()


@VHOSTS
def test_topic_permissions_apply_to_named_topic_exchanges_only(perm_broker, close_frames, vhost):
    admin = perm_broker.connect(vhost=vhost)
    ach = admin.channel()
    other, q = n("topic-x"), n("tq")
    ach.exchange_declare(other, "topic")
    ach.queue_declare(q)
    conn, ch = user_channel(perm_broker, "topic", vhost)
    try:
        ch.confirm_delivery()
        # A topic exchange without a topic permission for this user: anything goes.
        ch.basic_publish(other, "zz", b"m")
        ch.queue_bind(q, other, "zz")
        # amq.direct has a topic permission, but it is not a topic exchange.
        ch.basic_publish("amq.direct", "zz", b"m")
        ch.queue_bind(q, "amq.direct", "zz")
        # The default exchange is a direct exchange.
        ch.basic_publish("", q, b"m")
        # A missing exchange is reported before the topic check.
        missing = n("missing")
        with pytest.raises(CH_CLOSED) as e:
            ch.basic_publish(missing, "zz", b"m")
        expect_close(close_frames, e, 404, f"NOT_FOUND - no exchange '{missing}' in vhost '{vhost}'", (60, 40))
    finally:
        conn.close()
        ach.exchange_delete(other)
        ach.queue_delete(q)
        admin.close()


@VHOSTS
def test_topic_permission_variables(perm_broker, close_frames, vhost):
    """On vars-<tag>: write '^{username}\\.', read '^{vhost}\\.'."""
    x = f"vars-{TAG}"
    admin = perm_broker.connect(vhost=vhost)
    ach = admin.channel()
    q = n("tq")
    ach.exchange_declare(x, "topic")
    ach.queue_declare(q)
    u = user("topic")
    conn, ch = user_channel(perm_broker, "topic", vhost)
    try:
        ch.confirm_delivery()
        ch.basic_publish(x, f"{u}.x", b"m")
        ch.queue_bind(q, x, f"{vhost}.x")
        for key in ["other.x", "{username}.x"]:
            with pytest.raises(CH_CLOSED) as e:
                ch.basic_publish(x, key, b"m")
            expect_close(close_frames, e, 403, topic_refused(vhost, key, x), (60, 40))
            ch = conn.channel()
            ch.confirm_delivery()
        with pytest.raises(CH_CLOSED) as e:
            ch.queue_bind(q, x, f"{u}.x")
        expect_close(close_frames, e, 403, topic_refused(vhost, f"{u}.x", x), (50, 20))
    finally:
        conn.close()
        ach.exchange_delete(x)
        ach.queue_delete(q)
        admin.close()


@VHOSTS
def test_empty_topic_regex_allows_only_the_empty_key(perm_broker, close_frames, vhost):
    x = f"emptyre-{TAG}"
    admin = perm_broker.connect(vhost=vhost)
    ach = admin.channel()
    ach.exchange_declare(x, "topic")
    conn, ch = user_channel(perm_broker, "topic", vhost)
    try:
        ch.confirm_delivery()
        ch.basic_publish(x, "", b"m")
        with pytest.raises(CH_CLOSED) as e:
            ch.basic_publish(x, "a", b"m")
        expect_close(close_frames, e, 403, topic_refused(vhost, "a", x), (60, 40))
    finally:
        conn.close()
        ach.exchange_delete(x)
        admin.close()


@VHOSTS
def test_normal_permission_is_checked_before_the_topic_permission(perm_broker, close_frames, vhost):
    conn, ch = user_channel(perm_broker, "nowrite", vhost)
    try:
        ch.confirm_delivery()
        with pytest.raises(CH_CLOSED) as e:
            ch.basic_publish("amq.topic", "zz", b"m")
        expect_close(close_frames, e, 403,
                     f"ACCESS_REFUSED - access to exchange 'amq.topic' in vhost '{vhost}' "
                     f"refused for user '{user('nowrite')}'", (60, 40))
    finally:
        conn.close()
    admin = perm_broker.connect(vhost=vhost)
    q = n("tq")
    admin.channel().queue_declare(q, auto_delete=True)
    conn, ch = user_channel(perm_broker, "noread", vhost)
    try:
        with pytest.raises(CH_CLOSED) as e:
            ch.queue_bind(q, "amq.topic", "zz")
        expect_close(close_frames, e, 403,
                     f"ACCESS_REFUSED - access to exchange 'amq.topic' in vhost '{vhost}' "
                     f"refused for user '{user('noread')}'", (50, 20))
    finally:
        conn.close()
        admin.channel().queue_delete(q)
        admin.close()


def test_topic_permissions_are_per_vhost(perm_broker, close_frames):
    """'topicv2' has a topic permission (write '^a') on amq.topic in the second vhost, and in
    '/' only one for the exchange named 'amq\\.top.*', which does not match amq.topic."""
    conn, ch = user_channel(perm_broker, "topicv2", "/")
    ch.confirm_delivery()
    ch.basic_publish("amq.topic", "zz", b"m")
    conn.close()
    conn, ch = user_channel(perm_broker, "topicv2", VHOST2)
    try:
        ch.confirm_delivery()
        ch.basic_publish("amq.topic", "a", b"m")
        with pytest.raises(CH_CLOSED) as e:
            ch.basic_publish("amq.topic", "zz", b"m")
        expect_close(close_frames, e, 403, topic_refused(VHOST2, "zz", who="topicv2"), (60, 40))
    finally:
        conn.close()


# ---------------------------------------------------------------------------------------
# Changes while a user is connected (need a runtime admin command: rabbitmqctl)


def wait_closed(conn, seconds=WAIT):
    deadline = time.monotonic() + seconds
    try:
        while conn.is_open and time.monotonic() < deadline:
            conn.process_data_events(0.1)
    except pika.exceptions.ConnectionClosedByBroker as e:
        return e
    raise AssertionError("the broker did not close the connection")


@pytest.fixture
def live(broker_with_definitions):
    if not os.environ.get("AMQP_TEST_PORT"):
        pytest.skip("needs a runtime admin command; only wired up for RabbitMQ (rabbitmqctl)")
    u, v = n("live"), n("live-vh")
    b = broker_with_definitions({
        "users": [user_def(u, PASSWORD)],
        "vhosts": [{"name": v}],
        "permissions": [permission_def(u, "/"), permission_def(u, v)],
    })
    return SimpleNamespace(broker=b, user=u, vhost=v)


def test_deleting_a_user_closes_its_connections(live, close_frames):
    conn = live.broker.connect(live.user, PASSWORD)
    ch = conn.channel()
    ch.queue_declare("", exclusive=True)
    live.broker.ctl("delete_user", live.user)
    e = wait_closed(conn)
    text = f"CONNECTION_FORCED - user '{live.user}' is deleted"
    assert (e.reply_code, e.reply_text) == (320, text)
    assert close_frames[-1] == ("connection", 320, text, 0, 0)


def test_deleting_a_vhost_closes_its_connections(live, close_frames):
    conn = live.broker.connect(live.user, PASSWORD, live.vhost)
    conn.channel().queue_declare("", exclusive=True)
    other = live.broker.connect(live.user, PASSWORD, "/")
    live.broker.ctl("delete_vhost", live.vhost)
    e = wait_closed(conn)
    # RabbitMQ closes with "is deleted"; now and then its "vhost_down" event wins the race
    # and the text is "is down".
    assert e.reply_code == 320
    assert e.reply_text in (f"CONNECTION_FORCED - vhost '{live.vhost}' is deleted",
                            f"CONNECTION_FORCED - vhost '{live.vhost}' is down")
    assert close_frames[-1] == ("connection", 320, e.reply_text, 0, 0)
    assert other.is_open
    other.channel().queue_declare("", exclusive=True)
    other.close()


def test_clearing_permissions_refuses_later_operations_but_keeps_the_connection(live, close_frames):
    conn = live.broker.connect(live.user, PASSWORD, live.vhost)
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    live.broker.ctl("clear_permissions", "-p", live.vhost, live.user)
    conn.process_data_events(0.5)
    assert conn.is_open and ch.is_open
    # A new channel on the open connection is refused at its next operation. (An existing
    # channel may still pass for a moment on RabbitMQ: it caches recent checks until it idles.)
    ch2 = conn.channel()
    with pytest.raises(CH_CLOSED) as e:
        ch2.basic_get(q)
    expect_close(close_frames, e, 403,
                 f"ACCESS_REFUSED - access to queue '{q}' in vhost '{live.vhost}' refused for user '{live.user}'",
                 (60, 70))
    assert conn.is_open
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as e:
        live.broker.connect(live.user, PASSWORD, live.vhost)
    assert refusal(e.value) == (530, f"NOT_ALLOWED - access to vhost '{live.vhost}' refused for user '{live.user}'")
    conn.close()
