"""Broker security: CURVE on every endpoint, per-role key allowlists, control op roles,
handshake failures counted and published as ``AccessViolation``.

Security is on when the configuration names the broker's secret key file (``broker_key``).
Then each endpoint is a CURVE server and a ZAP handler (pyzmq's ``zmq.auth``, in its own
thread) checks the client's public key against the allowlist of that endpoint's role:

| endpoint | ZAP domain | accepts keys of |
|---|---|---|
| frontend | ``publishers`` | ``allow_publishers`` |
| backend | ``subscribers`` | ``allow_subscribers`` |
| control | ``admins`` | all three lists; each op then checks the role (:data:`OP_ROLES`) |

The ZAP reply's User-Id is the key's roles (``"publishers,subscribers"``), which the control
endpoint reads from every request. A key in no list connects to nothing. The HTTP surface,
in the broker's process, reaches the control endpoint over an inproc bind of the same
socket: no handshake, no User-Id, and it is trusted as ``admins`` (only code in this process
can reach an inproc endpoint; HTTP clients are checked by their bearer tokens instead). The broker's own
sockets (tap, service publisher) reach the frontend and backend over ``inproc``, where libzmq
runs no handshake, so they need no key (checked by experiment with libzmq 4.3.5).

Without ``broker_key`` the broker binds loopback addresses only, unless ``allow_insecure``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import zmq
from exesdb_connect.config import ConnectorConfig
from exesdb_sdk.curve import KeyPair, apply_server_keys, load_key_file
from exesdb_sdk.endpoints import is_loopback
from exesdb_sdk.errors import ConfigError, ExesdbError
from exesdb_sdk.instances import Instance
from exesdb_sdk.messages import AccessViolation, Payload, SecurityAlert
from exesdb_web.server import http_url
from zmq.auth.thread import ThreadAuthenticator
from zmq.utils import z85

from .config import BrokerConfig, http_address, journal_instances, last_value_prefixes

__all__ = [
    "ADMINS",
    "ANY_ROLE",
    "HANDSHAKE_FAILURES",
    "OP_ROLES",
    "PUBLISHERS",
    "RESTRICTED_PUBLISHERS",
    "RESTRICTED_ROLES",
    "RESTRICTED_SUBSCRIBERS",
    "ROLES",
    "SUBSCRIBERS",
    "Allowlists",
    "BrokerAuthenticator",
    "Security",
    "SecurityMonitor",
    "TokenBucket",
    "check_binds",
    "check_restricted",
    "lost_keys",
]

log = logging.getLogger("exesdb.broker.security")

PUBLISHERS: Final = "publishers"
SUBSCRIBERS: Final = "subscribers"
ADMINS: Final = "admins"
RESTRICTED_PUBLISHERS: Final = "restricted_publishers"
RESTRICTED_SUBSCRIBERS: Final = "restricted_subscribers"
ROLES: Final = (PUBLISHERS, SUBSCRIBERS, ADMINS, RESTRICTED_PUBLISHERS, RESTRICTED_SUBSCRIBERS)
ANY_ROLE: Final = frozenset(ROLES)

DOMAINS: Final = {
    "frontend": PUBLISHERS,
    "backend": SUBSCRIBERS,
    "control": ADMINS,
    "restricted_frontend": RESTRICTED_PUBLISHERS,
    "restricted_backend": RESTRICTED_SUBSCRIBERS,
}
"""The ZAP domain (and role) of each endpoint."""
RESTRICTED_ROLES: Final[Mapping[str, frozenset[str]]] = {
    "publish": frozenset({RESTRICTED_PUBLISHERS, ADMINS}),
    "publish_many": frozenset({RESTRICTED_PUBLISHERS, ADMINS}),
    "replay": frozenset({RESTRICTED_SUBSCRIBERS, ADMINS}),
}
"""Who may run an op on a restricted instance (in place of :data:`OP_ROLES`)."""

OP_ROLES: Final[Mapping[str, frozenset[str]]] = {
    "ping": ANY_ROLE,
    "instances": ANY_ROLE,
    "stats": frozenset({ADMINS}),
    "publish": frozenset({PUBLISHERS, ADMINS}),
    "publish_many": frozenset({PUBLISHERS, ADMINS}),
    "replay": frozenset({SUBSCRIBERS, ADMINS}),
    "last": frozenset({SUBSCRIBERS, ADMINS}),
}
"""Which roles may run each control op when security is on; an op not listed is for admins only."""

HANDSHAKE_FAILURES: Final = (
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
)
_KINDS: Final[dict[int, str]] = {
    zmq.EVENT_HANDSHAKE_FAILED_AUTH: "auth",
    zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL: "protocol",
    zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL: "no_detail",
}
_MECHANISM_MISMATCH: Final = 0x11000002
_CRYPTOGRAPHIC: Final = 0x11000001
_ZAP_VERSION: Final = b"1.0"
_DENIALS_KEPT: Final = 256
_BURST: Final = 20
_PER_SECOND: Final = 1.0
_SUMMARY_INTERVAL: Final = 10.0


# -- settings -----------------------------------------------------------------------------------


def check_restricted(config: BrokerConfig, connectors: Sequence[ConnectorConfig]) -> None:
    """Refuse what would carry a restricted instance past its class: a connector (its sink is
    outside the broker's keys) and last values of it (``last`` is open to every subscriber).
    Raises :class:`ConfigError` (one line)."""
    restricted = journal_instances(config.restricted)
    for connector in connectors:
        for instance, _ in connector.subscriptions:
            if instance in restricted:
                raise ConfigError(
                    f"connector {connector.name}: {instance.value} is restricted: a connector would carry it "
                    "to a sink outside its class"
                )
    for prefix in last_value_prefixes(config.last_values):
        head = prefix.decode().partition("/")[0]
        if Instance.resolve(head) in restricted:
            raise ConfigError(f"last_values: {prefix.decode()!r} is in the restricted instance {head}: not kept")


def check_binds(config: BrokerConfig, secure: bool) -> list[str]:
    """Refuse a non-loopback endpoint (the HTTP surface's included) without CURVE unless
    ``allow_insecure``; return the warnings to log for those allowed anyway. Raises
    :class:`ConfigError` (one line)."""
    warnings = []
    roles = ["frontend", "backend", "control"]
    if journal_instances(config.restricted):
        roles += ["restricted_frontend", "restricted_backend"]
    for role in roles:
        url = getattr(config, role)
        if secure or is_loopback(url):
            continue
        if not config.allow_insecure:
            raise ConfigError(
                f"{role} {url} is not a loopback address and security is off: anyone who reaches it could "
                "connect; set broker_key and the allow_* key directories (README: Security), or pass --allow-insecure"
            )
        warnings.append(f"insecure: {role} {url} is reachable from the network without CURVE (--allow-insecure)")
    address = http_address(config)
    if address is not None and not secure and not is_loopback(http_url(*address).replace("http://", "tcp://")):
        if not config.allow_insecure:
            raise ConfigError(
                f"http {config.http} is not a loopback address and security is off: anyone who reaches it could "
                "read the bus; set broker_key and the http_token_* files (README: Security), pass --http none, "
                "or --allow-insecure"
            )
        warnings.append(f"insecure: http {config.http} is reachable from the network without tokens (--allow-insecure)")
    return warnings


@dataclass(frozen=True, slots=True)
class Allowlists:
    """The public keys (32 raw bytes) allowed per role, read from one directory of ``*.key`` files each."""

    keys: Mapping[str, frozenset[bytes]]
    directories: Mapping[str, str]

    @classmethod
    def load(cls, directories: Mapping[str, str]) -> Allowlists:
        """Read every ``*.key`` file of each role's directory ('' for none: nobody has that role).

        Raises :class:`ConfigError` naming the first missing directory or bad key file.
        """
        keys: dict[str, frozenset[bytes]] = {}
        for role in ROLES:
            directory = directories.get(role, "")
            found: set[bytes] = set()
            if directory:
                folder = Path(directory)
                if not folder.is_dir():
                    raise ConfigError(f"allow_{role} {directory}: not a directory")
                for path in sorted(folder.glob("*.key")):
                    found.add(z85.decode(load_key_file(path, what=f"allow_{role} key file").public))
            keys[role] = frozenset(found)
        return cls(keys, dict(directories))

    def roles_of(self, key: bytes) -> frozenset[str]:
        """The roles a raw 32-byte public key has."""
        return frozenset(role for role, allowed in self.keys.items() if key in allowed)

    def counts(self) -> dict[str, int]:
        return {role: len(self.keys.get(role, ())) for role in ROLES}


def lost_keys(old: Allowlists, new: Allowlists) -> dict[str, str]:
    """The endpoints whose ZAP domain admits fewer keys under ``new`` than under ``old``, each
    with why. A data endpoint loses a key when its role's set shrinks. The control endpoint
    admits a key of any list, but the User-Id of each of its connections holds the roles the
    key had at its handshake: so it loses a key when any key loses any role."""
    lost: dict[str, str] = {}
    for endpoint, role in DOMAINS.items():
        if role == ADMINS:
            continue
        gone = old.keys.get(role, frozenset()) - new.keys.get(role, frozenset())
        if gone:
            lost[endpoint] = f"allow_{role} lost {_keys(len(gone))}"
    everyone = frozenset().union(*old.keys.values())
    demoted = [key for key in everyone if old.roles_of(key) - new.roles_of(key)]
    if demoted:
        lost["control"] = f"{_keys(len(demoted))} lost a role"
    return lost


def _keys(n: int) -> str:
    return f"{n} key" if n == 1 else f"{n} keys"


# -- the ZAP handler (its own thread) ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Denial:
    """A key the ZAP handler refused: who, from where, for which endpoint."""

    endpoint: str
    address: str
    key: str
    reason: str


class BrokerAuthenticator(ThreadAuthenticator):
    """pyzmq's ZAP thread with the broker's policy: one domain per role, User-Id = the key's roles.

    :attr:`allowlists` is replaced whole on reload (one reference assignment, atomic under
    the GIL), so a handshake always sees one consistent set.
    """

    def __init__(self, context: zmq.Context[Any], allowlists: Allowlists) -> None:
        super().__init__(context, log=logging.getLogger("exesdb.broker.zap"))
        self.allowlists = allowlists
        self.denials: dict[str, deque[Denial]] = {name: deque(maxlen=_DENIALS_KEPT) for name in DOMAINS}

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        try:
            self._handle(msg)
        except Exception:  # a bug here must not stop the ZAP thread: every handshake would hang
            log.exception("ZAP request not handled")
            if len(msg) >= 2:
                self._reply(msg[1], b"500", b"internal error")

    def _handle(self, msg: list[bytes]) -> None:
        if len(msg) < 6 or msg[0] != _ZAP_VERSION:
            if len(msg) >= 2:
                self._reply(msg[1], b"400", b"bad ZAP request")
            return
        _, request_id, domain_bytes, address_bytes, _, mechanism = msg[:6]
        domain = domain_bytes.decode("utf-8", "replace")
        address = address_bytes.decode("utf-8", "replace")
        endpoint = next((name for name, role in DOMAINS.items() if role == domain), domain)
        key = msg[6] if mechanism == b"CURVE" and len(msg) == 7 and len(msg[6]) == 32 else None
        roles = self.allowlists.roles_of(key) if key is not None else frozenset()
        granted = roles if domain == ADMINS else roles & {domain}
        if granted:
            self._reply(request_id, b"200", b"OK", ",".join(sorted(granted)).encode())
            return
        principal = z85.encode(key).decode() if key is not None else "unknown"
        reason = f"key not in any allowlist ({domain} endpoint)" if domain == ADMINS else f"key not in allow_{domain}"
        self.denials.setdefault(endpoint, deque(maxlen=_DENIALS_KEPT)).append(
            Denial(endpoint, address, principal, reason)
        )
        self._reply(request_id, b"400", b"key not allowed")

    def _reply(self, request_id: bytes, code: bytes, text: bytes, user_id: bytes = b"") -> None:
        self.zap_socket.send_multipart([_ZAP_VERSION, request_id, code, text, user_id, b""])


# -- what the service thread does -----------------------------------------------------------------


class TokenBucket:
    """``burst`` events at once, refilled at ``rate`` per second: the AccessViolation rate limit."""

    def __init__(self, burst: float, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._burst = burst
        self._rate = rate
        self._clock = clock
        self._tokens = burst
        self._last = clock()

    def take(self) -> bool:
        now = self._clock()
        self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


def _reason(kind: str, value: int) -> str:
    if kind == "auth":
        return "key not allowed"
    if value == _MECHANISM_MISMATCH:
        return "no CURVE key: a plain connection to a secure endpoint, or the other way round"
    if value == _CRYPTOGRAPHIC:
        return "CURVE handshake failed: the client has a wrong server key"
    return f"handshake failed ({kind.replace('_', ' ')}, 0x{value:x})"


class SecurityMonitor:
    """Counts failed handshakes and forbidden control ops, publishes each as an
    ``AccessViolation`` (rate-limited, with a ``SecurityAlert`` summary of the suppressed ones),
    and authorizes control ops by role. Used by the service thread only, except
    :meth:`snapshot` figures that other threads update atomically (reload counts)."""

    def __init__(
        self,
        security: Security,
        node: str,
        publish: Callable[[Payload], None],
        endpoints: Mapping[str, str],
        *,
        bucket: TokenBucket | None = None,
    ) -> None:
        self._security = security
        self._node = node
        self._publish = publish
        self._endpoints = endpoints
        self._bucket = bucket or TokenBucket(_BURST, _PER_SECOND)
        self.failures: dict[str, int] = {"auth": 0, "protocol": 0, "no_detail": 0}
        self.failures_by_endpoint: dict[str, int] = dict.fromkeys(DOMAINS, 0)
        self.forbidden = 0
        self.misrouted: Mapping[str, int] = {}
        """Per restricted instance, its messages sent to the public frontend (the tap's count)."""
        self.published = 0
        self.suppressed = 0
        self.cuts: dict[str, int] = dict.fromkeys(DOMAINS, 0)
        """Per endpoint, the reloads that cut its connections (each written by the thread owning its socket)."""
        self.rebind_failures: dict[str, int] = dict.fromkeys(DOMAINS, 0)
        """Per endpoint, the failed binds after a cut (each retried, see :attr:`unbound`)."""
        self.unbound: dict[str, str] = {}
        """The endpoints cut and not bound again yet (role -> address): retried once a second."""
        self._unreported = 0
        self._next_summary = time.monotonic() + _SUMMARY_INTERVAL

    def on_monitor_event(self, endpoint: str, event: int, value: int) -> None:
        """Count a handshake failure seen by a socket monitor and report it."""
        kind = _KINDS.get(event)
        if kind is None:
            return
        self.failures[kind] += 1
        self.failures_by_endpoint[endpoint] = self.failures_by_endpoint.get(endpoint, 0) + 1
        principal, source, reason = "unknown", None, _reason(kind, value)
        if kind == "auth":
            denial = self._security.pop_denial(endpoint)
            if denial is not None:
                principal, source, reason = denial.key, denial.address or None, denial.reason
        self._violation(principal, f"{endpoint} {self._endpoints.get(endpoint, '')}".strip(), "connect", reason, source)

    def authorize(self, op: str, user_id: str | None, request: Mapping[str, Any] | None = None) -> str | None:
        """``None`` if the op may run for this client, else why not (and report it). A
        ``publish`` or ``replay`` of a restricted instance needs that class's role."""
        if not self._security.enabled:
            return None
        allowed = OP_ROLES.get(op, frozenset({ADMINS}))
        instance = self._security.restricted_target(op, request)
        if instance is not None:
            allowed = RESTRICTED_ROLES[op]
        if allowed == ANY_ROLE or user_id is None:
            # No User-Id under CURVE: an inproc peer (ZAP grants every TCP or IPC client one). Only
            # this process can reach the inproc endpoints (the HTTP surface's control client): trusted.
            return None
        roles = frozenset(user_id.split(",")) if user_id else frozenset()
        if roles & allowed:
            return None
        self.forbidden += 1
        has = ", ".join(sorted(roles)) or "none"
        needs = " or ".join(sorted(allowed))
        target = f" on {instance.value}" if instance is not None else ""
        message = f"op {op!r}{target} needs the role {needs}; this key has: {has}"
        self._violation(user_id or "unknown", f"control op {op}{target}", op, message, None)
        return message

    def _violation(self, principal: str, resource: str, action: str, reason: str, source: str | None) -> None:
        if not self._security.enabled:
            return  # counted only: without CURVE a failed handshake is a confused client, not an intruder
        if not self._bucket.take():
            self.suppressed += 1
            self._unreported += 1
            return
        self.published += 1
        self._publish(
            AccessViolation(
                principal=principal,
                resource=resource,
                action=action,
                reason=reason,
                severity="warning",
                source_ip=source,
                node=self._node,
            )
        )

    def tick(self) -> None:
        """Publish a summary of the suppressed violations every few seconds while there are any."""
        now = time.monotonic()
        if now < self._next_summary:
            return
        self._next_summary = now + _SUMMARY_INTERVAL
        if self._unreported:
            count, self._unreported = self._unreported, 0
            self._publish(
                SecurityAlert(
                    threat_type="access_violation_flood",
                    severity="warning",
                    description=f"{count} access violations not published one by one (rate limit)",
                    node=self._node,
                    metadata={"suppressed": count, "suppressed_total": self.suppressed},
                )
            )

    def snapshot(self) -> dict[str, Any]:
        """The ``security`` map of the ``stats`` reply."""
        return {
            "enabled": self._security.enabled,
            "handshake_failures": sum(self.failures.values()),
            "handshake_failures_by_kind": dict(self.failures),
            "handshake_failures_by_endpoint": dict(self.failures_by_endpoint),
            "forbidden_ops": self.forbidden,
            "restricted": sorted(instance.value for instance in self._security.restricted),
            "misrouted": dict(self.misrouted),
            "violations_published": self.published,
            "violations_suppressed": self.suppressed,
            "allowlists": self._security.counts(),
            "reloads": self._security.reloads,
            "cuts": dict(self.cuts),
            "rebind_failures": dict(self.rebind_failures),
            "unbound": dict(self.unbound),
        }


# -- the broker's handle on all of it ---------------------------------------------------------------


class Security:
    """Loads the broker's keys and allowlists, secures its sockets and reloads on request."""

    def __init__(self, config: BrokerConfig) -> None:
        directories = {PUBLISHERS: config.allow_publishers, SUBSCRIBERS: config.allow_subscribers}
        directories[ADMINS] = config.allow_admins
        directories[RESTRICTED_PUBLISHERS] = config.allow_restricted_publishers
        directories[RESTRICTED_SUBSCRIBERS] = config.allow_restricted_subscribers
        self.enabled = bool(config.broker_key)
        self.restricted = frozenset(journal_instances(config.restricted))
        """The instances of the restricted class (none: no class)."""
        if not self.enabled and any(directories.values()):
            given = ", ".join(f"allow_{role}" for role, path in directories.items() if path)
            raise ConfigError(f"{given} given without broker_key: the allowlists need CURVE (set broker_key)")
        if not self.restricted and (config.allow_restricted_publishers or config.allow_restricted_subscribers):
            raise ConfigError("allow_restricted_* given without restricted: name the restricted instances")
        self._server: KeyPair | None = None
        self._allowlists = Allowlists({}, {})
        self.warnings = check_binds(config, self.enabled)
        if self.enabled:
            self._server = load_key_file(config.broker_key, what="broker_key", secret=True)
            self._allowlists = Allowlists.load(directories)
        self._authenticator: BrokerAuthenticator | None = None
        self._context: zmq.Context[Any] | None = None
        self._lock = threading.Lock()
        self.reloads = 0

    def counts(self) -> dict[str, int]:
        """Keys per role (the restricted class's roles only when there is a class)."""
        counts = self._allowlists.counts()
        if not self.restricted:
            del counts[RESTRICTED_PUBLISHERS], counts[RESTRICTED_SUBSCRIBERS]
        return counts

    def start(self, context: zmq.Context[Any]) -> None:
        """Start the ZAP handler on ``context`` (before any socket binds) and log the set-up."""
        for warning in self.warnings:
            log.warning(warning)
        if not self.enabled:
            return
        self._context = context
        self._authenticator = BrokerAuthenticator(context, self._allowlists)
        self._authenticator.start()
        counts = " ".join(f"{role}={n}" for role, n in self.counts().items())
        log.info("security on: CURVE on every endpoint; allowlists %s", counts)
        for role, n in self.counts().items():
            if n == 0 and (self.restricted or role not in (RESTRICTED_PUBLISHERS, RESTRICTED_SUBSCRIBERS)):
                log.warning("allow_%s is empty: no client can connect as %s", role, role)

    def restricted_target(self, op: str, request: Mapping[str, Any] | None) -> Instance | None:
        """The restricted instance a ``publish`` or ``replay`` request is for, else ``None``
        (an unknown instance or a bad topic is the op's own error to report)."""
        if not self.restricted or request is None or op not in RESTRICTED_ROLES:
            return None
        if op == "replay":
            return self._restricted_of(request.get("instance"), topic=False)
        if op == "publish":
            return self._restricted_of(request.get("topic"), topic=True)
        messages = request.get("messages")
        for message in messages if isinstance(messages, list) else ():
            if isinstance(message, list) and message:
                found = self._restricted_of(message[0], topic=True)
                if found is not None:
                    return found  # one restricted message makes the whole request the class's
        return None

    def _restricted_of(self, name: Any, *, topic: bool) -> Instance | None:
        if isinstance(name, bytes):
            name = name.decode("utf-8", "replace")
        if not isinstance(name, str):
            return None
        try:
            instance = Instance.resolve(name.partition("/")[0] if topic else name)
        except ExesdbError:
            return None
        return instance if instance in self.restricted else None

    def secure(self, socket: zmq.Socket[Any], endpoint: str) -> None:
        """Make ``socket`` (frontend, backend or control) a CURVE server of its role's domain."""
        if self._server is not None:
            apply_server_keys(socket, self._server, DOMAINS[endpoint])

    def pop_denial(self, endpoint: str) -> Denial | None:
        """The oldest ZAP refusal on ``endpoint`` not yet reported (thread-safe deque)."""
        authenticator = self._authenticator
        if authenticator is None:
            return None
        try:
            return authenticator.denials[endpoint].popleft()
        except (KeyError, IndexError):
            return None

    def reload(self) -> dict[str, str] | None:
        """Re-read the allowlist directories; keep the old lists on any error. Logs either way.

        Returns ``None`` when no new lists are in force, else the endpoints that lost a key,
        each with why (``{"restricted_backend": "allow_restricted_subscribers lost 1 key"}``;
        empty when keys were only added). ZAP runs only at a handshake, so the broker cuts the
        open connections of those endpoints (:meth:`~.service.Service.cut`): their peers
        reconnect, and ZAP refuses the removed keys.
        """
        with self._lock:
            if self._authenticator is None:
                log.info("reload: security is off, no allowlists to reload")
                return None
            try:
                fresh = Allowlists.load(self._allowlists.directories)
            except ConfigError as exc:
                log.error("allowlists not reloaded, the previous ones stay in force: %s", exc)
                return None
            old = self._allowlists
            before = old.counts()
            self._allowlists = fresh
            self._authenticator.allowlists = fresh
            self.reloads += 1
            after = fresh.counts()
            log.info(
                "allowlists reloaded: %s",
                " ".join(f"{role}={after[role]} (was {before[role]})" for role in ROLES),
            )
            return lost_keys(old, fresh)

    def zap_alive(self) -> bool:
        """Whether the ZAP handler thread runs (always true with security off)."""
        authenticator = self._authenticator
        return authenticator is None or authenticator.is_alive()

    def restart_zap(self) -> None:
        """Start a fresh ZAP handler in place of a dead one (every handshake waits for it)."""
        with self._lock:
            dead, self._authenticator = self._authenticator, None
            if dead is not None:
                dead.stop()
            assert self._context is not None
            self._authenticator = BrokerAuthenticator(self._context, self._allowlists)
            self._authenticator.start()
        log.warning("the ZAP handler thread had stopped: started a new one")

    def stop(self) -> None:
        """Stop the ZAP thread (before the context terminates)."""
        authenticator, self._authenticator = self._authenticator, None
        if authenticator is not None:
            authenticator.stop()
