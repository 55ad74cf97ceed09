"""What a deployment on AWS costs: per million requests of each function, and per month whatever the traffic,
from list prices (us-east-1, x86) and the function's compute measured once per build (`remote.costs`).

Per request: the model function's and the router's Lambda time and requests, the API (HTTP API, or REST API and
the WAF in front of it), the ledger record in DynamoDB (one write unit for the item and one for each of its two
indexes), the logs both functions write to CloudWatch, and, for SnapStart functions, a restore per cold start.
Per month: each SnapStart function's snapshot cache, the secrets, the alarm topic's key, the alarms, the WAF's
web ACL and rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from slserve.aws.plan import FunctionPlan, lambda_memory_mb
from slserve.aws.schema import LEDGER

# List prices, us-east-1 (2026-11), US dollars.
LAMBDA_GB_S = 0.0000166667
LAMBDA_REQUEST = 0.20 / 1e6
API_REQUEST = {"http": 1.00 / 1e6, "rest": 3.50 / 1e6}
WAF_REQUEST = 0.60 / 1e6
WAF_MONTH = 5.00 + 1.00  # a web ACL and its one rule
DYNAMODB_WRITE = 1.25 / 1e6  # on-demand, per write request unit (an item up to 1 KB)
LEDGER_WRITES = 1 + len(LEDGER.indexes)  # the record, and its copy in each global secondary index
LOGS_GB = 0.50  # CloudWatch Logs ingestion
# What one request writes to CloudWatch Logs: the router's JSON line (~450 B) and the model function's handler
# line (~350 B) and Lambda's START, END and REPORT lines for both functions (~2 x 300 B).
LOG_BYTES_PER_REQUEST = 1400
SNAPSTART_CACHE_GB_S = 0.0000015046  # per GB of memory, for every second a published version is cached
SNAPSTART_RESTORE_GB = 0.0001397998  # per GB restored, at each cold start
SECRET_MONTH = 0.40
KMS_KEY_MONTH = 1.00
ALARM_MONTH = 0.10  # a standard-resolution alarm metric
MONTH_S = 30 * 86400
ROUTER_MB = 1024
ROUTER_OVERHEAD_MS = 15.0  # the router's own work per request, beside waiting for the model function


@dataclass(frozen=True)
class Estimate:
    function: str
    tier: str
    memory_mb: int
    compute_ms: float
    aws_per_million: float  # US dollars: both functions, the API (and WAF), the ledger's writes, the logs
    restore_per_cold_start: float  # US dollars (SnapStart functions; 0 otherwise)
    snapstart_per_month: float  # US dollars: its snapshot cache, whatever the traffic
    charged_per_million: float  # what the tier's prices charge a million such requests (currency units)


def estimate(
    plan: FunctionPlan, compute_ms: float, charged_per_million: float, api: Literal["http", "rest"] = "http"
) -> Estimate:
    memory_mb = lambda_memory_mb(plan.spec)
    model_s = max(1.0, compute_ms) / 1000
    router_s = model_s + ROUTER_OVERHEAD_MS / 1000  # the router waits for the model function
    per_request = (
        LAMBDA_GB_S * (memory_mb / 1024 * model_s + ROUTER_MB / 1024 * router_s)
        + 2 * LAMBDA_REQUEST
        + API_REQUEST[api]
        + (WAF_REQUEST if api == "rest" else 0.0)
        + LEDGER_WRITES * DYNAMODB_WRITE
        + LOGS_GB * LOG_BYTES_PER_REQUEST / 2**30
    )
    snapstart = plan.start()[0] == "snapstart"
    gb = memory_mb / 1024
    return Estimate(
        plan.name,
        plan.spec.tier,
        memory_mb,
        compute_ms,
        1e6 * per_request,
        SNAPSTART_RESTORE_GB * gb if snapstart else 0.0,
        SNAPSTART_CACHE_GB_S * gb * MONTH_S if snapstart else 0.0,
        charged_per_million,
    )


def fixed_per_month(estimates: list[Estimate], api: Literal["http", "rest"], alarms: int, modal: bool) -> float:
    """What the deployment costs each month with no traffic at all."""
    secrets = 2 if modal else 1  # the API keys' HMAC key, and the Modal endpoints' secret
    waf = WAF_MONTH if api == "rest" else 0.0
    snapshots = sum(e.snapstart_per_month for e in estimates)
    return secrets * SECRET_MONTH + KMS_KEY_MONTH + alarms * ALARM_MONTH + waf + snapshots
