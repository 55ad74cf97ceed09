"""Pipelines: a model version whose answer is a small graph of other models' answers and built-in steps.

`functions/<name>/pipeline.toml` declares it (`spec`); `slserve build` checks it against its steps' signatures
and publishes it (`catalog`); the gateway routes to it like to any model version and runs its graph (`run`),
each model step through the router, so a step runs wherever its function is deployed.
"""
