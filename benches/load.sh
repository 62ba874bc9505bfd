#!/usr/bin/env bash
# Load test of keyhost with a real HTTP load generator.
#
# Usage:
#   benches/load.sh
#   ROUNDS=9 DURATION=10s CONNECTIONS=100 benches/load.sh
#
#   ROUNDS       how many times the whole set of scenarios is repeated (default 5)
#   DURATION     length of each scenario in each round (default 5s; a bare number means seconds)
#   CONNECTIONS  concurrent connections per scenario (default 50)
#   LOADGEN_POLICY
#                scheduling policy of the load generator: `batch` (default) runs it under
#                SCHED_BATCH (`chrt --batch 0`), `normal` as an ordinary task; see below
#   Other KEYHOST_* variables in the environment are passed to the server unchanged.
#   The per-client rate limit is lifted for the run (KEYHOST_CLIENT_RATE_LIMIT=0) unless
#   KEYHOST_CLIENT_RATE_LIMIT is set.
#
# What it does: builds keyhost in release mode, starts it with a throw-away data and keys
# directory on loopback (public 127.0.0.1:18080, internal 127.0.0.1:18081), creates an API
# client, copies the JWKS into a file served by nginx on 127.0.0.1:18090 (identical bytes),
# then, in each round, measures
#   (a) nginx serving the JWKS as a static file (the reference ceiling),
#   (b) keyhost GET /.well-known/jwks.json,
#   (c) keyhost POST /v1/tokens, ES256 (default algorithm),
#   (d) keyhost POST /v1/tokens, RS256,
#   (e) (c) again with the load generator under the other scheduling policy,
# and `openssl speed -multi 2` for the raw signing rate of this machine. It prints the
# median of each figure over the rounds, the JWKS rate relative to nginx and the mint rates
# relative to the composite ceiling 1/(1/R_jwks + 1/R_sign) (each ratio is computed within
# a round, from figures taken minutes apart at most, and the median of the rounds is
# reported), and keyhost's resident memory before and after load.
#
# Why rounds: on a virtual machine with noisy neighbours the speed of the same scenario drifts by 20-30 %
# within minutes. Interleaving the scenarios and taking medians keeps that drift out of the
# ratios.
#
# Why SCHED_BATCH: the load generator, nginx and keyhost share the same cores. When the
# server is the bottleneck (minting), every response wakes a sleeping load-generator thread,
# which by default preempts the server mid-request; the server then spends as much time in
# context switches as in signing. A SCHED_BATCH task keeps its fair share of CPU but does not
# preempt on wakeup, which is the closest one machine gets to a load generator on another
# host. Row (e) shows the same scenario with the other policy, so the effect is visible in
# every run. Compare rows with each other, not with figures from other machines.
#
# Requirements: cargo, curl, python3; openssl and chrt (util-linux) are optional. Missing
# tools are installed: oha with `cargo install oha --locked` (falls back to wrk from apt),
# nginx from apt. Installing from apt needs root (or sudo). Note that on a host running
# systemd, installing the nginx package also starts the system nginx service on port 80.
#
# Everything stays on loopback, every run stops by itself, and the server, nginx and the
# temporary directory are removed on exit.
set -euo pipefail

cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-50}
LOADGEN_POLICY=${LOADGEN_POLICY:-batch}
if [[ "$DURATION" =~ ^[0-9]+$ ]]; then
    DURATION="${DURATION}s"
fi
if ! [[ "$CONNECTIONS" =~ ^[1-9][0-9]*$ ]]; then
    echo "CONNECTIONS must be a positive integer, got '$CONNECTIONS'" >&2
    exit 2
fi
if ! [[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]]; then
    echo "ROUNDS must be a positive integer, got '$ROUNDS'" >&2
    exit 2
fi
case "$LOADGEN_POLICY" in
    batch) OTHER_POLICY="normal" ;;
    normal) OTHER_POLICY="batch" ;;
    *)
        echo "LOADGEN_POLICY must be batch or normal, got '$LOADGEN_POLICY'" >&2
        exit 2
        ;;
esac

PUBLIC_ADDR=127.0.0.1:18080
INTERNAL_ADDR=127.0.0.1:18081
NGINX_ADDR=127.0.0.1:18090
PUBLIC_URL="http://$PUBLIC_ADDR"
INTERNAL_URL="http://$INTERNAL_ADDR"
NGINX_URL="http://$NGINX_ADDR"
JWKS_PATH=/.well-known/jwks.json

export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin:/usr/sbin:/sbin"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------
APT_UPDATED=0
apt_install() {
    local sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "installing $* needs root (or sudo)"
        sudo=(sudo)
    fi
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* by hand"
    if [ "$APT_UPDATED" -eq 0 ]; then
        log "apt-get update"
        "${sudo[@]}" apt-get update -qq
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

for tool in cargo curl python3; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done

LOADGEN=
if command -v oha >/dev/null 2>&1; then
    LOADGEN=oha
else
    log "oha not found: cargo install oha --locked"
    if cargo install oha --locked && command -v oha >/dev/null 2>&1; then
        LOADGEN=oha
    else
        log "oha could not be installed; falling back to wrk"
        command -v wrk >/dev/null 2>&1 || apt_install wrk
        LOADGEN=wrk
    fi
fi

if ! command -v nginx >/dev/null 2>&1; then
    apt_install nginx-light || apt_install nginx
fi
command -v nginx >/dev/null 2>&1 || die "nginx is not available"

# SCHED_BATCH needs chrt and a kernel that allows it (any Linux does for an unprivileged task).
if ! chrt --batch 0 true >/dev/null 2>&1; then
    log "chrt --batch is not available: the load generator runs as an ordinary task only"
    LOADGEN_POLICY=normal
    OTHER_POLICY=
fi

# oha changed its JSON switch over time: `--output-format json` in newer releases, `-j` before.
# Requests still in flight at the deadline are awaited (when supported) rather than counted
# as errors.
OHA_FLAGS=()
if [ "$LOADGEN" = oha ]; then
    OHA_HELP=$(oha --help 2>&1 || true)
    if grep -q -- '--output-format' <<<"$OHA_HELP"; then
        OHA_FLAGS=(--output-format json)
    else
        OHA_FLAGS=(-j)
    fi
    if grep -q -- '--wait-ongoing-requests-after-deadline' <<<"$OHA_HELP"; then
        OHA_FLAGS+=(--wait-ongoing-requests-after-deadline)
    fi
    log "load generator: $(oha --version 2>/dev/null | head -n1) (${OHA_FLAGS[*]})"
else
    log "load generator: $(wrk --version 2>&1 | head -n1)"
fi

# ---------------------------------------------------------------------------
# Workspace and cleanup
# ---------------------------------------------------------------------------
TMP=$(mktemp -d -t keyhost-load.XXXXXX)
KEYHOST_PID=
NGINX_PID=
CHILD_PID=

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "$CHILD_PID" "$KEYHOST_PID" "$NGINX_PID"; do
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for pid in "$CHILD_PID" "$KEYHOST_PID" "$NGINX_PID"; do
        if [ -n "$pid" ]; then
            for _ in $(seq 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    rm -rf "$TMP"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# nginx workers may run as another user: the web root must be traversable; keyhost's own
# directories stay private.
chmod 0755 "$TMP"
mkdir -p "$TMP/www/.well-known" "$TMP/nginx"
mkdir -m 0700 "$TMP/data" "$TMP/keys"

port_in_use() {  # port_in_use HOST:PORT -> true if something accepts connections there
    timeout 2 bash -c "exec 3<>/dev/tcp/${1%:*}/${1##*:}" 2>/dev/null
}
for addr in "$PUBLIC_ADDR" "$INTERNAL_ADDR" "$NGINX_ADDR"; do
    if port_in_use "$addr"; then
        die "something already answers on $addr; stop it first"
    fi
done

# run_waited OUTFILE CMD...: run CMD in the background and wait for it, so that an
# interrupt stops the script (and CMD, via cleanup) at once instead of after the run.
run_waited() {
    local out=$1
    shift
    "$@" >"$out" &
    CHILD_PID=$!
    local status=0
    wait "$CHILD_PID" || status=$?
    CHILD_PID=
    return "$status"
}

rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/^VmHWM:/ {print $2}' "/proc/$1/status"; }

wait_http() {  # wait_http URL SECONDS PID NAME
    local url=$1 limit=$2 pid=$3 name=$4 deadline
    deadline=$((SECONDS + limit))
    while [ "$SECONDS" -lt "$deadline" ]; do
        kill -0 "$pid" 2>/dev/null || return 1
        if [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$url" || true)" = 200 ]; then
            return 0
        fi
        sleep 0.2
    done
    log "$name did not answer 200 on $url within ${limit}s"
    return 1
}

# ---------------------------------------------------------------------------
# keyhost
# ---------------------------------------------------------------------------
log "cargo build --release --locked"
cargo build --release --locked
BIN="${CARGO_TARGET_DIR:-target}/release/keyhost"
[ -x "$BIN" ] || die "$BIN not found after build"

ADMIN="bench-admin-token-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"

log "starting keyhost on $PUBLIC_ADDR (public) and $INTERNAL_ADDR (internal)"
KEYHOST_DATA_DIR="$TMP/data" \
KEYHOST_KEYS_DIR="$TMP/keys" \
KEYHOST_PUBLIC_ADDR="$PUBLIC_ADDR" \
KEYHOST_INTERNAL_ADDR="$INTERNAL_ADDR" \
KEYHOST_ADMIN_TOKEN="$ADMIN" \
KEYHOST_PARTNER_ID=bench-partner \
KEYHOST_CLIENT_RATE_LIMIT="${KEYHOST_CLIENT_RATE_LIMIT:-0}" \
    "$BIN" serve >"$TMP/keyhost.log" 2>&1 &
KEYHOST_PID=$!

if ! wait_http "$PUBLIC_URL/healthz" 30 "$KEYHOST_PID" keyhost; then
    tail -n 30 "$TMP/keyhost.log" >&2 || true
    die "keyhost did not become healthy"
fi
IDLE_RSS_KB=$(rss_kb "$KEYHOST_PID")
log "keyhost is up (pid $KEYHOST_PID, idle RSS ${IDLE_RSS_KB} kB)"

log "creating an API client"
CLIENT_JSON=$(curl -sS --max-time 10 -X POST "$INTERNAL_URL/admin/clients" \
    -H "Authorization: Bearer $ADMIN" \
    -H 'content-type: application/json' \
    -d '{"name":"bench","scopes":["issue"]}') || die "POST /admin/clients failed"
API_KEY=$(printf '%s' "$CLIENT_JSON" | python3 -c 'import json,sys; print(json.load(sys.stdin)["apiKey"])') \
    || die "unexpected answer from POST /admin/clients: $CLIENT_JSON"

curl -fsS --max-time 10 -o "$TMP/www$JWKS_PATH" "$PUBLIC_URL$JWKS_PATH" || die "GET $JWKS_PATH failed"
JWKS_BYTES=$(wc -c <"$TMP/www$JWKS_PATH")
chmod 0644 "$TMP/www$JWKS_PATH"

# Sanity check before loading: one token of each algorithm must be minted.
for alg in ES256 RS256; do
    code=$(curl -s -o "$TMP/token-$alg.json" -w '%{http_code}' --max-time 10 -X POST "$INTERNAL_URL/v1/tokens" \
        -H "Authorization: Bearer $API_KEY" -H 'content-type: application/json' \
        -d "{\"email\":\"bench@example.com\",\"alg\":\"$alg\"}" || true)
    [ "$code" = 200 ] || [ "$code" = 201 ] || die "POST /v1/tokens ($alg) answered $code: $(cat "$TMP/token-$alg.json" 2>/dev/null)"
done

# ---------------------------------------------------------------------------
# nginx serving the same bytes
# ---------------------------------------------------------------------------
cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 2;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;

events {
    worker_connections 4096;
}

http {
    access_log off;
    default_type application/json;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;

    client_body_temp_path $TMP/nginx/client_body;
    proxy_temp_path $TMP/nginx/proxy;
    fastcgi_temp_path $TMP/nginx/fastcgi;
    uwsgi_temp_path $TMP/nginx/uwsgi;
    scgi_temp_path $TMP/nginx/scgi;

    server {
        listen $NGINX_ADDR;
        root $TMP/www;
        # The same headers keyhost sends, so both answers cost about the same to write.
        add_header Cache-Control "public, max-age=300";
        add_header Access-Control-Allow-Origin "*";
    }
}
EOF

log "starting nginx on $NGINX_ADDR"
nginx -e "$TMP/nginx/error.log" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" &
NGINX_PID=$!
if ! wait_http "$NGINX_URL$JWKS_PATH" 10 "$NGINX_PID" nginx; then
    cat "$TMP/nginx/error.log" >&2 || true
    die "nginx did not start"
fi
curl -fsS --max-time 5 -o "$TMP/jwks-nginx.json" "$NGINX_URL$JWKS_PATH"
cmp -s "$TMP/www$JWKS_PATH" "$TMP/jwks-nginx.json" || die "nginx does not serve the same JWKS bytes"

# ---------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------
# run_load NAME POLICY METHOD URL [BODY]; POST requests carry the client's API key.
# Writes "req/s p50_ms p99_ms non2xx errors" to $TMP/NAME.result.
run_load() {
    local name=$1 policy=$2 method=$3 url=$4 body=${5:-}
    local out="$TMP/$name.out"
    local sched=()
    if [ "$policy" = batch ]; then
        sched=(chrt --batch 0)
    fi
    log "$name: $method $url for $DURATION with $CONNECTIONS connections ($policy)"
    if [ "$LOADGEN" = oha ]; then
        local args=(-z "$DURATION" -c "$CONNECTIONS" --no-tui "${OHA_FLAGS[@]}" -m "$method")
        if [ -n "$body" ]; then
            args+=(-H "Authorization: Bearer $API_KEY" -H 'content-type: application/json' -d "$body")
        fi
        run_waited "$out" "${sched[@]}" oha "${args[@]}" "$url"
        python3 - "$out" >"$TMP/$name.result" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["summary"]
p = r.get("latencyPercentiles", {})
codes = {int(k): v for k, v in r.get("statusCodeDistribution", {}).items()}
non2xx = sum(v for k, v in codes.items() if not 200 <= k < 300)
errors = sum(r.get("errorDistribution", {}).values())
ms = lambda v: float("nan") if v is None else v * 1000.0
print(f'{s["requestsPerSec"]:.1f} {ms(p.get("p50")):.3f} {ms(p.get("p99")):.3f} {non2xx} {errors}')
PY
    else
        local threads=$((CONNECTIONS < 2 ? CONNECTIONS : 2))
        local script="$TMP/$name.lua"
        if [ -n "$body" ]; then
            python3 - "$method" "$body" "$API_KEY" >"$script" <<'PY'
import json, sys
method, body, key = sys.argv[1:4]
print(f"wrk.method = {json.dumps(method)}")
print(f"wrk.body = {json.dumps(body)}")
print('wrk.headers["Content-Type"] = "application/json"')
print(f'wrk.headers["Authorization"] = {json.dumps("Bearer " + key)}')
PY
        else
            printf 'wrk.method = "%s"\n' "$method" >"$script"
        fi
        run_waited "$out" "${sched[@]}" wrk -t "$threads" -c "$CONNECTIONS" -d "$DURATION" --latency -s "$script" "$url"
        python3 - "$out" >"$TMP/$name.result" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]
def pct(p):
    m = re.search(rf"^\s*{p}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    return ms(*m.groups()) if m else float("nan")
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
non2xx = int(m.group(1)) if m else 0
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
errors = sum(map(int, m.groups())) if m else 0
print(f"{rps:.1f} {pct(50):.3f} {pct(99):.3f} {non2xx} {errors}")
PY
    fi
    log "$name: $(cat "$TMP/$name.result") (req/s p50_ms p99_ms non2xx errors)"
}

# run_speed ROUND: `openssl speed -multi 2` for RSA-2048 and P-256 signing; writes
# "rsa_sign_per_s ec_sign_per_s" to $TMP/speed.ROUND.result (nan when unavailable).
run_speed() {
    local round=$1
    if ! command -v openssl >/dev/null 2>&1; then
        echo "nan nan" >"$TMP/speed.$round.result"
        return
    fi
    log "openssl speed -multi 2 -seconds 2 rsa2048 ecdsap256"
    if run_waited "$TMP/speed.out" openssl speed -multi 2 -seconds 2 rsa2048 ecdsap256 2>"$TMP/speed.err"; then
        python3 - "$TMP/speed.out" >"$TMP/speed.$round.result" <<'PY'
import re, sys
rsa = ec = "nan"
for line in open(sys.argv[1]):
    fields = line.split()
    if re.match(r"\s*rsa\s+2048\s+bits\s", line):
        rsa = fields[-2]
    elif re.search(r"ecdsa\s+\(nistp256\)", line):
        ec = fields[-2]
print(rsa, ec)
PY
    else
        log "openssl speed failed; composite ceilings are left out"
        echo "nan nan" >"$TMP/speed.$round.result"
    fi
}

command -v openssl >/dev/null 2>&1 || log "openssl not found; composite ceilings are left out"
ES_BODY='{"email":"bench@example.com"}'
RS_BODY='{"email":"bench@example.com","alg":"RS256"}'
for round in $(seq "$ROUNDS"); do
    log "round $round of $ROUNDS"
    run_load "nginx-jwks.$round" "$LOADGEN_POLICY" GET "$NGINX_URL$JWKS_PATH"
    run_load "keyhost-jwks.$round" "$LOADGEN_POLICY" GET "$PUBLIC_URL$JWKS_PATH"
    run_load "tokens-es256.$round" "$LOADGEN_POLICY" POST "$INTERNAL_URL/v1/tokens" "$ES_BODY"
    run_load "tokens-rs256.$round" "$LOADGEN_POLICY" POST "$INTERNAL_URL/v1/tokens" "$RS_BODY"
    if [ -n "$OTHER_POLICY" ]; then
        run_load "tokens-es256-other.$round" "$OTHER_POLICY" POST "$INTERNAL_URL/v1/tokens" "$ES_BODY"
    fi
    run_speed "$round"
    kill -0 "$KEYHOST_PID" 2>/dev/null || die "keyhost exited during the load test"
done

LOADED_RSS_KB=$(rss_kb "$KEYHOST_PID")
PEAK_RSS_KB=$(hwm_kb "$KEYHOST_PID")

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
python3 - "$TMP" "$ROUNDS" "$DURATION" "$CONNECTIONS" "$LOADGEN" "$LOADGEN_POLICY" \
    "${OTHER_POLICY:-}" "$JWKS_BYTES" "$IDLE_RSS_KB" "$LOADED_RSS_KB" "$PEAK_RSS_KB" <<'PY'
import math, statistics, sys
tmp, rounds, duration, connections, loadgen, policy, other, jwks_bytes = sys.argv[1:9]
idle_kb, loaded_kb, peak_kb = (int(v) for v in sys.argv[9:12])
rounds = range(1, int(rounds) + 1)

rows = [
    ("nginx-jwks", "(a) nginx static JWKS"),
    ("keyhost-jwks", "(b) keyhost GET /.well-known/jwks.json"),
    ("tokens-es256", "(c) keyhost POST /v1/tokens ES256"),
    ("tokens-rs256", "(d) keyhost POST /v1/tokens RS256"),
]
if other:
    rows.append(("tokens-es256-other", f"(e) = (c), load generator {other}"))

def load(key, r):
    rps, p50, p99, non2xx, errors = open(f"{tmp}/{key}.{r}.result").read().split()
    return float(rps), float(p50), float(p99), int(non2xx), int(errors)

res = {key: [load(key, r) for r in rounds] for key, _ in rows}
speed = [tuple(float(v) for v in open(f"{tmp}/speed.{r}.result").read().split()) for r in rounds]

def median(values):
    values = [v for v in values if not math.isnan(v)]
    return statistics.median(values) if values else float("nan")

def num(v, fmt="{:,.0f}"):
    return "n/a" if math.isnan(v) else fmt.format(v)

def spread(values, fmt="{:.0f}"):
    values = [v for v in values if not math.isnan(v)]
    if not values:
        return "n/a"
    return f"{fmt.format(median(values))} (range {fmt.format(min(values))}-{fmt.format(max(values))})"

print()
print(f"## keyhost load test ({loadgen} under {policy} scheduling, {len(rounds)} rounds of "
      f"{duration} per scenario, {connections} connections, JWKS {jwks_bytes} bytes)")
print()
print("Medians over the rounds:")
print()
print("| scenario | req/s | p50 ms | p99 ms | non-2xx | errors |")
print("|---|---:|---:|---:|---:|---:|")
for key, label in rows:
    runs = res[key]
    rps = median([x[0] for x in runs])
    p50 = median([x[1] for x in runs])
    p99 = median([x[2] for x in runs])
    non2xx = sum(x[3] for x in runs)
    errors = sum(x[4] for x in runs)
    print(f"| {label} | {num(rps)} | {num(p50, '{:.2f}')} | {num(p99, '{:.2f}')} | {non2xx} | {errors} |")
print()

def ratio_per_round(mint_key, speed_index):
    out = []
    for i, _ in enumerate(rounds):
        r_jwks = res["keyhost-jwks"][i][0]
        r_sign = speed[i][speed_index]
        if math.isnan(r_sign) or r_sign <= 0:
            continue
        ceiling = 1.0 / (1.0 / r_jwks + 1.0 / r_sign)
        out.append(100.0 * res[mint_key][i][0] / ceiling)
    return out

jwks_vs_nginx = [100.0 * j[0] / n[0] for j, n in zip(res["keyhost-jwks"], res["nginx-jwks"])]
print(f"- keyhost JWKS rate: {spread(jwks_vs_nginx)} % of nginx serving the same bytes")
for key, alg, idx in (("tokens-es256", "ES256", 1), ("tokens-rs256", "RS256", 0)):
    r_sign = median([s[idx] for s in speed])
    ratios = ratio_per_round(key, idx)
    if not ratios:
        print(f"- {alg}: no openssl figure, composite ceiling not computed")
        continue
    ceiling = 1.0 / (1.0 / median([x[0] for x in res["keyhost-jwks"]]) + 1.0 / r_sign)
    print(f"- {alg}: openssl sign/s (2 processes) {r_sign:,.0f}; composite ceiling "
          f"1/(1/R_jwks + 1/R_sign) = {ceiling:,.0f} req/s; mint rate {spread(ratios)} % of it")
if other:
    ratios = ratio_per_round("tokens-es256-other", 1)
    if ratios:
        print(f"- ES256 with the load generator under {other} scheduling: {spread(ratios)} % "
              "of the composite ceiling")
print(f"- per round, {policy}: " + "; ".join(
    f"JWKS {res['keyhost-jwks'][i][0]:,.0f} / nginx {res['nginx-jwks'][i][0]:,.0f}, "
    f"ES256 {res['tokens-es256'][i][0]:,.0f}, openssl {speed[i][1]:,.0f}"
    for i, _ in enumerate(rounds)))
print(f"- keyhost RSS: idle {idle_kb / 1024:.1f} MB, after load {loaded_kb / 1024:.1f} MB "
      f"(peak {peak_kb / 1024:.1f} MB)")

bad = [label for key, label in rows if any(x[3] or x[4] for x in res[key])]
if bad:
    print()
    print("WARNING: some requests failed or were rejected (see non-2xx / errors), so the rates above")
    print("include failures: " + "; ".join(bad) + ".")
    print("Errors near the end of a run can be requests cut off by the deadline. A 429 on the token")
    print("scenarios is the per-client rate limit (KEYHOST_CLIENT_RATE_LIMIT, 0 = unlimited).")
PY
