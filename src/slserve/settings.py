"""Server settings. Precedence: command-line flag > SLSERVE_* environment > config file > default."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

from slserve.errors import SpecError

DEFAULT_CONFIG = Path("slserve.toml")


DEFAULT_STATE = Path(".slserve/state")
DEFAULT_ROUTES = Path(".slserve/routes.toml")  # local state, not the repository's: `slserve route` edits it


class ServeSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SLSERVE_", extra="forbid")

    host: str = Field("127.0.0.1", description="Interface to listen on (loopback by default)")
    port: Annotated[int, Field(ge=0, le=65535)] = Field(8080, description="TCP port; 0 picks a free one")
    functions: Path = Field(Path("functions"), description="Folder with one folder per function")
    artifacts: Path = Field(Path(".slserve/artifacts"), description="Artifact store")
    routes: Path = Field(DEFAULT_ROUTES, description="Versions, aliases and tiers (reloaded when it changes)")
    state: Path = Field(DEFAULT_STATE, description="API keys, the ledger, the server secret and its address")
    max_body_mb: Annotated[float, Field(gt=0)] = Field(
        64.0, description="Largest request body accepted (413 above); each function's own limit is lower"
    )
    inflight_body_mb: Annotated[float, Field(gt=0)] = Field(
        256.0, description="Request bodies all requests in flight may hold together (503 + Retry-After above)"
    )
    inflight_body_share: Annotated[float, Field(gt=0, le=1)] = Field(
        0.25, description="The most of inflight_body_mb one tenant's requests may hold (503 + Retry-After above)"
    )
    min_upload_kb_per_s: Annotated[float, Field(gt=0)] = Field(
        64.0, description="A body arriving slower than this (after upload_grace_s) is cut with 408"
    )
    upload_grace_s: Annotated[float, Field(gt=0)] = Field(
        2.0, description="How long a body may take before min_upload_kb_per_s applies"
    )
    max_head_kb: Annotated[int, Field(gt=0)] = Field(
        32, description="A request's line and headers together; a longer head is refused with 431"
    )
    head_timeout_s: Annotated[float, Field(gt=0)] = Field(
        10.0, description="How long a request's line and headers may take to arrive (408 after)"
    )
    max_tensor_elements: Annotated[int, Field(gt=0)] = Field(
        16 * 1024 * 1024, description="Most elements (all inputs together) one request may carry (413 above)"
    )
    request_timeout_s: Annotated[float, Field(gt=0)] = Field(
        60.0, description="Longest a request may wait and run before a 504"
    )
    metering: bool = Field(
        True, description="Write the ledger (off only to measure its cost: nothing billed, no replays)"
    )
    bill_abandoned: bool = Field(
        False,
        description="Charge a request whose client went away after its model call began (recorded with status "
        "499 either way; work not yet begun is dropped and never charged)",
    )
    idempotency_retention_s: Annotated[float, Field(gt=0)] = Field(
        24 * 3600.0, description="How long an Idempotency-Key's stored answer is replayed (then pruned)"
    )
    public_metrics: bool = Field(
        True,
        description="GET /metrics without a key (money is left out unless an admin key is sent); false: an admin "
        "key is needed for /metrics at all",
    )
    keep_alive_s: Annotated[float, Field(gt=0)] = Field(
        75.0,
        description="How long an idle client connection is kept open: longer than clients' own pool expiry, so "
        "the server never closes a connection a client is about to reuse",
    )
    currency: str = Field("USD", description="What prices' micro-units are millionths of")
    log_format: Literal["json", "text"] = Field("json", description="Gateway logs: JSON lines or plain text")
    drain_seconds: Annotated[float, Field(ge=0)] = Field(30.0, description="Graceful shutdown: time to finish work")
    workers: Annotated[int, Field(ge=1)] = Field(
        1,
        description="Front processes on the port (SO_REUSEPORT; HTTP, keys, decoding, routing, metering), beside "
        "one platform process that runs the functions for all of them; 1: the gateway and platform in one process",
    )
    cores: Annotated[int | None, Field(ge=1)] = Field(
        None,
        description="Cores the local functions' model calls share (default: this host's). A call alone on the "
        "host may use the idle ones where its build proved more threads exact; 1 keeps every call on its own",
    )
    memory_budget_mb: Annotated[float | None, Field(gt=0)] = Field(
        None,
        description="Memory the gateway, templates and local instances may hold together (PSS); an instance that "
        "would pass it makes room by stopping idle ones, or waits (503 after 5 s). Default: the host's memory (or "
        "its cgroup's memory.max) less a tenth",
    )
    keep_alive: Literal["learned", "fixed"] = Field(
        "learned",
        description="learned: where memory is wanted, idle instances past the keep-alive their idle gaps chose go "
        "first, then those cheapest to lose (Greedy-Dual-Size-Frequency), and instances are pre-warmed ahead of "
        "predicted calls; fixed: each stays idle_seconds and the longest idle goes first (to compare)",
    )
    drift: bool = Field(True, description="Profile every model version's traffic for drift (off: no statistics)")
    drift_window_s: Annotated[float, Field(gt=0)] = Field(
        300.0, description="The live window each version's drift is measured over (it slides in tenths)"
    )
    drift_min_rows: Annotated[int, Field(ge=1)] = Field(
        100, description="Rows a window needs before it is scored (fewer would measure noise)"
    )
    drift_psi: Annotated[float, Field(gt=0)] = Field(
        0.25, description="Drift threshold for histograms (PSI: text lengths, classes, embedding norms)"
    )
    drift_mean_shift: Annotated[float, Field(gt=0)] = Field(
        0.5, description="Drift threshold for numeric features: the largest mean shift, in reference std units"
    )
    drift_centroid_cosine: Annotated[float, Field(gt=0)] = Field(
        0.05, description="Drift threshold for embeddings: 1 - cosine of the reference's and the window's centroid"
    )
    log_level: str = Field("info", description="uvicorn log level")
    aws_prefix: str = Field("slserve", description="Lambda functions of the `aws` target are named PREFIX-FUNCTION")
    aws_region: str | None = Field(None, description="Region of the `aws` target (else boto3's own configuration)")
    aws_endpoint_url: str | None = Field(None, description="Lambda endpoint of the `aws` target (tests, local peers)")
    modal_url: str | None = Field(
        None,
        description="Endpoints of the `modal` target, `{label}` where each function's label goes "
        "(`slserve deploy modal` prints it, e.g. https://WORKSPACE--{label}.modal.run)",
    )
    modal_secret: SecretStr | None = Field(None, description="The Bearer secret the `modal` target's endpoints expect")
    modal_prefix: str = Field("slserve", description="Modal endpoints' labels are PREFIX-FUNCTION")

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        config = Path(os.environ.get("SLSERVE_CONFIG", DEFAULT_CONFIG))
        return init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file=config)

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    @property
    def inflight_body_bytes(self) -> int:
        return int(self.inflight_body_mb * 1024 * 1024)


def load_settings(**flags: Any) -> ServeSettings:
    """Settings from flags that were given (None = not given), the environment and the config file."""
    try:
        return ServeSettings(**{k: v for k, v in flags.items() if v is not None})
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        raise SpecError(
            f"invalid server settings ({problems}); check the flags, SLSERVE_* variables and the config file"
        ) from None
