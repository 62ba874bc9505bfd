#!/usr/bin/env bash
# Issuance throughput of keyhost's proxy against the AIR Kit emulator, with no injected faults,
# and the latency the proxy adds over calling the emulator directly.
#
# Usage:
#   benches/issuance.sh
#   DURATION=20s CONNECTIONS=32 benches/issuance.sh
#
# It builds keyhost in release mode, starts the emulator (`keyhost airkit-emulator`, on-chain
# delay 0) and keyhost pointed at it, on loopback only, creates an API client, and runs oha:
#   (a) direct: POST /v1/credentials/issue-on-behalf on the emulator with one pre-minted
#       Partner JWT (the floor: what a caller without keyhost would pay per request);
#   (b) proxy:  POST /v1/credentials/issue-on-behalf on keyhost, which records the issuance in
#       SQLite (synchronous=FULL, so each record is on disk before AIR Kit is called), mints a
#       fresh JWT, calls the emulator, records the answer, and polls the status to ONCHAIN in
#       the background.
# Prints req/s and p50/p99 of both and the p99 the proxy adds. Needs cargo, curl, python3 and
# oha (installed with `cargo install oha --locked` when missing).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}
PUBLIC=127.0.0.1:19080
INTERNAL=127.0.0.1:19081
EMULATOR=127.0.0.1:19090
ADMIN=bench-admin-token-$RANDOM$RANDOM$RANDOM
export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin"

log() { printf '==> %s\n' "$*" >&2; }
command -v oha >/dev/null 2>&1 || cargo install oha --locked
cargo build --release --locked --quiet
BIN=target/release/keyhost

TMP=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$TMP"
}
trap cleanup EXIT INT TERM

wait_http() {
    for _ in $(seq 1 300); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "error: $1 did not answer" >&2
    exit 1
}

RUST_LOG=warn "$BIN" airkit-emulator --listen "$EMULATOR" \
    --jwks-url "http://$PUBLIC/.well-known/jwks.json" --partner-id bench-partner \
    --onchain-delay 0s >"$TMP/emulator.log" 2>&1 &
PIDS+=($!)

env KEYHOST_DATA_DIR="$TMP/data" KEYHOST_KEYS_DIR="$TMP/keys" \
    KEYHOST_PUBLIC_ADDR="$PUBLIC" KEYHOST_INTERNAL_ADDR="$INTERNAL" \
    KEYHOST_PARTNER_ID=bench-partner KEYHOST_ADMIN_TOKEN="$ADMIN" \
    KEYHOST_CLIENT_RATE_LIMIT=0 KEYHOST_AIRKIT_BASE_URL="http://$EMULATOR/v1" \
    KEYHOST_ISSUER_DID=did:air:id:test:bench KEYHOST_CREDENTIAL_ID=bench-program \
    RUST_LOG=warn "$BIN" serve >"$TMP/keyhost.log" 2>&1 &
PIDS+=($!)
wait_http "http://$PUBLIC/healthz"

API_KEY=$(curl -fsS -X POST "http://$INTERNAL/admin/clients" -H "Authorization: Bearer $ADMIN" \
    -H 'content-type: application/json' -d '{"name":"bench","scopes":["issue"]}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["apiKey"])')
JWT=$(curl -fsS -X POST "http://$INTERNAL/v1/tokens" -H "Authorization: Bearer $API_KEY" \
    -H 'content-type: application/json' -d '{"email":"bench@example.com"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
SUBJECT='{"kycVerified":true,"kycLevel":"basic"}'

run() { # run NAME URL HEADER BODY
    log "$1 for $DURATION with $CONNECTIONS connections"
    oha -z "$DURATION" -c "$CONNECTIONS" --no-tui --output-format json \
        --wait-ongoing-requests-after-deadline -m POST -H "$3" \
        -H 'content-type: application/json' -d "$4" "$2" >"$TMP/$1.json"
    python3 - "$TMP/$1.json" <<'PY' >"$TMP/$1.result"
import json, sys
r = json.load(open(sys.argv[1]))
p = r.get("latencyPercentiles", {})
codes = {int(k): v for k, v in r.get("statusCodeDistribution", {}).items()}
bad = sum(v for k, v in codes.items() if not 200 <= k < 300) + sum(r.get("errorDistribution", {}).values())
print(f'{r["summary"]["requestsPerSec"]:.1f} {p["p50"]*1000:.2f} {p["p99"]*1000:.2f} {bad}')
PY
}

run direct "http://$EMULATOR/v1/credentials/issue-on-behalf" "x-partner-auth: $JWT" \
    "{\"issuerDid\":\"did:air:id:test:bench\",\"credentialId\":\"bench-program\",\"credentialSubject\":$SUBJECT}"
run proxy "http://$INTERNAL/v1/credentials/issue-on-behalf" "Authorization: Bearer $API_KEY" \
    "{\"email\":\"bench@example.com\",\"credentialSubject\":$SUBJECT}"

read -r D_RPS D_P50 D_P99 D_BAD <"$TMP/direct.result"
read -r P_RPS P_P50 P_P99 P_BAD <"$TMP/proxy.result"
ONCHAIN=$(curl -fsS "http://$INTERNAL/admin/issuances?state=onchain&limit=1000" -H "Authorization: Bearer $ADMIN" |
    python3 -c 'import json,sys; print(len(json.load(sys.stdin)["issuances"]))')
printf '\n| path | issuances/s | p50 ms | p99 ms | non-2xx |\n|---|---:|---:|---:|---:|\n'
printf '| emulator directly | %s | %s | %s | %s |\n' "$D_RPS" "$D_P50" "$D_P99" "$D_BAD"
printf '| through keyhost | %s | %s | %s | %s |\n' "$P_RPS" "$P_P50" "$P_P99" "$P_BAD"
python3 -c "print(f'\nkeyhost adds {float(\"$P_P99\") - float(\"$D_P99\"):.2f} ms at p99 and {float(\"$P_P50\") - float(\"$D_P50\"):.2f} ms at p50; ')"
echo "issuances on chain when the run ended (first 1000 counted): $ONCHAIN"
