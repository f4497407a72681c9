"""`faultline coordinator` and `faultline migrate`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Coroutine
from typing import Any

from coordinator import logs
from coordinator.config import Config
from coordinator.errors import ConfigError, StartupError

logger = logging.getLogger(__name__)

EXIT_CONFIG = 2
# Could not start for a reason that waiting does not fix: bad credentials, no such database, a taken port.
EXIT_STARTUP = 1
EXIT_INTERRUPTED = 130


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("coordinator", help="run the coordinator (configuration from the environment)")
    p.set_defaults(func=run_coordinator)
    m = sub.add_parser("migrate", help="apply pending migrations to DATABASE_URL (or the embedded Postgres) and exit")
    m.set_defaults(func=run_migrate)


def _config() -> Config | None:
    try:
        return Config.from_env()
    except ConfigError as exc:
        print(f"faultline: invalid configuration: {exc}", file=sys.stderr)
        return None


def _run(coro: Coroutine[Any, Any, int]) -> int:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def run_coordinator(args: argparse.Namespace) -> int:
    logs.setup()
    cfg = _config()
    if cfg is None:
        return EXIT_CONFIG
    from coordinator.app import main

    try:
        return _run(main(cfg))
    except ConfigError as exc:
        print(f"faultline: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StartupError as exc:
        print(f"faultline: cannot start the coordinator: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except KeyboardInterrupt:  # before main() installed its handlers
        return EXIT_INTERRUPTED


def run_migrate(args: argparse.Namespace) -> int:
    logs.setup()
    cfg = _config()
    if cfg is None:
        return EXIT_CONFIG

    async def go() -> int:
        import asyncpg

        from coordinator import embedded
        from coordinator.config import dsn_target
        from coordinator.db.migrate import discover, migrate

        discover()
        dsn = cfg.database_url or embedded.start(cfg.embedded_data_dir)
        try:
            con = await asyncpg.connect(dsn)
        except (OSError, asyncpg.PostgresError, asyncpg.ClientConfigurationError) as exc:
            raise StartupError(f"cannot connect to Postgres at {dsn_target(dsn)}: {' '.join(str(exc).split())} "
                               f"({type(exc).__name__})") from None
        try:
            applied = await migrate(con)
        finally:
            await con.close()
        print(f"applied {len(applied)} migration(s){': ' + ', '.join(applied) if applied else ''}")
        return 0

    try:
        return _run(go())
    except ConfigError as exc:
        print(f"faultline: invalid configuration: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except StartupError as exc:
        print(f"faultline migrate: {exc}", file=sys.stderr)
        return EXIT_STARTUP
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
