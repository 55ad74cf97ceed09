"""The AWS deployment as one CDK stack, synthesized from a `DeployPlan` (what `slserve deploy aws` packaged).

    HTTP API ──► router function (slserve's gateway) ──invoke alias `live`──► one Lambda per model function
                     │                                                     (zip + SnapStart, or an image, or
                     ├── DynamoDB: keys, ledger, responses                   provisioned concurrency)
                     └── Secrets Manager: the API keys' HMAC key
    S3: the artifacts, content-addressed (versioned, encrypted): the record of what was deployed; each model
        function carries its own artifact in its zip or image and reads nothing from S3

Each part is made by the module of its feature, in the stack's own scope (so no logical ID depends on the
module layout): `storage` (bucket, tables, key secret), `alarms`, `lambdas` (model functions and the router,
least privilege), `apis` (HTTP or REST with a WAF); `plan` is what the deploy packaged, `nag` the cdk-nag
findings acknowledged with their reasons.
"""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from constructs import Construct

from slserve.aws import storage
from slserve.aws.alarms import Alarms
from slserve.aws.apis import http_api, rest_api
from slserve.aws.lambdas import model_function, router_function
from slserve.aws.plan import DeployPlan
from slserve.aws.schema import TABLES


class SlserveStack(cdk.Stack):
    def __init__(self, scope: Construct, construct_id: str, plan: DeployPlan, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.plan = plan
        self.bucket = storage.artifacts_bucket(self)
        self.tables = {t.name: storage.table(self, plan, t) for t in TABLES}
        self.secret = storage.key_secret(self, plan)
        self.alarms = Alarms(self, plan)
        self.aliases = {f.name: model_function(self, plan, f, self.alarms) for f in plan.functions}
        self.router = router_function(self, plan, self.tables, self.secret, self.aliases, self.alarms)
        if plan.api == "rest":
            rest_api(self, plan, self.router, self.bucket, self.alarms)
        else:
            http_api(self, plan, self.router, self.bucket, self.alarms)
