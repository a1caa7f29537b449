"""Starts a real `ferrymq server` on a free port with a temporary data dir for each test.

Against an external broker (AMQP_TEST_PORT=5680, e.g. a RabbitMQ 3.10) the same tests check
that they describe RabbitMQ's behaviour. Tests that need users, vhosts, permissions or limits
use `broker_with_definitions` (or its module-scoped twin): FerryMQ is started with
`--load-definitions FILE`; an external RabbitMQ gets the same definitions through
`$RABBITMQCTL import_definitions FILE`, and everything the test added is removed afterwards.
"""

import ast
import base64
import hashlib
import json
import os
import re
import shlex
import subprocess
import threading
import time
from pathlib import Path

import pika
import pytest
from pika import channel as _pika_channel
from pika import connection as _pika_connection

ROOT = Path(__file__).resolve().parents[2]


def _binary() -> str:
    env = os.environ.get("FERRYMQ_BIN")
    if env:
        return env
    return str(ROOT / "target" / "debug" / "ferrymq")


def _params(port, user="guest", password="guest", vhost="/", **kwargs) -> pika.ConnectionParameters:
    return pika.ConnectionParameters(
        host="127.0.0.1", port=port, virtual_host=vhost,
        credentials=pika.PlainCredentials(user, password), **kwargs)


class ExternalBroker:
    """A broker someone else runs, e.g. RabbitMQ, to check that these tests describe
    RabbitMQ's behaviour: AMQP_TEST_PORT=5680 pytest tests/python"""

    external = True

    def __init__(self, port: int):
        self.port = port
        # The reference broker's management listener (rabbitmq_management), if any.
        self.http_port = int(os.environ.get("MGMT_TEST_PORT", "15672"))
        # Its rabbitmq_prometheus listener, if any.
        self.prometheus_port = int(os.environ.get("PROMETHEUS_TEST_PORT", "15692"))

    def params(self, user="guest", password="guest", vhost="/", **kwargs) -> pika.ConnectionParameters:
        return _params(self.port, user, password, vhost, **kwargs)

    def connect(self, user="guest", password="guest", vhost="/", **kwargs) -> pika.BlockingConnection:
        return pika.BlockingConnection(self.params(user, password, vhost, **kwargs))

    def ctl(self, *args):
        pytest.skip("needs RABBITMQCTL to change the broker at runtime")

    def restart(self):
        """RabbitMQ's application stopped and started again (`rabbitmqctl stop_app`, then
        `start_app`): it closes every connection with 320 CONNECTION_FORCED, keeps durable
        entities and persistent messages."""
        cmd = _rabbitmqctl()
        for action in ("stop_app", "start_app"):
            subprocess.run(cmd + [action], check=True, capture_output=True, timeout=120)

    def stop(self):
        pass


class Broker:
    external = False

    def __init__(self, tmp_path: Path, extra_args=(), data_dir: Path = None, amqp_port: int = 0,
                 bind="127.0.0.1"):
        args = list(extra_args)
        self._restart_args = (tmp_path, tuple(extra_args), data_dir, bind)
        # bind=None leaves the broker's default listen address.
        bind_args = ["--bind", bind] if bind else []
        # Which listen lines to wait for: plain unless turned off, AMQPS when configured.
        want_plain = not any(a == "--plain-listener" and b == "false" for a, b in zip(args, args[1:]))
        want_tls = "--tls-certfile" in args
        want_http = not any(a == "--management-listener" and b == "false" for a, b in zip(args, args[1:]))
        want_prom = not any(a == "--prometheus-listener" and b == "false" for a, b in zip(args, args[1:]))
        self.proc = subprocess.Popen(
            [_binary(), "server", *bind_args, "--amqp-port", str(amqp_port), "--management-port", "0", "--prometheus-port", "0",
             "--data-dir", str(data_dir or tmp_path / "data"), *args],
            stderr=subprocess.PIPE, text=True,
        )
        self.port = None
        self.tls_port = None
        self.http_port = None
        self.prometheus_port = None
        self.log = []
        ready = threading.Event()

        def pump():
            for line in self.proc.stderr:
                if len(self.log) < 200:
                    self.log.append(line)
                m = re.search(r"AMQP listening on \S+:(\d+)", line)
                if m and self.port is None:
                    self.port = int(m.group(1))
                m = re.search(r"AMQPS listening on \S+:(\d+)", line)
                if m and self.tls_port is None:
                    self.tls_port = int(m.group(1))
                m = re.search(r"HTTP API listening on \S+:(\d+)", line)
                if m and self.http_port is None:
                    self.http_port = int(m.group(1))
                m = re.search(r"Prometheus metrics listening on \S+:(\d+)", line)
                if m and self.prometheus_port is None:
                    self.prometheus_port = int(m.group(1))
                if ((self.port or not want_plain) and (self.tls_port or not want_tls)
                        and (self.http_port or not want_http)
                        and (self.prometheus_port or not want_prom)):
                    ready.set()
        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + 30
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("ferrymq did not start:\n" + "".join(self.log[-20:]))

    def params(self, user="guest", password="guest", vhost="/", **kwargs) -> pika.ConnectionParameters:
        return _params(self.port, user, password, vhost, **kwargs)

    def connect(self, user="guest", password="guest", vhost="/", **kwargs) -> pika.BlockingConnection:
        return pika.BlockingConnection(self.params(user, password, vhost, **kwargs))

    def ctl(self, *args):
        pytest.skip("no runtime administration command for FerryMQ in this suite yet")

    def restart(self):
        """Stops the broker (it closes every connection with 320 CONNECTION_FORCED) and starts
        it again on the same port with the same data dir."""
        self.stop()
        tmp_path, extra_args, data_dir, bind = self._restart_args
        self.__init__(tmp_path, extra_args, data_dir, amqp_port=self.port, bind=bind)

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


# ---------------------------------------------------------------------------------------
# Definitions: users, vhosts, permissions, topic permissions and limits


def rabbit_password_hash(password: str, salt: bytes = None) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256 hash: base64(salt ++ sha256(salt ++ password))
    with a random 4-byte salt."""
    salt = os.urandom(4) if salt is None else salt
    return base64.b64encode(salt + hashlib.sha256(salt + password.encode()).digest()).decode()


def user_def(name, password, tags=(), limits=None):
    """One entry of the definitions' "users" list."""
    u = {"name": name, "password_hash": rabbit_password_hash(password),
         "hashing_algorithm": "rabbit_password_hashing_sha256", "tags": list(tags)}
    if limits:
        u["limits"] = dict(limits)
    return u


def permission_def(user, vhost, configure=".*", write=".*", read=".*"):
    return {"user": user, "vhost": vhost, "configure": configure, "write": write, "read": read}


def topic_permission_def(user, vhost, exchange, write, read):
    return {"user": user, "vhost": vhost, "exchange": exchange, "write": write, "read": read}


def vhost_limits_def(vhost, **limits):
    """Vhost limits as RabbitMQ exports and imports them: a "vhost-limits" parameter
    (RabbitMQ ignores the "limits" list inside "vhosts" entries on import).
    Keys use underscores here: max_connections=1 -> "max-connections": 1."""
    return {"vhost": vhost, "component": "vhost-limits", "name": "limits",
            "value": {k.replace("_", "-"): v for k, v in limits.items()}}


def with_defaults(definitions: dict) -> dict:
    """The definitions a test asked for, plus the default user guest (administrator, all
    permissions on every vhost in the file) and the vhost '/'. RabbitMQ does not create its
    default user and vhost when it loads definitions at boot, so the file carries them."""
    d = {k: list(v) if isinstance(v, list) else v for k, v in definitions.items()}
    for key in ("users", "vhosts", "permissions", "topic_permissions", "parameters"):
        d.setdefault(key, [])
    if not any(u["name"] == "guest" for u in d["users"]):
        d["users"].insert(0, user_def("guest", "guest", tags=["administrator"]))
    if not any(v["name"] == "/" for v in d["vhosts"]):
        d["vhosts"].insert(0, {"name": "/"})
    for v in d["vhosts"]:
        if not any(p["user"] == "guest" and p["vhost"] == v["name"] for p in d["permissions"]):
            d["permissions"].append(permission_def("guest", v["name"]))
    return d


def _rabbitmqctl():
    cmd = os.environ.get("RABBITMQCTL")
    if not cmd:
        pytest.skip('set RABBITMQCTL (e.g. "/usr/lib/rabbitmq/bin/rabbitmqctl -n ferrytest@localhost") '
                    "to load definitions into the external broker")
    return shlex.split(cmd)


class ExternalBrokerWithDefinitions(ExternalBroker):
    """The external RabbitMQ with a test's definitions imported; stop() removes them."""

    def __init__(self, port, definitions: dict, workdir: Path, extra_args=()):
        super().__init__(port)
        self.ctl_cmd = _rabbitmqctl()
        self.defs = definitions
        self.restore = []
        try:
            self._apply_extra_args(list(extra_args))
            path = workdir / "definitions.json"
            path.write_text(json.dumps(definitions, indent=1))
            # Synchronous despite its "asynchronous" message: the CLI waits for
            # rabbit_definitions:import_parsed on the node.
            self.ctl("import_definitions", str(path))
        except BaseException:
            self.stop()
            raise

    def ctl(self, *args, check=True):
        r = subprocess.run(self.ctl_cmd + [str(a) for a in args], capture_output=True, text=True, timeout=120)
        if check and r.returncode != 0:
            raise RuntimeError(f"rabbitmqctl {' '.join(map(str, args))} failed: {r.stdout}{r.stderr}")
        return r.stdout

    def _eval(self, expr):
        return self.ctl("eval", expr).strip()

    def _apply_extra_args(self, args):
        while args:
            flag = args.pop(0)
            if flag == "--consumer-timeout":
                ms = int(args.pop(0))
                old = self._eval("{application:get_env(rabbit, consumer_timeout), "
                                 "application:get_env(rabbit, channel_tick_interval)}.")
                self.restore.append(old)
                # RabbitMQ checks consumer timeouts on its channel tick (60 s by default):
                # tick often so that a test sees the timeout soon after it expires. Both are
                # read when a channel opens.
                self._eval(f"application:set_env(rabbit, consumer_timeout, {ms}), "
                           "application:set_env(rabbit, channel_tick_interval, 100).")
            else:
                pytest.skip(f"server flag {flag} has no RabbitMQ equivalent in this suite")

    def stop(self):
        errors = []

        def attempt(*args):
            try:
                self.ctl(*args, check=False)
            except Exception as e:  # keep cleaning up
                errors.append(e)
        for v in self.defs.get("vhosts", []):
            if v["name"] != "/":
                attempt("delete_vhost", v["name"])
        for u in self.defs.get("users", []):
            if u["name"] != "guest":
                attempt("delete_user", u["name"])
            elif u.get("limits"):
                attempt("clear_user_limits", "guest", "all")
        for p in self.defs.get("parameters", []):
            if p.get("component") == "vhost-limits" and p.get("vhost") == "/":
                attempt("clear_vhost_limits", "-p", "/")
        for p in self.defs.get("permissions", []):
            if p["user"] == "guest" and p["vhost"] == "/" and (p["configure"], p["write"], p["read"]) != (".*",) * 3:
                attempt("set_permissions", "-p", "/", "guest", ".*", ".*", ".*")
        for t in self.defs.get("topic_permissions", []):
            if t["user"] == "guest" and t["vhost"] == "/":
                attempt("clear_topic_permissions", "-p", "/", "guest")
        for old in self.restore:
            # old is "{{ok,Timeout} | undefined, {ok,Tick}}"
            m = re.fullmatch(r"\{(\{ok,(\d+)\}|undefined),\{ok,(\d+)\}\}", old)
            timeout = f"application:set_env(rabbit, consumer_timeout, {m.group(2)})" if m and m.group(2) \
                else "application:unset_env(rabbit, consumer_timeout)"
            tick = m.group(3) if m else "60000"
            try:
                self._eval(f"{timeout}, application:set_env(rabbit, channel_tick_interval, {tick}).")
            except Exception as e:
                errors.append(e)
        self.restore = []
        if errors:
            raise errors[0]


class DefinitionsBrokers:
    """Factory: `start(definitions, extra_args=())` returns a started broker (FerryMQ or the
    external one) with the definitions loaded. All of them are stopped/cleaned by stop_all()."""

    def __init__(self, make_dir):
        self.make_dir = make_dir
        self.started = []

    def __call__(self, definitions: dict, extra_args=()):
        defs = with_defaults(definitions)
        workdir = self.make_dir()
        external = os.environ.get("AMQP_TEST_PORT")
        if external:
            b = ExternalBrokerWithDefinitions(int(external), defs, workdir, extra_args)
        else:
            path = workdir / "definitions.json"
            path.write_text(json.dumps(defs, indent=1))
            b = Broker(workdir, extra_args=["--load-definitions", str(path), *extra_args])
        self.started.append(b)
        return b

    def stop_all(self):
        errors = []
        while self.started:
            try:
                self.started.pop().stop()
            except Exception as e:
                errors.append(e)
        if errors:
            raise errors[0]


@pytest.fixture
def broker_with_definitions(tmp_path):
    """broker_with_definitions({"users": [...], "vhosts": [...], "permissions": [...],
    "topic_permissions": [...], "parameters": [vhost limits]}, extra_args=["--consumer-timeout", "1000"])"""
    counter = iter(range(1000))

    def make_dir():
        d = tmp_path / f"broker{next(counter)}"
        d.mkdir()
        return d
    factory = DefinitionsBrokers(make_dir)
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.fixture(scope="module")
def module_broker_with_definitions(tmp_path_factory):
    """Like broker_with_definitions, for a broker shared by the tests of one module."""
    factory = DefinitionsBrokers(lambda: tmp_path_factory.mktemp("broker"))
    try:
        yield factory
    finally:
        factory.stop_all()


# ---------------------------------------------------------------------------------------
# What the client saw


@pytest.fixture
def close_frames(monkeypatch):
    """Records every channel.close / connection.close the broker sends, as
    (kind, reply_code, reply_text, class_id, method_id): pika's exceptions drop the ids."""
    frames = []
    on_channel_close = _pika_channel.Channel._on_close_from_broker
    on_connection_close = _pika_connection.Connection._on_connection_close_from_broker

    def channel_close(self, method_frame):
        m = method_frame.method
        frames.append(("channel", m.reply_code, m.reply_text, m.class_id, m.method_id))
        return on_channel_close(self, method_frame)

    def connection_close(self, method_frame):
        m = method_frame.method
        frames.append(("connection", m.reply_code, m.reply_text, m.class_id, m.method_id))
        return on_connection_close(self, method_frame)
    monkeypatch.setattr(_pika_channel.Channel, "_on_close_from_broker", channel_close)
    monkeypatch.setattr(_pika_connection.Connection, "_on_connection_close_from_broker", connection_close)
    return frames


def refusal(exc) -> tuple:
    """(reply_code, reply_text) of the connection.close inside pika's
    ProbableAccessDeniedError / ProbableAuthenticationError (raised when the broker closes
    the connection during the handshake), or of a ConnectionClosedByBroker."""
    if isinstance(exc, pika.exceptions.ConnectionClosed):
        return exc.reply_code, exc.reply_text
    m = re.fullmatch(r"ConnectionClosedByBroker: \((\d+)\) (.*)", str(exc.args[0]), re.S)
    assert m, f"not a broker close: {exc!r}"
    return int(m.group(1)), ast.literal_eval(m.group(2))


# ---------------------------------------------------------------------------------------
# TLS (AMQPS): certificates made with the `cryptography` package, and FerryMQ with a TLS
# listener


class Pki:
    """A test CA in `directory` that signs server and client certificates (EC P-256)."""

    def __init__(self, directory: Path, name="test"):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
        self.dir = directory
        self.dir.mkdir(parents=True, exist_ok=True)
        self._x509, self._hashes, self._ec, self._oid = x509, hashes, ec, NameOID
        self.ca_key = ec.generate_private_key(ec.SECP256R1())
        self.ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"FerryMQ test CA {name}")])
        self.ca_cert = (self._builder(self.ca_name, self.ca_name, self.ca_key.public_key())
                        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                        .sign(self.ca_key, hashes.SHA256()))
        self.ca_file = self.dir / "ca.pem"
        self.ca_file.write_bytes(self._pem(self.ca_cert))

    def _builder(self, subject, issuer, public_key):
        import datetime
        x509 = self._x509
        now = datetime.datetime.now(datetime.timezone.utc)
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer)
                .public_key(public_key).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30)))

    @staticmethod
    def _pem(cert) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding
        return cert.public_bytes(Encoding.PEM)

    @staticmethod
    def _key_pem(key) -> bytes:
        from cryptography.hazmat.primitives import serialization
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    def issue(self, stem: str, cn: str, server: bool):
        """Writes `stem`.pem and `stem`.key (a server certificate for 127.0.0.1/localhost, or a
        client certificate with subject CN `cn`); returns (cert path, key path)."""
        import ipaddress
        x509, oid = self._x509, self._oid
        key = self._ec.generate_private_key(self._ec.SECP256R1())
        b = self._builder(x509.Name([x509.NameAttribute(oid.COMMON_NAME, cn)]), self.ca_name,
                          key.public_key())
        b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        if server:
            b = b.add_extension(x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            b = b.add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        else:
            b = b.add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        cert = b.sign(self.ca_key, self._hashes.SHA256())
        cert_file, key_file = self.dir / f"{stem}.pem", self.dir / f"{stem}.key"
        cert_file.write_bytes(self._pem(cert))
        key_file.write_bytes(self._key_pem(key))
        return cert_file, key_file

    def client(self, cn: str):
        return self.issue(f"client-{cn}", cn, server=False)


class TlsBroker(Broker):
    """FerryMQ with an AMQPS listener whose certificate `pki` signed."""

    def __init__(self, workdir: Path, pki: Pki, verify_peer=False, fail_if_no_peer_cert=False,
                 plain=True, extra_args=()):
        self.pki = pki
        cert, key = pki.issue("server", "ferrymq", server=True)
        args = ["--tls-port", "0", "--tls-certfile", str(cert), "--tls-keyfile", str(key)]
        if verify_peer:
            args += ["--tls-cacertfile", str(pki.ca_file), "--tls-verify", "verify_peer",
                     "--tls-fail-if-no-peer-cert", "true" if fail_if_no_peer_cert else "false"]
        if not plain:
            args += ["--plain-listener", "false"]
        super().__init__(workdir, extra_args=[*args, *extra_args])

    def ssl_options(self, client_cert=None, trust: Pki = None) -> pika.SSLOptions:
        """pika's TLS options: trust `trust` (default: this broker's CA), present `client_cert`
        ((cert path, key path)) if given."""
        import ssl
        context = ssl.create_default_context(cafile=str((trust or self.pki).ca_file))
        if client_cert:
            context.load_cert_chain(str(client_cert[0]), str(client_cert[1]))
        return pika.SSLOptions(context, server_hostname="localhost")

    def tls_params(self, credentials=None, client_cert=None, vhost="/", **kwargs) -> pika.ConnectionParameters:
        return pika.ConnectionParameters(
            host="127.0.0.1", port=self.tls_port, virtual_host=vhost,
            credentials=credentials or pika.PlainCredentials("guest", "guest"),
            ssl_options=self.ssl_options(client_cert), **kwargs)

    def connect_tls(self, credentials=None, client_cert=None, **kwargs) -> pika.BlockingConnection:
        return pika.BlockingConnection(self.tls_params(credentials, client_cert, **kwargs))


@pytest.fixture
def tls_broker(tmp_path):
    """tls_broker(verify_peer=False, fail_if_no_peer_cert=False, plain=True, definitions=None)
    starts FerryMQ with AMQPS (`.tls_port`, `.pki`, `.connect_tls(...)`); with `definitions`
    they are loaded at boot as `broker_with_definitions` does. FerryMQ only: the TLS tests
    start their own broker even when AMQP_TEST_PORT points at another one."""
    started = []
    counter = iter(range(1000))

    def start(definitions=None, **kwargs):
        workdir = tmp_path / f"tls{next(counter)}"
        workdir.mkdir()
        extra = []
        if definitions is not None:
            path = workdir / "definitions.json"
            path.write_text(json.dumps(with_defaults(definitions), indent=1))
            extra = ["--load-definitions", str(path)]
        b = TlsBroker(workdir, Pki(workdir / "pki"), extra_args=extra, **kwargs)
        started.append(b)
        return b
    try:
        yield start
    finally:
        for b in started:
            b.stop()


# ---------------------------------------------------------------------------------------
# Other client libraries (test_client_*.py)


def against_ferrymq() -> bool:
    """True when the tests run against the FerryMQ binary (AMQP_TEST_PORT unset)."""
    return not os.environ.get("AMQP_TEST_PORT")


def divergence(reason: str):
    """Marks a test that passes against RabbitMQ 3.10 and fails against FerryMQ: an expected
    failure (strict, so a fix shows up as XPASS and the mark must go) only against FerryMQ."""
    return pytest.mark.xfail(against_ferrymq(), reason=f"FerryMQ divergence: {reason}", strict=True)


def amqp_url(broker, vhost="") -> str:
    """amqp://guest:guest@127.0.0.1:PORT/ (vhost "" is the default vhost "/")."""
    return f"amqp://guest:guest@127.0.0.1:{broker.port}/{vhost}"


def run_async(coro, timeout=30):
    """Runs one asyncio test body in a fresh event loop, with a deadline."""
    import asyncio

    async def bounded():
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def wait_until(predicate, timeout=10, interval=0.05, what="condition"):
    """Polls `predicate` until it returns something truthy (returned) or the deadline passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(interval)


@pytest.fixture(scope="module")
def module_broker(tmp_path_factory):
    """One broker shared by the tests of a module (FerryMQ, or the external one)."""
    external = os.environ.get("AMQP_TEST_PORT")
    b = ExternalBroker(int(external)) if external else Broker(tmp_path_factory.mktemp("broker"))
    try:
        yield b
    finally:
        b.stop()
