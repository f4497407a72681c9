"""Escaping: the Html type of markup known to be safe, and the helpers that build it from hostile values.

Every value shown on a page (a job's kind, labels, errors, payload; a queue's name; a coordinator's error
details) passes through esc() or t(): t() formats a literal template and escapes each argument that is not
already Html. Markup is never built from a value by concatenation. html.escape(quote=True) makes a value
safe in element text and in double-quoted attributes, the only two places values go.
"""

from __future__ import annotations

import functools
import html
import string
from collections.abc import Iterable
from importlib import resources
from typing import LiteralString
from urllib.parse import quote, urlencode


class Html(str):
    """A string of markup that is safe to send as it is."""

    __slots__ = ()


def esc(value: object) -> Html:
    """value as text, escaped for element content and double-quoted attributes."""
    if isinstance(value, Html):
        return value
    return Html(html.escape(str(value), quote=True))


def t(template: LiteralString, /, **values: object) -> Html:
    """Format a literal template with {name} fields; every value that is not Html is escaped."""
    return Html(template.format(**{k: esc(v) for k, v in values.items()}))


def join(parts: Iterable[Html], sep: LiteralString = "") -> Html:
    return Html(sep.join(esc(p) for p in parts))


def path_part(value: str) -> str:
    """A value for one URL path segment (a job id, a queue or schedule name)."""
    return quote(value, safe="")


def query(**params: str | list[str]) -> str:
    """A query string (without '?'); escaped again by t() when put in an attribute."""
    return urlencode({k: v for k, v in params.items() if v}, doseq=True)


def layout(**values: Html) -> Html:
    """The page around a body: templates/layout.html, whose $fields take Html only."""
    return Html(_layout().substitute(values))


@functools.cache
def _layout() -> string.Template:
    return string.Template(resources.files("coordinator.console").joinpath("templates/layout.html").read_text("utf-8"))
