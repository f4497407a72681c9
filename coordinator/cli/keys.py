"""`faultline keys create|ls|revoke`: API keys, made and revoked straight in Postgres (DATABASE_URL, like migrate).

Without DATABASE_URL they use the embedded Postgres, as the coordinator and `faultline migrate` do.

Server-side on purpose: the first admin key is made without a key. `create` prints the key once, on stdout
alone (so `KEY=$(faultline keys create ...)` works), and never again: only its hash is stored. A revoked
key stops working on every coordinator within FAULTLINE_AUTH_REFRESH_MS (2 s by default), open worker
streams included.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from coordinator.auth.keys import (
    KeyRecord,
    check_key_name,
    check_queue_patterns,
    format_token,
    hash_secret,
    new_key_id,
    new_salt,
    new_secret,
    parse_scopes,
)
from coordinator.config import Config, dsn_target
from coordinator.db.store import KeyInfo, Store
from coordinator.errors import ConfigError, FaultlineError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_CONFIG = 2
RATE_MAX_PER_S = 1_000_000.0
BURST_MAX = 1_000_000
_RATE = re.compile(r"^(\d+(?:\.\d+)?)(?:/s)?$")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="create, list and revoke API keys (uses DATABASE_URL)").add_subparsers(
        dest="keys_command", required=True, metavar="ACTION")
    c = keys.add_parser("create", help="make a key and print it once")
    c.add_argument("name", type=_name)
    c.add_argument("--scope", required=True, type=_scopes,
                   help="comma-separated: submit, read, payloads, work, admin (admin implies the others)")
    c.add_argument("--queue", action="append", default=[], metavar="PATTERN",
                   help="limit the key to a queue, or to a prefix ending in '*' (repeatable; default: every queue)")
    c.add_argument("--rate", type=_rate, help="jobs it may create per second, as N or N/s (default: unlimited)")
    c.add_argument("--burst", type=_burst, help="bucket size for --rate (default: the rate, at least 1)")
    c.add_argument("--json", action="store_true", help="print the key and its settings as JSON")
    c.set_defaults(func=lambda a: _run(_create, a))
    ls = keys.add_parser("ls", help="list keys (never their secrets)")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=lambda a: _run(_ls, a))
    r = keys.add_parser("revoke", help="revoke the active key NAME")
    r.add_argument("name", type=_name)
    r.add_argument("--json", action="store_true")
    r.set_defaults(func=lambda a: _run(_revoke, a))


def _name(value: str) -> str:
    try:
        return check_key_name(value)
    except FaultlineError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _scopes(value: str) -> list[str]:
    try:
        return sorted(parse_scopes(value))
    except FaultlineError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _rate(value: str) -> float:
    m = _RATE.match(value.strip())
    if not m or not 0 < float(m[1]) <= RATE_MAX_PER_S:
        raise argparse.ArgumentTypeError(f"must be N or N/s with N in (0, {RATE_MAX_PER_S:.0f}], got {value!r}")
    return float(m[1])


def _burst(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if not 1 <= n <= BURST_MAX:
        raise argparse.ArgumentTypeError(f"must be in [1, {BURST_MAX}], got {n}")
    return n


def _info(k: KeyInfo) -> dict[str, Any]:
    return {"id": k.key_id, "name": k.name, "scopes": list(k.scopes), "queues": list(k.queues) or ["*"],
            "rate_per_s": k.rate_per_s, "burst": k.burst,
            "created_at": k.created_at.isoformat() if k.created_at else None,
            "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None}


async def _create(store: Store, args: argparse.Namespace) -> int:
    if args.burst is not None and args.rate is None:
        print("faultline keys create: --burst needs --rate", file=sys.stderr)
        return EXIT_CONFIG
    try:
        queues = check_queue_patterns(args.queue)
    except FaultlineError as exc:
        print(f"faultline keys create: --queue: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    key_id, secret, salt = new_key_id(), new_secret(), new_salt()
    record = KeyRecord(key_id=key_id, name=args.name, salt=salt, secret_hash=hash_secret(salt, secret),
                       scopes=parse_scopes(args.scope), queues=() if "*" in queues else queues,
                       rate_per_s=args.rate, burst=args.burst)
    import asyncpg

    try:
        info = await store.api_key_insert(record)
    except FaultlineError as exc:
        if isinstance(exc.__cause__, asyncpg.UniqueViolationError):
            print(f"faultline keys create: an active key is already named {args.name!r} "
                  "(revoke it first, or pick another name)", file=sys.stderr)
            return EXIT_ERROR
        raise
    token = format_token(key_id, secret)
    if args.json:
        print(json.dumps({**_info(info), "key": token}, indent=2, sort_keys=True))
    else:
        print(token)
        print(f"created key {info.name} ({info.key_id}): scopes {','.join(info.scopes)}; queues "
              f"{','.join(info.queues) or '*'}; rate {_rate_text(info)}. The key is shown only now.", file=sys.stderr)
    return EXIT_OK


def _rate_text(k: KeyInfo) -> str:
    if k.rate_per_s is None:
        return "unlimited"
    return f"{k.rate_per_s:g}/s burst {k.burst or max(1, int(k.rate_per_s))}"


async def _ls(store: Store, args: argparse.Namespace) -> int:
    keys = await store.api_keys_list()
    if args.json:
        print(json.dumps([_info(k) for k in keys], indent=2, sort_keys=True))
        return EXIT_OK
    rows = [("NAME", "ID", "SCOPES", "QUEUES", "RATE", "CREATED", "REVOKED")]
    for k in keys:
        rows.append((k.name, k.key_id, ",".join(k.scopes), ",".join(k.queues) or "*", _rate_text(k),
                     k.created_at.strftime("%Y-%m-%d %H:%M:%S") if k.created_at else "",
                     k.revoked_at.strftime("%Y-%m-%d %H:%M:%S") if k.revoked_at else ""))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
    return EXIT_OK


async def _revoke(store: Store, args: argparse.Namespace) -> int:
    revoked = await store.api_key_revoke(args.name)
    if not revoked:
        print(f"faultline keys revoke: no active key named {args.name!r}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        print(json.dumps([{"id": k.key_id, "name": k.name} for k in revoked], indent=2))
    else:
        print(f"revoked key {args.name} ({', '.join(k.key_id for k in revoked)}); coordinators refuse it within "
              "their key refresh interval")
    return EXIT_OK


def _run(action: Callable[[Store, argparse.Namespace], Awaitable[int]], args: argparse.Namespace) -> int:
    try:
        cfg = Config.from_env()
    except ConfigError as exc:
        print(f"faultline: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    dsn = cfg.database_url
    if not dsn:  # as `faultline migrate` and the coordinator do: the embedded Postgres
        from coordinator import embedded

        try:
            dsn = embedded.start(cfg.embedded_data_dir)
        except Exception as exc:  # the CLI boundary: one line, not a traceback
            print(f"faultline keys: DATABASE_URL is not set and the embedded Postgres did not start: {exc}",
                  file=sys.stderr)
            return EXIT_CONFIG

    async def go() -> int:
        import asyncpg

        from coordinator.db.migrate import migrate
        from coordinator.db.pool import create_pool

        try:
            pool = await create_pool(dsn, max_size=2)
            async with pool.acquire() as con:
                await migrate(con)  # the keys table before the first coordinator ever ran
        except (OSError, asyncpg.PostgresError, asyncpg.ClientConfigurationError) as exc:
            print(f"faultline keys: cannot use Postgres at {dsn_target(dsn)}: {' '.join(str(exc).split())}",
                  file=sys.stderr)
            return EXIT_ERROR
        try:
            return await action(Store(pool), args)
        except FaultlineError as exc:
            print(f"faultline keys: {exc}", file=sys.stderr)
            return EXIT_ERROR
        finally:
            await pool.close()

    return asyncio.run(go())
