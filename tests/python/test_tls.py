"""AMQPS with pika: TLS beside plain AMQP, a TLS-only broker, client certificates and the
EXTERNAL mechanism (user = the certificate's subject CN), as with RabbitMQ's
rabbitmq_auth_mechanism_ssl. Certificates are made per test with the `cryptography` package
(see `Pki` in conftest.py)."""

import pika
import pytest

from conftest import Pki, permission_def, refusal

# A user without a password: it can only log in with its certificate.
BILLING = {
    "users": [{"name": "billing-app", "password_hash": "", "tags": []}],
    "permissions": [permission_def("billing-app", "/", configure=r"^billing\.")],
}


def test_pika_over_tls_and_plain_share_one_broker(tls_broker):
    b = tls_broker()
    with b.connect() as plain, b.connect_tls() as tls:
        pch, tch = plain.channel(), tls.channel()
        pch.confirm_delivery()
        tch.confirm_delivery()
        pch.queue_declare("shared")
        pch.basic_publish("", "shared", b"over tcp")
        _, _, body = tch.basic_get("shared", auto_ack=True)
        assert body == b"over tcp"
        big = bytes(range(256)) * 2000  # spans TLS records and AMQP frames
        tch.basic_publish("", "shared", big)
        _, _, body = pch.basic_get("shared", auto_ack=True)
        assert body == big


def test_a_tls_only_broker_refuses_plain_amqp(tls_broker):
    b = tls_broker(plain=False)
    assert b.port is None
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(pika.ConnectionParameters(
            host="127.0.0.1", port=b.tls_port, connection_attempts=1, socket_timeout=5))
    with b.connect_tls() as c:
        ch = c.channel()
        ch.queue_declare("secure")


def test_external_logs_in_as_the_certificate_cn_and_its_permissions_apply(tls_broker):
    b = tls_broker(verify_peer=True, definitions=BILLING)
    cert = b.pki.client("billing-app")
    with b.connect_tls(credentials=pika.credentials.ExternalCredentials(), client_cert=cert) as c:
        ch = c.channel()
        ch.confirm_delivery()
        ch.queue_declare("billing.jobs")
        ch.basic_publish("", "billing.jobs", b"invoice")
        _, _, body = ch.basic_get("billing.jobs", auto_ack=True)
        assert body == b"invoice"
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            ch.queue_declare("other")
        assert e.value.reply_code == 403
        assert e.value.reply_text == ("ACCESS_REFUSED - access to queue 'other' in vhost '/' "
                                      "refused for user 'billing-app'")
    # The same certificate with PLAIN logs in as the user named in the credentials.
    with b.connect_tls(client_cert=cert) as c:
        c.channel().queue_declare("guest-queue")


def test_external_needs_a_verified_certificate(tls_broker):
    b = tls_broker(verify_peer=True, definitions=BILLING)
    # Without a client certificate the broker does not offer EXTERNAL; pika gives up.
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        b.connect_tls(credentials=pika.credentials.ExternalCredentials(), connection_attempts=1)
    # Nor on the plain port, even for a client that has a certificate elsewhere.
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        pika.BlockingConnection(pika.ConnectionParameters(
            host="127.0.0.1", port=b.port, credentials=pika.credentials.ExternalCredentials(),
            connection_attempts=1))


def test_external_with_a_cn_that_is_no_user_is_refused(tls_broker):
    b = tls_broker(verify_peer=True, definitions=BILLING)
    with pytest.raises(pika.exceptions.AMQPConnectionError) as e:
        b.connect_tls(credentials=pika.credentials.ExternalCredentials(),
                      client_cert=b.pki.client("nobody"), connection_attempts=1)
    assert refusal(e.value) == (403, "ACCESS_REFUSED - Login was refused using authentication "
                                     "mechanism EXTERNAL. For details see the broker logfile.")


def test_untrusted_or_missing_client_certificates_are_refused_when_required(tls_broker, tmp_path):
    b = tls_broker(verify_peer=True, fail_if_no_peer_cert=True, definitions=BILLING)
    rogue = Pki(tmp_path / "rogue", "rogue")
    forged = rogue.client("billing-app")
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        b.connect_tls(credentials=pika.credentials.ExternalCredentials(), client_cert=forged,
                      connection_attempts=1)
    with pytest.raises(pika.exceptions.AMQPConnectionError):
        b.connect_tls(connection_attempts=1)
    with b.connect_tls(credentials=pika.credentials.ExternalCredentials(),
                       client_cert=b.pki.client("billing-app")) as c:
        c.channel().queue_declare("billing.ok")
