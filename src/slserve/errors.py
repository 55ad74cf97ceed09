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
