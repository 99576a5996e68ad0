"""The one exception tree of exesdb-pubsub.

Every error the SDK, the broker and the CLI raise on purpose derives from
:class:`ExesdbError`, and also from the built-in class whose meaning matches, so
``except TimeoutError`` and ``except ValueError`` work as expected::

    ExesdbError
    ├── ConfigError                 (ValueError)   a setting, flag, variable or file is invalid
    ├── UnknownInstanceError        (ValueError)   not one of the ten instances or their aliases
    ├── ProtocolError               (ValueError)   frames that do not follow wire protocol v1
    ├── ValidationError             (ValueError)   a typed message field with a wrong type or value
    ├── MessageTooLargeError        (ValueError)   a message over the size limit; nothing was sent
    ├── BindError                   (OSError)      the broker cannot bind an endpoint (in use...)
    ├── BrokerUnavailableError      (TimeoutError) no broker answered at an endpoint in time
    ├── ReceiveTimeoutError         (TimeoutError) no message arrived within the timeout
    ├── PublishTimeoutError         (TimeoutError) the broker did not take a message in time
    ├── ControlError                               the broker answered a control request with an error
    │   └── DurabilityError         (OSError)      the broker did not record a durable publish or cannot replay
    ├── AuthenticationError         (PermissionError) the broker refused this client's CURVE handshake
    ├── HandshakeError              (ConnectionError) the peer is no ZeroMQ endpoint: it hung up without a greeting
    └── ClosedError                 (RuntimeError) the publisher, subscriber or client is closed
"""

from __future__ import annotations

import re

__all__ = [
    "AuthenticationError",
    "BindError",
    "BrokerUnavailableError",
    "ClosedError",
    "ConfigError",
    "ControlError",
    "DurabilityError",
    "ExesdbError",
    "HandshakeError",
    "MessageTooLargeError",
    "ProtocolError",
    "PublishTimeoutError",
    "ReceiveTimeoutError",
    "UnknownInstanceError",
    "ValidationError",
]


class ExesdbError(Exception):
    """Base class of every error exesdb-pubsub raises on purpose."""


class ConfigError(ExesdbError, ValueError):
    """A setting is invalid. The message names the setting and where it came from."""


class UnknownInstanceError(ExesdbError, ValueError):
    """A name is not one of the ten instances nor one of their short aliases."""

    def __init__(self, name: object) -> None:
        self.name = name
        super().__init__(
            f"unknown instance {name!r}: expected one of "
            "events, system, health, metrics, lifecycle, alerts, audit, diagnostics, security, "
            "logging (or their full ex_esdb_* names)"
        )


class ProtocolError(ExesdbError, ValueError):
    """Frames or a control message that do not follow wire protocol v1.

    ``reason`` is a short machine-readable code (``single_frame``, ``bad_topic``,
    ``unknown_instance``, ``too_deep``, ``bad_body``, ``bad_envelope``, ``out_of_range``,
    ``bad_request``...).
    """

    def __init__(self, reason: str, detail: str) -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}")


class ValidationError(ExesdbError, ValueError):
    """A field of a typed message has a wrong type or a value outside its set.

    The message names the type and the field: ``NodeHealth.status: 'fine' is not one of ...``.
    """

    def __init__(self, message_type: str, field: str, reason: str) -> None:
        self.message_type = message_type
        self.field = field
        self.reason = reason
        super().__init__(f"{message_type}.{field}: {reason}")

    @classmethod
    def from_msgspec(cls, message_type: str, error: Exception) -> ValidationError:
        """Translate msgspec's ``Expected `str`, got `int` - at `$.node``` wording."""
        text = str(error)
        found = re.search(r"at `\$\.([A-Za-z0-9_]+)", text) or re.search(r"field `([A-Za-z0-9_]+)`", text)
        reason = text.split(" - at ")[0]
        return cls(message_type, found.group(1) if found else "?", reason)


class MessageTooLargeError(ExesdbError, ValueError):
    """A message is larger than the configured limit; nothing was sent."""

    def __init__(self, topic: str, size: int, limit: int) -> None:
        self.topic = topic
        self.size = size
        self.limit = limit
        super().__init__(f"message on {topic!r} is {size} bytes, over the limit of {limit} bytes; not sent")


class BindError(ExesdbError, OSError):
    """The broker could not bind ``endpoint`` for ``role`` (in use, no such address...)."""

    def __init__(self, role: str, endpoint: str, reason: str) -> None:
        self.role = role
        self.endpoint = endpoint
        super().__init__(f"cannot bind {role} to {endpoint}: {reason}")


class BrokerUnavailableError(ExesdbError, TimeoutError):
    """No broker answered at ``endpoint`` within ``timeout`` seconds."""

    def __init__(self, endpoint: str, timeout: float, what: str = "broker") -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        super().__init__(f"no {what} answered at {endpoint} within {timeout:g} s")


class ReceiveTimeoutError(ExesdbError, TimeoutError):
    """No message arrived within ``timeout`` seconds."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(f"no message within {timeout:g} s")


class PublishTimeoutError(ExesdbError, TimeoutError):
    """The broker did not take a message within ``timeout`` seconds (its queue stayed full)."""

    def __init__(self, topic: str, timeout: float) -> None:
        self.topic = topic
        self.timeout = timeout
        super().__init__(f"broker did not take the message on {topic!r} within {timeout:g} s")


class ControlError(ExesdbError):
    """The broker answered a control request with ``{"ok": false, "error": ...}``."""

    def __init__(self, code: str, message: str) -> None:
        self.code = code
        self.message = message
        super().__init__(f"{code}: {message}")


class DurabilityError(ControlError, OSError):
    """The broker could not record a durable publish, or cannot replay an instance.

    ``code`` says why: ``not_journaled`` (the instance is not recorded by this broker),
    ``journal_unavailable`` (its data directory cannot be used; see its start-up message) or
    ``commit_failed`` (the write failed, e.g. disk full). Nothing was recorded or forwarded.
    """

    CODES = frozenset({"not_journaled", "journal_unavailable", "commit_failed"})

    def __init__(self, code: str, message: str) -> None:
        ControlError.__init__(self, code, message)


class HandshakeError(ExesdbError, ConnectionError):
    """The peer at ``endpoint`` closed the connection during the ZeroMQ handshake without a
    reason a broker would give: something that is not a ZeroMQ endpoint listens there."""

    def __init__(self, endpoint: str, detail: str) -> None:
        self.endpoint = endpoint
        self.detail = detail
        super().__init__(f"handshake failed at {endpoint}: {detail}")


class ClosedError(ExesdbError, RuntimeError):
    """The object was used after ``close()``."""


class AuthenticationError(ExesdbError, PermissionError):
    """The CURVE handshake with the broker at ``endpoint`` failed: a key missing, not allowed or
    wrong (``detail`` says which, as far as ZeroMQ tells)."""

    def __init__(self, endpoint: str, detail: str) -> None:
        self.endpoint = endpoint
        self.detail = detail
        super().__init__(f"authentication failed at {endpoint}: {detail}")
