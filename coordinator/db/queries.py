"""Parses queries.sql once at import into named, typed queries; refuses a file that breaks the format."""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, LiteralString, cast

QUERIES_PATH = Path(__file__).with_name("queries.sql")
_HEADER = re.compile(r"^-- name: (?P<name>[a-z_][a-z0-9_]*) :(?P<kind>one|many|exec|val)\s*$")


class Cardinality(StrEnum):
    """What a query returns, mapped to asyncpg's fetchrow / fetch / execute / fetchval."""

    ONE = "one"
    MANY = "many"
    EXEC = "exec"
    VAL = "val"


@dataclass(frozen=True, slots=True)
class Query:
    """One named statement from queries.sql."""

    name: str
    cardinality: Cardinality
    purpose: str
    sql: LiteralString


class QueryFileError(Exception):
    """queries.sql does not follow its format."""


def parse(text: str) -> dict[str, Query]:
    """Split the file on `-- name:` headers; each query needs a purpose line and a body."""
    queries: dict[str, Query] = {}
    current: tuple[str, Cardinality] | None = None
    purpose: str | None = None
    body: list[str] = []

    def flush() -> None:
        if current is None:
            return
        name, kind = current
        sql = "\n".join(body).strip().rstrip(";").strip()
        if not purpose:
            raise QueryFileError(f"query {name} has no purpose line")
        if not sql:
            raise QueryFileError(f"query {name} has no statement")
        if name in queries:
            raise QueryFileError(f"query {name} is defined twice")
        # The file is reviewed source, never user input: this is what LiteralString stands for.
        # mypy treats LiteralString as plain str, so it calls this cast redundant; pyright does not.
        queries[name] = Query(name, kind, purpose, cast(LiteralString, sql))  # type: ignore[redundant-cast]

    for line in text.splitlines():
        m = _HEADER.match(line)
        if m:
            flush()
            current = (m["name"], Cardinality(m["kind"]))
            purpose, body = None, []
        elif current is not None and purpose is None and line.startswith("-- "):
            purpose = line[3:].strip()
        elif current is not None:
            body.append(line)
    flush()
    return queries


QUERIES: dict[str, Query] = parse(QUERIES_PATH.read_text())


async def run(con: Any, q: Query, *args: Any) -> Any:
    """Run one named query on an asyncpg connection or pool, by its cardinality."""
    match q.cardinality:
        case Cardinality.MANY:
            return await con.fetch(q.sql, *args)
        case Cardinality.ONE:
            return await con.fetchrow(q.sql, *args)
        case Cardinality.VAL:
            return await con.fetchval(q.sql, *args)
        case Cardinality.EXEC:
            return await con.execute(q.sql, *args)
