#!/usr/bin/env bash
# One embedding over the Open Inference Protocol v2 (JSON), with curl. Against `make serve`:
#   bash samples/clients/curl.sh "serverless inference"
# SLSERVE_URL (default http://127.0.0.1:8080) and SLSERVE_API_KEY (default: the dev key in .slserve/state) choose
# the gateway and the key.
set -euo pipefail
url="${SLSERVE_URL:-http://127.0.0.1:8080}"
key="${SLSERVE_API_KEY:-$(cat .slserve/state/dev-key)}"
text="${1:-serverless inference}"
body=$(python3 -c 'import json, sys; print(json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [sys.argv[1]]}]}))' "$text")
# -f: a 4xx/5xx is an error here; the gateway's JSON error body says what was wrong.
curl -sS --fail-with-body "$url/v2/models/minilm/infer" \
  -H "Authorization: Bearer $key" -H "Content-Type: application/json" -d "$body"
echo
