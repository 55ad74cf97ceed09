"""A request must never cost another its answer or kill an instance: empty batches are refused up front, an
exception in processor or model code fails only the request that raised it, and a request that crashes its
process is retried once alone and then refused (poison), while the requests that shared its batch are answered."""

from __future__ import annotations

import asyncio

from tests.integration.server import Server
from tests.integration.test_platform import wait_for
from tests.reliability.hazards import (
    crashing,
    fine,
    ledger_rows,
    model_bug,
    post_together,
    processor_bug,
    texts,
)


def pids(server: Server, function: str) -> set[int]:
    return {i["pid"] for i in server.status(function)["instances"] if i["state"] in ("idle", "busy")}


def crash_lines(server: Server) -> list[str]:
    """The gateway's log lines for instances that died as CRASH makes them (exit code 3)."""
    lines = server.log.read_text().splitlines()
    return [line for line in lines if "instance hazards" in line and "ended (exit code 3)" in line]


def test_an_empty_batch_is_refused_before_any_instance_sees_it(server: Server) -> None:
    assert server.post("/v2/models/words/infer", json=texts("warm")).status_code == 200
    before = pids(server, "words")
    empty_text = {"inputs": [{"name": "text", "datatype": "BYTES", "shape": [0], "data": []}]}
    empty_rows = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [0, 16], "data": []}]}
    for path, body in [("/v2/models/words/infer", empty_text), ("/v2/models/hazards/infer", empty_rows)] * 3:
        r = server.post(path, json=body)
        assert r.status_code == 400 and "no rows" in r.json()["error"], r.text
    assert server.post("/v2/models/words/infer", json=texts("still here")).status_code == 200
    assert pids(server, "words") == before


def test_exceptions_in_processor_and_model_code_fail_only_their_own_request(server: Server) -> None:
    assert server.post("/v2/models/hazards/infer", json=fine()).status_code == 200
    before = pids(server, "hazards")
    url = server.url + "/v2/models/hazards/infer"
    batch = [(fine(i / 10), server.auth) for i in range(6)] + [
        (processor_bug(), server.auth),
        (model_bug(), server.auth),
    ]
    responses = asyncio.run(post_together(url, batch))
    assert [r.status_code for r in responses[:6]] == [200] * 6, [r.text for r in responses]
    processor, model = responses[6], responses[7]
    assert processor.status_code == 500 and "IndexError" in processor.json()["error"], processor.text
    assert model.status_code == 500 and "ValueError" in model.json()["error"], model.text
    # An answer never depends on its batch mates: the fine rows equal their answers alone.
    alone = server.post("/v2/models/hazards/infer", json=fine(0.3)).json()
    assert responses[3].json()["outputs"] == alone["outputs"]
    assert before <= pids(server, "hazards")  # nobody died (the load may have started another)


def test_a_crashing_request_is_refused_after_two_crashes_and_its_batch_mates_are_answered(server: Server) -> None:
    assert server.post("/v2/models/hazards/infer", json=fine()).status_code == 200
    crashes_before = len(crash_lines(server))
    url = server.url + "/v2/models/hazards/infer"
    batch = [(fine(i / 10), server.auth) for i in range(6)] + [(crashing(), server.auth)]
    responses = asyncio.run(post_together(url, batch))
    assert [r.status_code for r in responses[:6]] == [200] * 6, [r.text for r in responses]
    poison = responses[6]
    assert poison.status_code == 500 and poison.json()["code"] == "poison_request", poison.text
    assert "crashed" in poison.json()["error"] and "not retried again" in poison.json()["error"]
    # Two crashes: the batch it came in, then its retry alone; not one more (no tier fallback for poison).
    assert wait_for(lambda: len(crash_lines(server)) >= crashes_before + 2, timeout=10), crash_lines(server)
    assert len(crash_lines(server)) == crashes_before + 2, crash_lines(server)[crashes_before:]
    (row,) = ledger_rows(server.state, "request_id = ?", poison.headers["x-request-id"])
    assert row[1:3] == (500, 0)
    assert server.post("/v2/models/hazards/infer", json=fine()).status_code == 200  # and it serves on
    # The same input again is refused at once: it costs no instance (a tenant cannot keep a function cold).
    again = server.post("/v2/models/hazards/infer", json=crashing())
    assert again.status_code == 500 and "refused again without running it" in again.json()["error"], again.text
    assert len(crash_lines(server)) == crashes_before + 2
