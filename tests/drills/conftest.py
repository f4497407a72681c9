"""Drill tests print the checker's summary lines at the end of the run, so that CI shows them."""

from __future__ import annotations

from typing import Any

SUMMARIES: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SUMMARIES:
        terminalreporter.section("failure drills: checker summary")
        for line in SUMMARIES:
            terminalreporter.write_line(line)
