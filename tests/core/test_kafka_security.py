"""Kafka TLS/SASL settings, their one translation into kafka-python arguments, and idempotent
producers: unit checks of the options, and PLAINTEXT clients built with them against the real
embedded broker (no TLS/SASL broker runs here; docs/production.md covers a real cluster)."""

from __future__ import annotations

import uuid

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from pydantic import ValidationError

from core.infra.broker import InfraError, check_kafka, ensure_topics
from core.infra.kafka_security import (
    confluent_client_options,
    describe,
    kafka_client_options,
    kafka_producer_options,
)
from core.settings import AggregatorSettings, CommonSettings

SERVERS = "kafka-1.example:9093,kafka-2.example:9093"


def _pem(tmp_path, name: str) -> str:
    path = tmp_path / name
    path.write_text("-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n")
    return str(path)


def _settings(**values) -> CommonSettings:
    return CommonSettings(**{"RLHB_KAFKA_BOOTSTRAP_SERVERS": SERVERS, **values})


def test_plaintext_by_default_and_producers_are_idempotent():
    settings = CommonSettings()
    assert kafka_client_options(settings) == {"security_protocol": "PLAINTEXT"}
    assert kafka_producer_options(settings) == {
        "security_protocol": "PLAINTEXT",
        "acks": "all",
        "enable_idempotence": True,
    }
    assert kafka_producer_options(settings, idempotent=False)["enable_idempotence"] is False
    assert kafka_producer_options(CommonSettings(RLHB_KAFKA_IDEMPOTENCE=False))["enable_idempotence"] is False


def test_sasl_ssl_with_scram_and_a_private_ca(tmp_path):
    ca = _pem(tmp_path, "ca.pem")
    settings = _settings(
        RLHB_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        RLHB_KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
        RLHB_KAFKA_SASL_USERNAME="rlhb",
        RLHB_KAFKA_SASL_PASSWORD="s3cret-s3cret",
        RLHB_KAFKA_SSL_CAFILE=ca,
    )
    assert kafka_client_options(settings) == {
        "security_protocol": "SASL_SSL",
        "ssl_check_hostname": True,
        "ssl_cafile": ca,
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "rlhb",
        "sasl_plain_password": "s3cret-s3cret",
    }
    # The password is a secret: not in repr, not in the log line.
    assert "s3cret" not in repr(settings) and "s3cret" not in describe(settings)
    assert describe(settings) == f"SASL_SSL, SCRAM-SHA-512 as 'rlhb', CA {ca}"


def test_mutual_tls_and_the_system_cas(tmp_path):
    cert, key = _pem(tmp_path, "client.pem"), _pem(tmp_path, "client.key")
    options = kafka_client_options(
        _settings(RLHB_KAFKA_SECURITY_PROTOCOL="SSL", RLHB_KAFKA_SSL_CERTFILE=cert, RLHB_KAFKA_SSL_KEYFILE=key)
    )
    assert options == {
        "security_protocol": "SSL",
        "ssl_check_hostname": True,
        "ssl_certfile": cert,
        "ssl_keyfile": key,
    }  # no ssl_cafile: kafka-python loads the system's trusted CAs


def test_the_same_security_as_librdkafka_keys_for_the_confluent_consumer(tmp_path):
    # RLHB_AGG_KAFKA_CLIENT=confluent: the aggregator's consumer must get the same TLS/SASL settings.
    ca, cert, key = _pem(tmp_path, "ca.pem"), _pem(tmp_path, "client.pem"), _pem(tmp_path, "client.key")
    sasl = dict(
        RLHB_KAFKA_SASL_MECHANISM="SCRAM-SHA-512", RLHB_KAFKA_SASL_USERNAME="rlhb", RLHB_KAFKA_SASL_PASSWORD="pw-pw-pw"
    )
    assert confluent_client_options(
        _settings(RLHB_KAFKA_SECURITY_PROTOCOL="SASL_SSL", RLHB_KAFKA_SSL_CAFILE=ca, **sasl)
    ) == {
        "security.protocol": "SASL_SSL",
        "ssl.endpoint.identification.algorithm": "https",
        "ssl.ca.location": ca,
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "rlhb",
        "sasl.password": "pw-pw-pw",
    }
    assert confluent_client_options(
        _settings(
            RLHB_KAFKA_SECURITY_PROTOCOL="SSL",
            RLHB_KAFKA_SSL_CERTFILE=cert,
            RLHB_KAFKA_SSL_KEYFILE=key,
            RLHB_KAFKA_SSL_CHECK_HOSTNAME=False,
        )
    ) == {
        "security.protocol": "SSL",
        "ssl.endpoint.identification.algorithm": "none",
        "ssl.ca.location": "probe",  # the system's CAs, as kafka-python without a CA file
        "ssl.certificate.location": cert,
        "ssl.key.location": key,
    }
    assert confluent_client_options(CommonSettings()) == {"security.protocol": "PLAINTEXT"}
    # librdkafka checks its configuration keys at construction: every key above must be one it knows.
    from confluent_kafka import Consumer

    Consumer(
        {
            "bootstrap.servers": SERVERS,
            "group.id": "g",
            **confluent_client_options(_settings(RLHB_KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", **sasl)),
            "ssl.endpoint.identification.algorithm": "none",
        }
    ).close()


def test_every_option_is_a_keyword_kafka_python_clients_accept(tmp_path):
    from kafka import KafkaAdminClient

    settings = _settings(
        RLHB_KAFKA_SECURITY_PROTOCOL="SASL_SSL",
        RLHB_KAFKA_SASL_MECHANISM="PLAIN",
        RLHB_KAFKA_SASL_USERNAME="u",
        RLHB_KAFKA_SASL_PASSWORD="p",
        RLHB_KAFKA_SSL_CAFILE=_pem(tmp_path, "ca.pem"),
        RLHB_KAFKA_SSL_CERTFILE=_pem(tmp_path, "c.pem"),
        RLHB_KAFKA_SSL_KEYFILE=_pem(tmp_path, "k.pem"),
    )
    for cls, options in (
        (KafkaProducer, kafka_producer_options(settings)),
        (KafkaConsumer, kafka_client_options(settings)),
        (KafkaAdminClient, kafka_client_options(settings)),
    ):
        assert set(options) <= set(cls.DEFAULT_CONFIG), (cls.__name__, set(options) - set(cls.DEFAULT_CONFIG))


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"RLHB_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "RLHB_KAFKA_SASL_MECHANISM": "PLAIN",
             "RLHB_KAFKA_SASL_PASSWORD": "pw"},
            "SASL_SSL needs RLHB_KAFKA_SASL_USERNAME",
        ),
        (
            {"RLHB_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "RLHB_KAFKA_SASL_USERNAME": "u",
             "RLHB_KAFKA_SASL_PASSWORD": "pw"},
            "needs RLHB_KAFKA_SASL_MECHANISM",
        ),
        (
            {"RLHB_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "RLHB_KAFKA_SASL_MECHANISM": "PLAIN",
             "RLHB_KAFKA_SASL_USERNAME": "u"},
            "needs RLHB_KAFKA_SASL_PASSWORD",
        ),
        ({"RLHB_KAFKA_SASL_USERNAME": "u"}, "does not use SASL; set it to SASL_SSL"),
        ({"RLHB_KAFKA_SSL_CAFILE": "/etc/ca.pem"}, "does not use TLS; set it to SSL or SASL_SSL"),
        (
            {"RLHB_KAFKA_SECURITY_PROTOCOL": "SSL", "RLHB_KAFKA_SSL_CERTFILE": "/x.pem"},
            "both RLHB_KAFKA_SSL_CERTFILE and RLHB_KAFKA_SSL_KEYFILE",
        ),
        (
            {"RLHB_KAFKA_SECURITY_PROTOCOL": "SSL", "RLHB_KAFKA_SSL_CAFILE": "/nonexistent/ca.pem"},
            "RLHB_KAFKA_SSL_CAFILE '/nonexistent/ca.pem' is not a readable file",
        ),
        ({"RLHB_KAFKA_SECURITY_PROTOCOL": "TLS"}, "SASL_SSL"),  # not a protocol: the choices are listed
        (
            {"RLHB_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "RLHB_KAFKA_SASL_MECHANISM": "GSSAPI",
             "RLHB_KAFKA_SASL_USERNAME": "u", "RLHB_KAFKA_SASL_PASSWORD": "pw"},
            "SCRAM-SHA-256",
        ),
    ],
)  # fmt: skip
def test_misconfigured_security_says_what_to_set(values, message):
    with pytest.raises(ValidationError, match=message) as err:
        _settings(**values)
    assert "pw" not in str(err.value).replace("RLHB_KAFKA_SASL_PASSWORD", "")  # inputs are not echoed


def test_the_embedded_broker_speaks_plaintext_only(monkeypatch):
    monkeypatch.delenv("RLHB_KAFKA_BOOTSTRAP_SERVERS", raising=False)
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    with pytest.raises(ValidationError, match="embedded broker"):
        AggregatorSettings(RLHB_KAFKA_SECURITY_PROTOCOL="SSL")


def test_settings_read_the_variables_from_the_environment(monkeypatch):
    monkeypatch.setenv("RLHB_KAFKA_BOOTSTRAP_SERVERS", SERVERS)
    monkeypatch.setenv("RLHB_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("RLHB_KAFKA_SASL_MECHANISM", "SCRAM-SHA-256")
    monkeypatch.setenv("RLHB_KAFKA_SASL_USERNAME", "svc")
    monkeypatch.setenv("RLHB_KAFKA_SASL_PASSWORD", "from-a-secret")
    options = kafka_client_options(AggregatorSettings())
    assert options["sasl_plain_password"] == "from-a-secret" and options["sasl_mechanism"] == "SCRAM-SHA-256"


def test_plaintext_clients_built_from_the_options_talk_to_the_real_broker(kafka_bootstrap):
    """Producer (idempotent), consumer and admin built with the options, against tansu."""
    settings = CommonSettings()
    topic = f"sec-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_bootstrap, [topic], partitions=1, options=kafka_client_options(settings))
    check_kafka(kafka_bootstrap, options=kafka_client_options(settings))

    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5, **kafka_producer_options(settings))
    for i in range(50):
        producer.send(topic, key=b"k", value=f"m{i}".encode())
    producer.flush(timeout=20)
    # tansu granted a producer id: the producer really is idempotent (kafka-python would
    # otherwise have raised at construction, since enable_idempotence was asked explicitly).
    assert producer._transaction_manager is not None
    assert producer._transaction_manager.producer_id_and_epoch.producer_id >= 0
    producer.close()

    consumer = KafkaConsumer(
        bootstrap_servers=kafka_bootstrap, enable_auto_commit=False, consumer_timeout_ms=5000,
        **kafka_client_options(settings),
    )  # fmt: skip
    consumer.assign([TopicPartition(topic, 0)])
    consumer.seek_to_beginning()
    assert [m.value.decode() for m in consumer] == [f"m{i}" for i in range(50)]  # once each, in order
    consumer.close()


def test_a_security_mismatch_fails_with_a_hint_at_the_protocol(kafka_bootstrap):
    """TLS spoken to the plaintext embedded broker: the port is open, the handshake never completes."""
    with pytest.raises(InfraError, match=r"check RLHB_KAFKA_SECURITY_PROTOCOL \(SSL\)"):
        check_kafka(kafka_bootstrap, timeout_s=3, options={"security_protocol": "SSL", "ssl_check_hostname": False})
