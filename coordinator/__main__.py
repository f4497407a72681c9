"""`python -m coordinator`: configuration from the environment, logging, then the asyncio main."""

from __future__ import annotations

import sys

from coordinator.cli import main

if __name__ == "__main__":
    sys.exit(main(["coordinator", *sys.argv[1:]]))
