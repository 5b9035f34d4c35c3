"""Which services this deployment is configured with: what ``/health`` reports and ``/docs`` documents.

By default (``GATEWAY_EXPECTED_SERVICES`` unset) they are the services whose
Serve application Serve has been asked to deploy, whatever state it is in:
the applications of ``serve_config.yaml`` (``serve deploy``, ``blatam up``)
or of ``serve.run``. That is where a Ray user says what runs, and
``serve status`` lists exactly those, so an application that failed to
deploy is still configured (and down), while a name the registry merely
knows (``bul``, ``gamma``, ``agents``) is not. An application being deleted
is no longer configured.

With ``GATEWAY_EXPECTED_SERVICES`` set, exactly those services are
configured, deployed or not; one that Serve does not have counts as down.
That is for installations where a missing application must page someone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from deployments.gateway.services import AppState, ServiceClient, ServiceRegistry

FROM_SERVE: Literal["serve"] = "serve"
FROM_SETTINGS: Literal["settings"] = "settings"

# Serve application states that mean "on the way out", not "configured and down".
_LEAVING = {"DELETING"}


@dataclass(frozen=True, slots=True)
class ConfiguredServices:
    """The configured services and what Serve says about their applications."""

    services: list[tuple[str, str]]
    """(service, Serve application) pairs, sorted by service."""
    app_states: dict[str, AppState] | None
    """Serve's view of every application; None when Serve's status did not answer in time."""
    source: Literal["serve", "settings"]
    """Where the list comes from: Serve's applications or ``GATEWAY_EXPECTED_SERVICES``."""


def check_expected(registry: ServiceRegistry, expected: Sequence[str] | None) -> None:
    """Fail fast (ValueError) when ``GATEWAY_EXPECTED_SERVICES`` names a service the gateway cannot route."""
    known = {name for name, _ in registry.items()}
    unknown = sorted(set(expected or ()) - known)
    if unknown:
        raise ValueError(f"GATEWAY_EXPECTED_SERVICES names unknown services {unknown}; known: {sorted(known)}")


def select_services(
    registry: ServiceRegistry, app_states: dict[str, AppState], expected: Sequence[str] | None
) -> list[tuple[str, str]]:
    """The configured (service, app) pairs: `expected` if given, else those whose app Serve has."""
    if expected is not None:
        return sorted((name, registry.app_for(name)) for name in set(expected))
    return [(name, app) for name, app in registry.items()
            if app in app_states and app_states[app].status not in _LEAVING]


async def configured_services(
    client: ServiceClient, *, expected: Sequence[str] | None, timeout_s: float
) -> ConfiguredServices:
    """The configured services with Serve's current view (see the module docstring).

    When Serve's status does not answer within `timeout_s` (a controller busy
    deploying) or has never been read, the list follows the last view the
    client read and ``app_states`` is None: the caller says "unknown", not
    "not deployed".
    """
    source = FROM_SETTINGS if expected is not None else FROM_SERVE
    try:
        states: dict[str, AppState] | None = await asyncio.wait_for(client.app_states(), timeout=timeout_s)
    except TimeoutError:
        states = None
    if not states:  # Serve always lists the gateway's own application: an empty view is no view yet
        states = None
    view = states if states is not None else client.known_app_states()
    return ConfiguredServices(select_services(client.registry, view, expected), states, source)
