"""What the commands share: the consoles, the options every command group takes, and the way to the running
gateway."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from slserve.errors import GatewayUnreachable, SlserveError, error_from_wire
from slserve.terminal import make_console

console = make_console()
err_console = make_console(stderr=True)

FunctionsDir = Annotated[
    Path, typer.Option("--functions", envvar="SLSERVE_FUNCTIONS", help="Folder with one folder per function")
]
ArtifactsDir = Annotated[
    Path, typer.Option("--artifacts", envvar="SLSERVE_ARTIFACTS", help="Artifact store (blobs, refs, builds)")
]
GatewayUrl = Annotated[
    str | None,
    typer.Option(envvar="SLSERVE_URL", help="Gateway address (default: the one serving --state, else :8080)"),
]
ApiKey = Annotated[
    str | None, typer.Option("--key", envvar="SLSERVE_API_KEY", help="An admin API key (default: the dev key)")
]
StateDir = Annotated[
    Path, typer.Option("--state", envvar="SLSERVE_STATE", help="Keys, ledger and server secret folder")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print the raw JSON")]
DEFAULT_URL = "http://127.0.0.1:8080"
DEFAULT_FUNCTIONS = Path("functions")
DEFAULT_ARTIFACTS = Path(".slserve/artifacts")


def get_json(path: str, url: str | None, key: str | None, state: Path, post: Any = None) -> Any:
    """GET `path` (POST `post` as JSON, when given) from the gateway at `url`, else the one that recorded itself
    in `state`, else the default."""
    import urllib.error
    import urllib.request

    from slserve.gateway import address

    found = url or address.find(state)
    base = (found or DEFAULT_URL).rstrip("/")
    if key is None:
        key = dev_key(state)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    data = None if post is None else json.dumps(post).encode()
    request = urllib.request.Request(base + path, data=data, headers=headers, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as e:
        try:
            doc = json.loads(e.read())
            said = error_from_wire(e.code, doc["code"], doc["error"])  # labelled with the gateway's own code
        except (ValueError, KeyError, TypeError):
            said = SlserveError(str(e))
        raise type(said)(f"the gateway at {base} said {e.code}: {said.message}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        how = "given by --url or SLSERVE_URL" if url else "recorded in " + str(state) if found else "the default"
        raise GatewayUnreachable(
            f"no gateway answers at {base} ({how}): {reason}; start one with `slserve serve`, or pass --url "
            f"(or --state, to find the one serving that folder)"
        ) from None


def dev_key(state: Path) -> str:
    path = state / "dev-key"
    return path.read_text().strip() if path.is_file() else ""
