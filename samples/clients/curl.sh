#!/usr/bin/env bash
# One embedding over the Open Inference Protocol v2 (JSON), with curl. Against `make serve`:
#   bash samples/clients/curl.sh "serverless inference"
# The gateway and the key are found as the CLI finds them (connect.py): SLSERVE_URL, else the address the running
# gateway recorded in .slserve/state; SLSERVE_API_KEY, else the dev key.
set -euo pipefail
here="$(dirname "$0")"
url="$(PYTHONPATH="$here" python3 -c 'from connect import gateway_url; print(gateway_url())')"
key="$(PYTHONPATH="$here" python3 -c 'from connect import api_key; print(api_key())')"
text="${1:-serverless inference}"
body=$(python3 -c 'import json, sys; print(json.dumps({"inputs": [{"name": "text", "datatype": "BYTES", "shape": [1], "data": [sys.argv[1]]}]}))' "$text")
# -f: a 4xx/5xx is an error here; the gateway's JSON error body says what was wrong.
curl -sS --fail-with-body "$url/v2/models/minilm/infer" \
  -H "Authorization: Bearer $key" -H "Content-Type: application/json" -d "$body"
echo
