"""The ten PubSub instances the bus multiplexes by topic prefix."""

from __future__ import annotations

from enum import StrEnum

from .errors import UnknownInstanceError

__all__ = ["Instance"]


class Instance(StrEnum):
    """One of the ten instances: the nine observability channels plus store events.

    The value is the full name used on the wire (``ex_esdb_health``); ``alias`` is the
    short name (``health``). :meth:`resolve` accepts either, or an ``Instance``.
    """

    EVENTS = "ex_esdb_events"
    SYSTEM = "ex_esdb_system"
    HEALTH = "ex_esdb_health"
    METRICS = "ex_esdb_metrics"
    LIFECYCLE = "ex_esdb_lifecycle"
    ALERTS = "ex_esdb_alerts"
    AUDIT = "ex_esdb_audit"
    DIAGNOSTICS = "ex_esdb_diagnostics"
    SECURITY = "ex_esdb_security"
    LOGGING = "ex_esdb_logging"

    @property
    def alias(self) -> str:
        """The short name, e.g. ``health``."""
        return self.value.removeprefix("ex_esdb_")

    @property
    def prefix(self) -> str:
        """The topic prefix that selects the whole instance, e.g. ``ex_esdb_health/``."""
        return self.value + "/"

    @property
    def description(self) -> str:
        """What the instance carries, from the original design."""
        return _DESCRIPTIONS[self]

    @classmethod
    def resolve(cls, name: Instance | str) -> Instance:
        """Return the instance named by ``name``: an ``Instance``, a full name or an alias.

        Raises :class:`~exesdb_sdk.errors.UnknownInstanceError` for anything else.
        """
        if isinstance(name, Instance):
            return name
        found = _BY_NAME.get(name) if isinstance(name, str) else None
        if found is None:
            raise UnknownInstanceError(name)
        return found


_DESCRIPTIONS: dict[Instance, str] = {
    Instance.EVENTS: "Store events delivered to subscribers",
    Instance.SYSTEM: "System lifecycle and configuration",
    Instance.HEALTH: "Health monitoring and status",
    Instance.METRICS: "Performance metrics",
    Instance.LIFECYCLE: "Process and node lifecycle",
    Instance.ALERTS: "Critical alerts and notifications",
    Instance.AUDIT: "Audit trail and compliance",
    Instance.DIAGNOSTICS: "Debug and troubleshooting",
    Instance.SECURITY: "Security events",
    Instance.LOGGING: "Log aggregation",
}

_BY_NAME: dict[str, Instance] = {}
for _instance in Instance:
    _BY_NAME[_instance.value] = _instance
    _BY_NAME[_instance.alias] = _instance
    _BY_NAME[":" + _instance.value] = _instance  # the Elixir atom spelling of the original
del _instance
