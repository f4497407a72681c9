"""The coordinator's exception hierarchy; api/status.py alone maps it to gRPC status codes."""

from __future__ import annotations

from datetime import timedelta


class FaultlineError(Exception):
    """Unexpected Faultline error."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or self.__doc__)


class ConfigError(FaultlineError):
    """Invalid configuration."""


class StartupError(FaultlineError):
    """The coordinator cannot start, and waiting will not help (bad credentials, no database, a taken port)."""


class InvalidArgumentError(FaultlineError):
    """Invalid argument."""

    def __init__(self, field: str, problem: str) -> None:
        self.field = field
        super().__init__(f"{field}: {problem}")


class JobNotFoundError(FaultlineError):
    """No such job."""


class FailedPreconditionError(FaultlineError):
    """The job is not in a state that allows this."""


class DatabaseUnavailableError(FaultlineError):
    """PostgreSQL is unreachable."""


class OverloadedError(FaultlineError):
    """The coordinator is at capacity; retry later."""

    def __init__(self, message: str | None = None, *, retry_after: timedelta | None = None) -> None:
        self.retry_after = retry_after  # sent as google.rpc.RetryInfo (api/status.py)
        super().__init__(message)


class UnauthenticatedError(FaultlineError):
    """No valid credentials: send `authorization: Bearer <api key>` or a client certificate."""


class PermissionDeniedError(FaultlineError):
    """These credentials do not allow this call."""


class RateLimitedError(OverloadedError):
    """This key is past its rate limit; retry after the delay given."""


class RestartIntensityExceeded(FaultlineError):
    """An actor crashed more often than the supervisor allows."""


class ScheduleNotFoundError(FaultlineError):
    """No such schedule."""


class AlreadyExistsError(FaultlineError):
    """The name is taken."""
