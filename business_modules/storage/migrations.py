"""Versioned schema migrations, registered per component.

Each domain module registers its schema at import time of its repository
module::

    register_migrations("auth", [
        Migration(1, "users", "CREATE TABLE IF NOT EXISTS auth_users (...)"),
        Migration(2, "api keys", {"postgresql": "...", "sqlite": "..."}),
    ])

`open_database` applies every registered migration that is not yet recorded
in ``schema_migrations(component, version, name, applied_at)``, in one
transaction under a lock (a PostgreSQL advisory lock, SQLite's write lock), so
replicas that start together apply each migration once and a failed migration
leaves nothing half-applied. A migration already applied is never re-run or
edited: change the schema by adding a version.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

Dialect = Literal["postgresql", "sqlite"]
DIALECTS: tuple[Dialect, ...] = ("postgresql", "sqlite")

_COMPONENT = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

MIGRATIONS_TABLE_SQL = (
    "CREATE TABLE IF NOT EXISTS schema_migrations ("
    " component TEXT NOT NULL,"
    " version INTEGER NOT NULL,"
    " name TEXT NOT NULL,"
    " applied_at DOUBLE PRECISION NOT NULL,"
    " PRIMARY KEY (component, version))"
)


@dataclass(frozen=True, slots=True)
class Migration:
    """One schema change of one component.

    Args:
        version: positive, unique within the component; applied in increasing order.
        name: a short label, stored with the version (a different name for an
            applied version means the code and the database disagree).
        sql: one or more statements separated by ``;``, or a dict with one
            script per dialect (``"postgresql"``, ``"sqlite"``).
    """

    version: int
    name: str
    sql: str | Mapping[str, str]

    def __post_init__(self) -> None:
        if not isinstance(self.version, int) or self.version < 1:
            raise ValueError(f"Migration version must be a positive int, got {self.version!r}")
        if not self.name or not self.name.strip():
            raise ValueError(f"Migration {self.version} needs a name")
        if isinstance(self.sql, Mapping):
            missing = [d for d in DIALECTS if d not in self.sql]
            unknown = [d for d in self.sql if d not in DIALECTS]
            if missing or unknown:
                raise ValueError(
                    f"Migration {self.version} ({self.name}): per-dialect sql needs exactly "
                    f"{list(DIALECTS)}; missing {missing}, unknown {unknown}"
                )
            object.__setattr__(self, "sql", dict(self.sql))

    def script(self, dialect: Dialect) -> str:
        """The SQL to run on `dialect`."""
        return self.sql[dialect] if isinstance(self.sql, dict) else self.sql


class MigrationRegistry:
    """Migrations by component. The module keeps one default instance that
    `register_migrations` fills; tests may build a private one and pass it to
    `open_database(registry=...)`."""

    def __init__(self) -> None:
        self._by_component: dict[str, dict[int, Migration]] = {}
        self._lock = threading.Lock()

    def register(self, component: str, migrations: Iterable[Migration]) -> None:
        """Declare `component`'s migrations; registering the same ones again is a no-op.

        Raises:
            ValueError: a bad component name, a duplicate version in `migrations`,
                or a version already registered with a different name or SQL.
        """
        if not _COMPONENT.match(component):
            raise ValueError(f"Component name must match {_COMPONENT.pattern}, got {component!r}")
        new: dict[int, Migration] = {}
        for migration in migrations:
            if migration.version in new:
                raise ValueError(f"{component}: migration version {migration.version} given twice")
            new[migration.version] = migration
        with self._lock:
            known = self._by_component.setdefault(component, {})
            for version, migration in new.items():
                if version in known and known[version] != migration:
                    raise ValueError(
                        f"{component}: migration {version} is already registered as "
                        f"{known[version].name!r} with different content"
                    )
            known.update(new)

    def plan(self, components: Iterable[str] | None = None) -> dict[str, list[Migration]]:
        """Migrations by component (all, or only `components`), sorted by version.

        Raises:
            ValueError: a component in `components` has no migrations.
        """
        with self._lock:
            names = sorted(self._by_component) if components is None else list(components)
            unknown = [name for name in names if name not in self._by_component]
            if unknown:
                raise ValueError(
                    f"No migrations registered for {unknown}; registered: {sorted(self._by_component)}"
                )
            return {name: sorted(self._by_component[name].values(), key=lambda m: m.version) for name in names}


DEFAULT_REGISTRY = MigrationRegistry()


def register_migrations(component: str, migrations: Iterable[Migration]) -> None:
    """Declare `component`'s migrations in the default registry (see `MigrationRegistry.register`)."""
    DEFAULT_REGISTRY.register(component, migrations)


def registered(components: Iterable[str] | None = None) -> dict[str, list[Migration]]:
    """The default registry's migrations by component, sorted by version."""
    return DEFAULT_REGISTRY.plan(components)
