"""One error hierarchy. Each error knows its HTTP status and a stable code, so one handler can render them all.

Messages say what was wrong and how to fix it; they never carry a stack trace to the user.
"""

from __future__ import annotations

from typing import ClassVar


class SlserveError(Exception):
    """Base of every error slserve raises on purpose."""

    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_dict(self) -> dict[str, str]:
        return {"error": self.message, "code": self.code}


# --- configuration and build -------------------------------------------------------------------------------


class SpecError(SlserveError):
    """A function.toml (or another spec) is invalid."""

    status = 400
    code = "invalid_spec"


class BuildError(SlserveError):
    """A function could not be turned into an artifact."""

    status = 500
    code = "build_failed"


class ArtifactNotFound(SlserveError):
    status = 404
    code = "artifact_not_found"


class ArtifactCorrupt(SlserveError):
    """A stored file does not match its checksum or size: it is never served."""

    status = 500
    code = "artifact_corrupt"


# --- requests ----------------------------------------------------------------------------------------------


class InvalidInput(SlserveError):
    """A request's tensors do not match the function's signature."""

    status = 400
    code = "invalid_input"


class ModelNotFound(SlserveError):
    status = 404
    code = "model_not_found"


class NotFound(SlserveError):
    """No such endpoint."""

    status = 404
    code = "not_found"


class InferenceFailed(SlserveError):
    """The model itself raised while computing; the request was well-formed."""

    status = 500
    code = "inference_failed"


class PoisonRequest(InferenceFailed):
    """The request crashed an instance, and crashed another when it was retried alone: it is not tried again."""

    code = "poison_request"


class RuntimeUnavailable(SlserveError):
    """The runtime a function needs is not installed or misconfigured on this host."""

    status = 503
    code = "runtime_unavailable"


class PayloadTooLarge(SlserveError):
    status = 413
    code = "payload_too_large"


class RetryLater(SlserveError):
    """The client should retry after `retry_after` seconds (sent as Retry-After)."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UploadsFull(RetryLater):
    """The gateway holds as many request bytes as its budget allows (`inflight_body_mb`); retry shortly."""

    status = 503
    code = "uploads_full"


class MemoryFull(RetryLater):
    """No instance of the function fits in the host's memory budget now (`memory_budget_mb`)."""

    status = 503
    code = "memory_budget"


class UploadTooSlow(SlserveError):
    """The body arrived slower than the gateway's minimum rate (`min_upload_kb_per_s`)."""

    status = 408
    code = "upload_too_slow"


class HeadTooLarge(SlserveError):
    """A request's line and headers are over the gateway's bound (`max_head_kb`)."""

    status = 431
    code = "head_too_large"


class HeadTooSlow(SlserveError):
    """A request's line and headers did not arrive within the gateway's bound (`head_timeout_s`)."""

    status = 408
    code = "head_too_slow"


class OverMemoryLimit(PayloadTooLarge):
    """The request took its instance over the function's memory limit, twice (the second time alone)."""

    code = "over_memory_limit"


class TooManyRequests(RetryLater):
    """429: the client should retry after `retry_after` seconds (sent as Retry-After)."""

    status = 429
    code = "too_many_requests"


class MethodNotAllowed(SlserveError):
    """The path exists; `allow` lists its methods (sent as Allow, as RFC 9110 asks)."""

    status = 405
    code = "method_not_allowed"

    def __init__(self, message: str, allow: str) -> None:
        super().__init__(message)
        self.allow = allow


class Overloaded(TooManyRequests):
    """The function's queue is full."""

    code = "overloaded"


class RateLimited(TooManyRequests):
    """The API key's request rate or concurrent-request limit is reached."""

    code = "rate_limited"


class QuotaExceeded(TooManyRequests):
    """The API key's monthly quota is used up; `retry_after` is the time until the next month."""

    code = "quota_exceeded"


class GatewayTimeout(SlserveError):
    status = 504
    code = "timeout"


class IdempotencyInProgress(SlserveError):
    """Another request with this Idempotency-Key is still running."""

    status = 409
    code = "idempotency_key_in_use"


class IdempotentAnswerNotKept(SlserveError):
    """The request with this Idempotency-Key was answered and charged, but its answer was too large to keep."""

    status = 409
    code = "idempotent_answer_not_kept"


class IdempotencyMismatch(SlserveError):
    """An Idempotency-Key was reused with a different request."""

    status = 422
    code = "idempotency_key_reused"


class LedgerUnavailable(SlserveError):
    """The billing record could not be made durable: the answer is withheld, the request is not charged."""

    status = 503
    code = "ledger_unavailable"


# --- callers -----------------------------------------------------------------------------------------------


class Unauthorized(SlserveError):
    """No key, a wrong key, or a revoked or expired one."""

    status = 401
    code = "unauthorized"


class Forbidden(SlserveError):
    """A valid key that does not open this model, tier or endpoint."""

    status = 403
    code = "forbidden"


class InstanceFailed(SlserveError):
    """A function instance died or failed twice while serving the request. `may_have_run`: no answer came in
    time, and the function may still be running it (a timed-out invocation), so running it again elsewhere
    (a tier's fallback) could run and cost it twice: it is not retried."""

    status = 502
    code = "instance_failed"

    def __init__(self, message: str, may_have_run: bool = False) -> None:
        super().__init__(message)
        self.may_have_run = may_have_run


class GatewayUnreachable(SlserveError):
    """The CLI found no gateway at the address it tried."""

    status = 503
    code = "unreachable"


class ShuttingDown(SlserveError):
    status = 503
    code = "shutting_down"


class ClientClosedRequest(SlserveError):
    """The client went away before its request's work started: the work was dropped (nginx's 499)."""

    status = 499
    code = "client_closed_request"


def error_from_wire(status: int, code: str, message: str) -> SlserveError:
    """Rebuild an error that crossed a process boundary as (status, code, message)."""
    for cls in _all_errors(SlserveError):
        if cls.code == code and cls.status == status:
            return cls(message)
    return InferenceFailed(message)


def _all_errors(cls: type[SlserveError]) -> list[type[SlserveError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out.extend(_all_errors(sub))
    return out


class EntityNotFound(SlserveError):
    """A feature lookup was given keys its table does not have (and the step declares no default)."""

    status = 404
    code = "entity_not_found"
