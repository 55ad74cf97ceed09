"""The small things a paying tenant or a prober meets first: honest error codes, trimmed keys, money behind a
key, 404s that name only what the key opens, texts longer than the model refused or truncated on request, and a
state folder that only its owner can read."""

from __future__ import annotations

import json
import socket
import stat

import httpx
from tests.integration.server import Server
from tests.reliability.hazards import bearer, fine, texts

from slserve.accounts.keys import new_key

LONG = "serverless inference scales to zero " * 80  # far over 256 tokens


def test_unknown_routes_and_methods_have_their_own_codes(server: Server) -> None:
    r = server.get("/v2/nothing/here")
    assert r.status_code == 404 and r.json()["code"] == "not_found", r.text
    r = httpx.delete(server.url + "/v2/models", headers=server.auth)
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed", r.text
    r = server.get("/v2/models/nope/infer")
    assert r.status_code == 405


def test_a_browser_s_icon_request_is_no_error(server: Server) -> None:
    r = httpx.get(server.url + "/favicon.ico")  # no key: every page load asks for it
    assert r.status_code == 204 and not r.content


def raw_post(server: Server, path: str, header_lines: list[str], body: bytes) -> int:
    """The status of a request written byte for byte (an HTTP client library would tidy its headers)."""
    host, port = server.url.removeprefix("http://").split(":")
    head = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {len(body)}", *header_lines, "", ""]
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall("\r\n".join(head).encode() + body)
        return int(sock.recv(65536).split(b" ", 2)[1])


def test_x_api_key_is_trimmed_as_bearer_is(server: Server) -> None:
    body = json.dumps(fine()).encode()
    for padded in (
        f"x-api-key: {server.key} \t ",
        f"x-api-key:\t {server.key}",
        f"Authorization: Bearer  {server.key} ",
    ):
        assert raw_post(server, "/v2/models/hazards/infer", [padded], body) == 200, padded


def test_a_month_out_of_range_is_a_400(server: Server) -> None:
    for month in ("0000-01", "9999-12", "2026-00", "1969-12", "x"):
        r = server.get(f"/v1/usage?month={month}")
        assert r.status_code == 400 and "2026-11" in r.json()["error"]["message"], (month, r.text)
    assert server.get("/v1/usage?month=2026-11").status_code == 200


def test_money_is_behind_an_admin_key(server: Server) -> None:
    assert server.post("/v2/models/hazards/infer", json=fine()).status_code == 200
    public = httpx.get(server.url + "/metrics")
    assert public.status_code == 200 and "slserve_requests_total" in public.text
    assert "charged" not in public.text
    assert "slserve_charged_micros_total" in server.get("/metrics").text
    tenant = server.keys().create(new_key("curious"))
    assert httpx.get(server.url + "/metrics", headers=bearer(tenant)).status_code == 403


def test_a_404_names_only_models_the_key_opens(server: Server) -> None:
    key = server.keys().create(new_key("narrow", models=("words",)))
    r = httpx.post(server.url + "/v2/models/nope/infer", json=fine(), headers=bearer(key))
    assert r.status_code == 404 and "words" in r.json()["error"], r.text
    assert "hazards" not in r.json()["error"] and "fragile" not in r.json()["error"]
    r = httpx.post(server.url + "/v2/models/hazards/infer", json=fine(), headers=bearer(key))
    assert r.status_code == 403 and "fragile" not in r.json()["error"]
    r = httpx.post(server.url + "/v1/embeddings", json={"model": "nope", "input": "a"}, headers=bearer(key))
    assert r.status_code == 404 and "hazards" not in r.text


def test_text_over_the_model_limit_is_refused_unless_truncation_is_asked_for(server: Server) -> None:
    r = server.post("/v2/models/words/infer", json=texts("short", LONG))
    assert r.status_code == 400 and "256 tokens" in r.json()["error"] and "truncate" in r.json()["error"], r.text
    ok = server.post("/v2/models/words/infer", json={**texts("short", LONG), "parameters": {"truncate": True}})
    assert ok.status_code == 200 and ok.headers["x-slserve-truncated"] == "1"
    plain = server.post("/v2/models/words/infer", json=texts("short"))
    assert "x-slserve-truncated" not in plain.headers
    oa = server.post("/v1/embeddings", json={"model": "words", "input": [LONG]})
    assert oa.status_code == 400 and "256 tokens" in oa.json()["error"]["message"]
    oa = server.post("/v1/embeddings", json={"model": "words", "input": [LONG], "truncate": True})
    assert oa.status_code == 200 and oa.headers["x-slserve-truncated"] == "1"


def test_the_state_folder_is_its_owners_alone(server: Server) -> None:
    assert server.post("/v2/models/hazards/infer", json=fine()).status_code == 200  # the ledger exists
    assert stat.S_IMODE(server.state.stat().st_mode) == 0o700
    files = ["keys.sqlite", "ledger.sqlite", "server-secret", "ledger.sqlite-wal", "keys.sqlite-wal"]
    for name in files:
        path = server.state / name
        assert path.exists(), name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, (name, oct(path.stat().st_mode))
