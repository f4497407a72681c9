"""The SDK's exception hierarchy: one base, WorkerSDKError, whose docstring is the default message.

Handlers raise RetryJob and NonRetryableError to steer the next attempt. The client and the
worker raise the others; the client maps gRPC status codes onto them in _client.py only.
"""

from __future__ import annotations

from datetime import timedelta


class WorkerSDKError(Exception):
    """Unexpected Faultline worker SDK error."""

    def __init__(self, message: str | None = None) -> None:
        if not message:
            message = (self.__doc__ or type(self).__name__).strip()
        super().__init__(message)
        self.message = message


class RetryJob(WorkerSDKError):
    """The attempt failed and should be retried."""

    def __init__(self, delay: timedelta | None = None, message: str | None = None) -> None:
        if delay is not None and not isinstance(delay, timedelta):
            raise TypeError(f"RetryJob delay must be a timedelta or None, not {type(delay).__name__}")
        if delay is not None and delay < timedelta(0):
            raise ValueError("RetryJob delay must not be negative")
        super().__init__(message)
        #: Delay before the next attempt; None keeps the job's retry policy.
        self.delay = delay


class NonRetryableError(WorkerSDKError):
    """The attempt failed and retrying cannot help; the job is dead-lettered at once."""


class LeaseLostError(WorkerSDKError):
    """This worker no longer holds the job's lease; another attempt may own the job now."""


class JobCancelledError(WorkerSDKError):
    """The job was cancelled; stop working on it."""


class JobNotFoundError(WorkerSDKError):
    """No such job."""


class InvalidArgumentError(WorkerSDKError):
    """The request was rejected as invalid."""


class FailedPreconditionError(WorkerSDKError):
    """The job is not in a state that allows this operation."""


class UnavailableError(WorkerSDKError):
    """The coordinator is unreachable or could not serve the request; it may be retried."""


class SubmitOutcomeUnknownError(UnavailableError):
    """A submit without an idempotency key failed after it may have reached the coordinator.

    The job may or may not be stored, and the SDK does not retry it: a blind retry could store it twice.
    Submit with an idempotency_key to make a retry safe (the SDK then retries by itself).
    """


class AuthError(WorkerSDKError):
    """The coordinator refused this client's credentials; retrying with the same ones cannot help.

    Worker.run() ends with it instead of reconnecting forever, and the Client raises it at once.
    """


class UnauthenticatedError(AuthError):
    """No valid credentials: pass api_key= (or set FAULTLINE_API_KEY), or a client certificate for mTLS."""


class PermissionDeniedError(AuthError):
    """These credentials do not allow this call: a missing scope, or a queue outside the key's patterns."""


class RateLimitedError(UnavailableError):
    """The key is past its rate limit; retry_after is how long the coordinator asked to wait (None: unknown)."""

    def __init__(self, message: str | None = None, *, retry_after: timedelta | None = None) -> None:
        super().__init__(message)
        #: The delay from the coordinator's google.rpc.RetryInfo.
        self.retry_after = retry_after


class WaitTimeoutError(WorkerSDKError):
    """Client.wait() gave up: the job did not finish within its timeout (it goes on running)."""


class ProtocolError(WorkerSDKError):
    """The coordinator sent something this SDK does not understand."""
