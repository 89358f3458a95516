"""Error text for people: what failed talking to Kafka, and whether waiting can help.

aiokafka's exceptions only say "Unable to bootstrap"; the cause is in the line it logs, which
:data:`connect_errors` keeps so :func:`explain` can name the fix.
"""

from __future__ import annotations

import logging

from aiokafka.errors import KafkaConnectionError, KafkaError


class _ConnectErrors(logging.Filter):
    """Remembers why aiokafka last failed to connect, and can keep it off the terminal.

    Its exceptions only say "Unable to bootstrap"; the cause (credentials refused, an untrusted
    certificate, connection refused) is only in the line it logs. ``explain`` needs the cause
    to tell a person what to fix; one-shot commands that explain it hide the raw line.
    """

    def __init__(self) -> None:
        super().__init__()
        self.last = ""
        self.hide = False

    def filter(self, record: logging.LogRecord) -> bool:
        """Note a connect failure's cause; pass the record unless hidden."""
        message = record.getMessage()
        if message.startswith("Unable connect"):
            self.last = message[:300]
            return not self.hide
        return True


connect_errors = _ConnectErrors()


logging.getLogger("aiokafka").addFilter(connect_errors)


def refused(exc: KafkaError) -> bool:
    """Whether Kafka refused who we are (credentials, certificate), rather than being away."""
    cause = f"{type(exc).__name__} {connect_errors.last}"
    return any(word in cause for word in ("Authentication", "Sasl", "CERTIFICATE_VERIFY_FAILED"))


def explain(exc: KafkaError) -> str:
    """One line for a person: what failed talking to Kafka and what to do about it."""
    name = type(exc).__name__
    what = describe(exc)
    cause = connect_errors.last
    if isinstance(exc, KafkaConnectionError) and cause:
        if "Authentication" in cause or "Sasl" in cause:
            name, what = "SaslAuthenticationFailed", cause
        elif "CERTIFICATE_VERIFY_FAILED" in cause or "SSL" in cause:
            return (
                f"TLS with Kafka failed ({cause}); check --kafka-ssl-cafile and that the "
                "brokers' certificate names the host in --bootstrap-servers"
            )
        else:
            what = cause
    if "Authentication" in name or "Sasl" in name:
        return (
            f"Kafka refused the credentials ({what}); check --kafka-sasl-username, the "
            "password file and --kafka-sasl-mechanism"
        )
    if "Authorization" in name:
        return f"Kafka refused access ({what}); grant this principal the ACLs in docs/deploying.md"
    if "UnknownTopic" in name:
        return f"a topic is missing ({what}); create it, or let streamproc create it"
    if isinstance(exc, KafkaConnectionError) or "Connection" in name or "NodeNotReady" in name:
        return (
            f"cannot reach Kafka ({what}); check --bootstrap-servers / "
            "STREAMPROC_BOOTSTRAP_SERVERS and that the brokers run"
        )
    if "Timeout" in name:
        return f"Kafka did not answer in time ({what}); check the brokers and the address"
    return f"Kafka: {what}"


def describe(exc: BaseException) -> str:
    """A Kafka client error as one short phrase (aiokafka repeats the class name in str())."""
    text = str(exc)
    name = type(exc).__name__
    if text.startswith(f"{name}: "):
        text = text[len(name) + 2 :]
    return f"{name}: {text}" if text else name
