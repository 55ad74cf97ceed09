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


class InferenceFailed(SlserveError):
    """The model itself raised while computing; the request was well-formed."""

    status = 500
    code = "inference_failed"


class RuntimeUnavailable(SlserveError):
    """The runtime a function needs is not installed or misconfigured on this host."""

    status = 503
    code = "runtime_unavailable"


class PayloadTooLarge(SlserveError):
    status = 413
    code = "payload_too_large"


class Overloaded(SlserveError):
    """The function's queue is full: the client should retry after `retry_after` seconds."""

    status = 429
    code = "overloaded"

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InstanceFailed(SlserveError):
    """A function instance died or failed twice while serving the request."""

    status = 502
    code = "instance_failed"


class ShuttingDown(SlserveError):
    status = 503
    code = "shutting_down"


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
