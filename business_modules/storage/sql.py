"""Named ``:param`` placeholders, compiled once to numbered ones.

Both backends accept the same SQL text with ``:name`` placeholders. It is
compiled to ``$1, $2`` (asyncpg) or ``?1, ?2`` (sqlite3, which supports numbered
parameters), so a name used twice binds one value, and a missing value is
reported the same way on both backends. The scanner skips quoted strings,
quoted identifiers, comments, PostgreSQL ``$tag$`` strings and ``::`` casts.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from business_modules.storage.errors import UnstorableValueError

Placeholder = Literal["$", "?"]

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_INT64 = range(-(2**63), 2**63)
_DOLLAR_TAG = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)?\$")


@dataclass(frozen=True, slots=True)
class CompiledSQL:
    """SQL with numbered placeholders and the parameter name of each number."""

    text: str
    names: tuple[str, ...]

    def bind(self, params: Mapping[str, Any] | None) -> list[Any]:
        """Order `params` by placeholder number; extra keys are ignored.

        Raises:
            ValueError: a placeholder has no value in `params`.
            UnstorableValueError: a text value has a NUL character, or an integer does not fit in 64 bits.
        """
        if not self.names:
            return []
        params = params or {}
        missing = [name for name in self.names if name not in params]
        if missing:
            raise ValueError(f"Missing SQL parameter(s) {missing} for statement: {self.text[:120]!r}")
        values = [params[name] for name in self.names]
        for name, value in zip(self.names, values):
            if isinstance(value, str) and "\x00" in value:
                raise UnstorableValueError(f"{name}: text with a NUL character (U+0000) cannot be stored")
            if isinstance(value, int) and value not in _INT64:
                raise UnstorableValueError(f"{name}: {value} does not fit in a 64-bit integer")
        return values


def _skip_quoted(sql: str, start: int, quote: str) -> int:
    """Index just past the quoted run that opens at `start` ('' escapes a quote)."""
    i = start + 1
    while i < len(sql):
        if sql[i] == quote:
            if i + 1 < len(sql) and sql[i + 1] == quote:
                i += 2
                continue
            return i + 1
        i += 1
    return len(sql)


@functools.lru_cache(maxsize=1024)
def compile_named(sql: str, placeholder: Placeholder) -> CompiledSQL:
    """Compile ``:name`` placeholders in `sql` to ``$n`` or ``?n``."""
    out: list[str] = []
    names: list[str] = []
    numbers: dict[str, int] = {}
    i = 0
    n = len(sql)
    while i < n:
        ch = sql[i]
        if ch in ("'", '"'):
            end = _skip_quoted(sql, i, ch)
            out.append(sql[i:end])
            i = end
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(sql[i:end])
            i = end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(sql[i:end])
            i = end
        elif ch == "$" and (tag := _DOLLAR_TAG.match(sql, i)) is not None:
            close = sql.find(tag.group(0), tag.end())
            end = n if close < 0 else close + len(tag.group(0))
            out.append(sql[i:end])
            i = end
        elif sql.startswith("::", i):
            out.append("::")
            i += 2
        elif ch == ":" and (match := _NAME.match(sql, i + 1)) is not None:
            name = match.group(0)
            if name not in numbers:
                names.append(name)
                numbers[name] = len(names)
            out.append(f"{placeholder}{numbers[name]}")
            i = match.end()
        else:
            out.append(ch)
            i += 1
    return CompiledSQL("".join(out), tuple(names))


def split_statements(script: str) -> list[str]:
    """Split a script into complete statements (for SQLite, whose driver runs one at a time).

    Uses the same scanner rules as `compile_named` for quotes and comments, so a
    ``;`` inside a string literal does not split. ``BEGIN ... END`` blocks of
    triggers are kept whole by `sqlite3.complete_statement`.
    """
    import sqlite3

    statements: list[str] = []
    buffer = ""
    for piece in script.split(";"):
        buffer = f"{buffer};{piece}" if buffer else piece
        if sqlite3.complete_statement(buffer + ";"):
            if buffer.strip():
                statements.append(buffer.strip())
            buffer = ""
    if buffer.strip():
        statements.append(buffer.strip())
    return statements


def rows_affected(status: str) -> int:
    """Rows affected from an asyncpg status tag such as ``"INSERT 0 3"`` or ``"UPDATE 2"``."""
    last = status.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


def dicts(rows: Sequence[Any]) -> list[dict[str, Any]]:
    """Plain dicts from driver rows (asyncpg.Record or sqlite3.Row)."""
    return [dict(row) for row in rows]
