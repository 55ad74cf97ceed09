"""No request can take a host's memory: rows per request are capped per function (413 before the queue, in
test_hostile_input), and an instance over `resources.memory_mb` is stopped by the gateway with an error that
names the limit, never left to the host's OOM killer; the requests beside it are answered."""

from __future__ import annotations

import asyncio

from tests.integration.server import Server
from tests.reliability.hazards import MEMORY_MB, fine, hog, post_together


def test_an_instance_over_its_memory_limit_is_stopped_and_the_request_refused(server: Server) -> None:
    assert server.post("/v2/models/hazards/infer", json=fine()).status_code == 200
    url = server.url + "/v2/models/hazards/infer"
    batch = [(fine(i / 10), server.auth) for i in range(5)] + [(hog(MEMORY_MB + 400, 2.0), server.auth)]
    responses = asyncio.run(post_together(url, batch))
    assert [r.status_code for r in responses[:5]] == [200] * 5, [r.text for r in responses]
    refused = responses[5]
    assert refused.status_code == 413 and refused.json()["code"] == "over_memory_limit", refused.text
    message = refused.json()["error"]
    assert f"{MEMORY_MB} MB" in message and "resources.memory_mb" in message
    log = server.log.read_text()
    assert f"over the function's limit of {MEMORY_MB} MB (resources.memory_mb)" in log
    assert server.post("/v2/models/hazards/infer", json=fine()).status_code == 200
