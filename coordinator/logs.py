"""Structured logging: one logfmt line per event, with every `extra` field (job_id, lease_token, worker_id, ...)."""

from __future__ import annotations

import logging
import os
import sys
import time

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime", "taskName"}


def _quote(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' ="\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    """ts=... level=... logger=... msg=... key=value ..."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        parts = [f"ts={ts}", f"level={record.levelname.lower()}", f"logger={record.name}",
                 f"msg={_quote(record.getMessage())}"]
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                parts.append(f"{key}={_quote(value)}")
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(parts)


def setup(level: str | None = None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or os.environ.get("FAULTLINE_LOG_LEVEL") or "INFO").upper())
    logging.getLogger("asyncio").setLevel(logging.WARNING)


def job_fields(job_id: int | str, lease_token: int | None = None, worker_id: str | None = None,
               **more: object) -> dict[str, object]:
    """`extra` for a line about one job: job_id, then lease_token and worker_id when known (None is left out)."""
    fields: dict[str, object] = {"job_id": job_id}
    if lease_token is not None:
        fields["lease_token"] = lease_token
    if worker_id:
        fields["worker_id"] = worker_id
    fields.update(more)
    return fields
