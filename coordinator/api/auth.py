"""AuthInterceptor: the edge's authentication, authorization, rate limit and access log, for unary RPCs and streams.

    call --> public method (grpc.health.v1)? ------------------------------------> handler
         \\-> authenticate: Bearer key (KeyRing) and/or client certificate (mTLS)
              |  none or bad: UNAUTHENTICATED
              v
             authorize: the method's scope (METHOD_SCOPES; None: any authenticated caller; a method not
              |  listed needs admin)
              |  missing: PERMISSION_DENIED naming the scope
              v
             rate limit (Submit, SubmitBatch: one token per job): RESOURCE_EXHAUSTED + RetryInfo
              v
             bind the principal (coordinator/auth/keys.current()) --> handler (queue checks there)
              v
             a stream also ends UNAUTHENTICATED when its key is revoked while it is open

With FAULTLINE_AUTH=off (loopback only, see api/server.py) the interceptor hands every handler back
unwrapped, so auth off costs nothing, and every call runs as ANONYMOUS with every scope.

Identity: a key's is ``key:NAME``; a client certificate's is ``cn:COMMON_NAME`` and, when both come,
the certificate names the caller and the key gives the scopes. A worker's id is qualified with it
(``key:NAME/worker-1``), so the holder that Postgres fences every lease write on is not a claim the
worker makes: another key cannot heartbeat, complete, fail, release, record steps for or resume it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from typing import Any

import grpc
from prometheus_client import Counter

from coordinator import metrics
from coordinator.api.status import code_for, trailing_metadata_for
from coordinator.auth.keyring import KeyRing
from coordinator.auth.keys import Principal, Scope, bind, unbind
from coordinator.errors import (
    FaultlineError,
    InvalidArgumentError,
    RateLimitedError,
    UnauthenticatedError,
)

logger = logging.getLogger(__name__)
access_log = logging.getLogger("coordinator.access")

AUTH_METADATA_KEY = "authorization"
BEARER_PREFIX = "bearer "
PUBLIC_PREFIXES = ("/grpc.health.v1.Health/",)
REFLECTION_PREFIXES = ("/grpc.reflection.v1alpha.ServerReflection/", "/grpc.reflection.v1.ServerReflection/")
_JOBS = "/faultline.v1.JobService/"
# The scope each method needs; None: any authenticated caller, whatever its scopes (WhoAmI).
METHOD_SCOPES: dict[str, Scope | None] = {
    _JOBS + "Submit": Scope.SUBMIT,
    _JOBS + "SubmitBatch": Scope.SUBMIT,
    _JOBS + "GetJob": Scope.READ,
    _JOBS + "ListJobs": Scope.READ,
    _JOBS + "ListQueues": Scope.READ,
    _JOBS + "ListWorkers": Scope.READ,
    _JOBS + "WatchJob": Scope.READ,
    _JOBS + "ListSchedules": Scope.READ,
    _JOBS + "GetSchedule": Scope.READ,
    _JOBS + "CancelJob": Scope.ADMIN,
    _JOBS + "RequeueJob": Scope.ADMIN,
    _JOBS + "BulkCancelJobs": Scope.ADMIN,
    _JOBS + "BulkRequeueJobs": Scope.ADMIN,
    _JOBS + "WhoAmI": None,
    "/faultline.v1.WorkerService/Connect": Scope.WORK,
}
# Methods whose calls create jobs and so take tokens from the key's bucket: one per job.
RATE_LIMITED = frozenset({_JOBS + "Submit", _JOBS + "SubmitBatch"})

AUTH_REFUSED = Counter("faultline_auth_refused_total", "Calls refused at the edge, by status code.", ["code"],
                       registry=metrics.REGISTRY)
for _code in ("UNAUTHENTICATED", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "UNAVAILABLE"):
    AUTH_REFUSED.labels(_code)


def _jobs_in(request: Any) -> int:
    jobs = getattr(request, "jobs", None)
    return len(jobs) if jobs is not None else 1


class AuthInterceptor(grpc.aio.ServerInterceptor):
    """See the module docstring."""

    def __init__(self, *, ring: KeyRing, required: bool, mtls: bool,
                 cert_scopes: frozenset[Scope], cert_queues: tuple[str, ...]) -> None:
        self._ring = ring
        self._required = required
        self._mtls = mtls
        self._cert_scopes = cert_scopes
        self._cert_queues = cert_queues
        # The wrapped handler of each served method, built on its first call: nothing in it depends on the
        # call, so later calls skip the rebuild (and the inner interceptors'). Only methods the server has
        # are cached, so the dict is bounded by the services, not by what clients send.
        self._wrapped: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        method = handler_call_details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        found = await continuation(handler_call_details)
        if found is None or not self._required or method.startswith(PUBLIC_PREFIXES):
            return found
        wrapped = self._wrap(found, method)
        self._wrapped[method] = wrapped
        return wrapped

    def _wrap(self, found: grpc.RpcMethodHandler[Any, Any], method: str) -> grpc.RpcMethodHandler[Any, Any]:
        scope: Scope | None
        if method in METHOD_SCOPES:
            scope = METHOD_SCOPES[method]
        elif method.startswith(REFLECTION_PREFIXES):
            scope = None
        else:
            scope = Scope.ADMIN  # fail closed: an RPC added later needs admin until it is given a scope
        handler: Any = found  # a grpc._utilities.RpcMethodHandler namedtuple: _replace() makes the copy
        limited = method in RATE_LIMITED
        if handler.unary_unary is not None:
            behavior = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                principal = await self._admit(context, method, scope, _jobs_in(request) if limited else 0)
                token = bind(principal)
                try:
                    return await behavior(request, context)
                finally:
                    unbind(token)

            return handler._replace(unary_unary=unary)  # type: ignore[no-any-return]
        if handler.stream_stream is not None:
            stream_behavior = handler.stream_stream

            async def stream(request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                principal = await self._admit(context, method, scope, 0)
                token = bind(principal)
                try:
                    return await self._until_revoked(stream_behavior(request_iterator, context), principal, context)
                finally:
                    unbind(token)

            return handler._replace(stream_stream=stream)  # type: ignore[no-any-return]
        if handler.unary_stream is not None:
            server_stream = handler.unary_stream

            async def watch(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
                principal = await self._admit(context, method, scope, 0)
                token = bind(principal)
                try:
                    async for item in server_stream(request, context):
                        yield item
                finally:
                    unbind(token)

            return handler._replace(unary_stream=watch)  # type: ignore[no-any-return]
        # stream-unary: none of ours; refused rather than let through unchecked.
        return grpc.unary_unary_rpc_method_handler(self._refuse_shape)

    @staticmethod
    async def _refuse_shape(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this call shape is not served with auth on")

    async def _admit(self, context: grpc.aio.ServicerContext[Any, Any], method: str, scope: Scope | None,
                     jobs: int) -> Principal:
        try:
            principal = await self._authenticate(context)
            if scope is not None:
                principal.require(scope, method.rsplit("/", 1)[-1])
            if jobs:
                self._throttle(principal, jobs)
        except FaultlineError as exc:
            code = code_for(exc)
            AUTH_REFUSED.labels(code.name).inc()
            if access_log.isEnabledFor(logging.INFO):
                access_log.info("call refused", extra={"method": method, "code": code.name, "reason": str(exc),
                                                       "peer": context.peer()})
            await context.abort(code, str(exc), trailing_metadata_for(exc, code))
            raise AssertionError("unreachable") from None  # context.abort always raises
        if access_log.isEnabledFor(logging.DEBUG):
            access_log.debug("call", extra={"method": method, "principal": principal.identity, "peer": context.peer()})
        return principal

    async def _authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> Principal:
        token = None
        for key, value in context.invocation_metadata() or ():
            if key == AUTH_METADATA_KEY:
                if not isinstance(value, str) or not value[:len(BEARER_PREFIX)].lower() == BEARER_PREFIX:
                    raise UnauthenticatedError("authorization metadata must be 'Bearer <api key>'")
                token = value[len(BEARER_PREFIX):].strip()
                break
        cn = self._common_name(context) if self._mtls else None
        if token is not None:
            principal = await self._ring.authenticate(token)
            if cn is not None:
                principal = replace(principal, name=f"{principal.name} (certificate {cn})", identity=f"cn:{cn}")
            return principal
        if cn is not None:
            return Principal(name=f"certificate {cn}", identity=f"cn:{cn}", scopes=self._cert_scopes,
                             queues=self._cert_queues)
        raise UnauthenticatedError("no credentials: send 'authorization: Bearer <api key>' "
                                   "(make one with `faultline keys create`)")

    @staticmethod
    def _common_name(context: grpc.aio.ServicerContext[Any, Any]) -> str | None:
        names = context.auth_context().get("x509_common_name") or ()
        for raw in names:
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
            if text:
                return text
        return None

    def _throttle(self, principal: Principal, jobs: int) -> None:
        burst = self._ring.burst_of(principal)
        if burst is None:
            return
        if jobs > burst:
            raise InvalidArgumentError("jobs", f"{jobs} jobs in one call is more than the burst ({burst}) of "
                                               f"{principal.name}: split the batch")
        wait_s = self._ring.throttle(principal, jobs)
        if wait_s > 0:
            raise RateLimitedError(
                f"{principal.name} is past its rate of {principal.rate_per_s:g} jobs/s (burst {burst}); "
                f"retry in {wait_s:.3f}s", retry_after=timedelta(seconds=wait_s))

    async def _until_revoked(self, work: Awaitable[Any], principal: Principal,
                             context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        """Run a stream's handler; end it UNAUTHENTICATED as soon as its key is revoked."""
        if principal.key_id is None:
            return await work
        key_id = principal.key_id
        revoked = self._ring.watch(key_id)
        inner = asyncio.ensure_future(work)
        waiter = asyncio.ensure_future(revoked.wait())
        try:
            await asyncio.wait({inner, waiter}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._ring.unwatch(key_id)
            waiter.cancel()
            if not inner.done():
                inner.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await inner
        if inner.done() and not inner.cancelled():
            return inner.result()  # the stream ended by itself (its exception, if any, goes on)
        AUTH_REFUSED.labels("UNAUTHENTICATED").inc()
        logger.info("stream ended: api key revoked", extra={"key_id": key_id, "principal": principal.identity})
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{principal.name} was revoked")
