#!/usr/bin/env bash
# Load test of keyhost with a real HTTP load generator.
#
# Usage:
#   benches/load.sh
#   ROUNDS=9 DURATION=10s CONNECTIONS=100 benches/load.sh
#   LOADGEN="wrk oha" STORE=both ROUNDS=3 benches/load.sh
#   STORE=postgres REPLICAS=2 ROUNDS=3 benches/load.sh
#
#   ROUNDS       how many times the whole set of scenarios is repeated (default 5)
#   DURATION     length of each scenario in each round (default 5s; a bare number means seconds)
#   CONNECTIONS  concurrent connections per scenario (default 50)
#   LOADGEN      load generator: `wrk` (default), `oha`, or both (`"wrk oha"` or `both`), in which
#                case every scenario is run with each, back to back, and both sets of figures
#                are reported side by side
#   STORE        `sqlite` (default), `postgres` (a schema of its own in
#                KEYHOST_BENCH_POSTGRES_URL, default postgres://postgres@127.0.0.1:5432/test,
#                created for the run and dropped at its end), or `both`: one server on each,
#                measured in the same rounds, so that their ratio is taken minutes apart at most
#   REPLICAS     1 (default) or 2 (PostgreSQL only): two keyhost processes on the same schema
#                behind a load balancer, measured through it, and the first replica directly
#   BALANCER     the load balancer of REPLICAS=2: `nginx` (default; upstream keep-alive,
#                round robin) or `caddy` (reverse_proxy, round robin). nginx is the default
#                because it leaves the replicas the most CPU: here it spent 16 µs per JWKS
#                request and 19-23 µs per token, Caddy 2.6 110 and 131 µs
#   LOADGEN_POLICY
#                scheduling policy of the load generator: `batch` (default) runs it under
#                SCHED_BATCH (`chrt --batch 0`), `normal` as an ordinary task; see below
#   QUIET_LOAD, QUIET_WAIT
#                before measuring, wait (at most QUIET_WAIT seconds, default 600) until the
#                1-minute load average is below QUIET_LOAD (default 1.0)
#   Other KEYHOST_* variables in the environment are passed to the servers unchanged.
#   The per-client rate limit is lifted for the run (KEYHOST_CLIENT_RATE_LIMIT=0) unless
#   KEYHOST_CLIENT_RATE_LIMIT is set.
#
# What it does: builds keyhost in release mode, starts it on loopback with throw-away data and
# keys (SQLite: public 127.0.0.1:18080, internal :18081; PostgreSQL: :18082/:18083, a second
# replica :18084/:18085, the balancer :18086 for the public and :18087 for the internal
# listeners), creates an API client, copies the JWKS into a file served by nginx on
# 127.0.0.1:18090 (identical bytes), then, in each round, measures for each server ("target":
# SQLite, PostgreSQL, the balancer)
#   (a) nginx serving the JWKS as a static file (the reference ceiling),
#   (b) keyhost GET /.well-known/jwks.json,
#   (c) keyhost POST /v1/tokens, ES256 (default algorithm),
#   (d) keyhost POST /v1/tokens, RS256,
#   (e) (c) again on the last target with the load generator under the other scheduling policy,
# and `openssl speed -multi 2` for the raw signing rate of this machine. The targets' order is
# reversed every other round. It prints the median of each figure over the rounds, the JWKS rate
# relative to nginx, the mint rates relative to the composite ceiling 1/(1/R_jwks + 1/R_sign),
# PostgreSQL relative to SQLite and the balancer relative to one replica (each ratio is computed
# within a round, from figures taken minutes apart at most, and the median of the rounds is
# reported); the CPU time each request cost the server, the balancer and the load generator
# (from /proc, per scenario), the CPU that other processes on the machine used meanwhile (a
# measure of the noise), and keyhost's resident memory before and after load.
#
# Why rounds: on a virtual machine with noisy neighbours the speed of the same scenario drifts by
# 20-30 % within minutes. Interleaving the scenarios and taking medians keeps that drift out of
# the ratios.
#
# Why SCHED_BATCH: the load generator, nginx and keyhost share the same cores. When the
# server is the bottleneck (minting), every response wakes a sleeping load-generator thread,
# which by default preempts the server mid-request; the server then spends as much time in
# context switches as in signing. A SCHED_BATCH task keeps its fair share of CPU but does not
# preempt on wakeup, which is the closest one machine gets to a load generator on another
# host. Row (e) shows the same scenario with the other policy, so the effect is visible in
# every run. Compare rows with each other, not with figures from other machines.
#
# Why wrk by default: it spends about half of oha's CPU per request (7 against 14 µs per JWKS
# request here; the report's load-generator column shows it in every run), and every cycle it
# does not use is left to the server on the same two cores. oha is kept as a second opinion
# (LOADGEN=oha, or both).
#
# Requirements: cargo, curl, python3; openssl and chrt (util-linux) are optional. Missing
# tools are installed: wrk, nginx, psql (postgresql-client) from apt, oha with
# `cargo install oha --locked`. Installing from apt needs root (or sudo). Note that on a host
# running systemd, installing the nginx package also starts the system nginx service on port 80.
# BALANCER=caddy needs caddy on the PATH.
#
# Everything stays on loopback, every run stops by itself, and the servers, nginx, the balancer,
# the PostgreSQL schema and the temporary directory are removed on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=benches/common.sh
. benches/common.sh

ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-5s}
CONNECTIONS=${CONNECTIONS:-50}
LOADGEN_POLICY=${LOADGEN_POLICY:-batch}
LOADGEN=${LOADGEN:-wrk}
STORE=${STORE:-sqlite}
REPLICAS=${REPLICAS:-1}
BALANCER=${BALANCER:-nginx}
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
[ "$LOADGEN" = both ] && LOADGEN="wrk oha"
read -r -a GENS <<<"$LOADGEN"
[ "${#GENS[@]}" -ge 1 ] || { echo "LOADGEN is empty" >&2; exit 2; }
for gen in "${GENS[@]}"; do
    case "$gen" in
        wrk | oha) ;;
        *) echo "LOADGEN must be wrk, oha or both, got '$LOADGEN'" >&2; exit 2 ;;
    esac
done
case "$STORE" in
    sqlite | postgres | both) ;;
    *) echo "STORE must be sqlite, postgres or both, got '$STORE'" >&2; exit 2 ;;
esac
case "$REPLICAS" in
    1) ;;
    2) [ "$STORE" != sqlite ] || { echo "REPLICAS=2 needs STORE=postgres (or both): SQLite has one server per store" >&2; exit 2; } ;;
    *) echo "REPLICAS must be 1 or 2, got '$REPLICAS'" >&2; exit 2 ;;
esac
case "$BALANCER" in
    nginx | caddy) ;;
    *) echo "BALANCER must be nginx or caddy, got '$BALANCER'" >&2; exit 2 ;;
esac

NGINX_ADDR=127.0.0.1:18090
NGINX_URL="http://$NGINX_ADDR"
JWKS_PATH=/.well-known/jwks.json
CLK_TCK=$(getconf CLK_TCK)

# ---------------------------------------------------------------------------
# Tools
# ---------------------------------------------------------------------------
for tool in cargo curl python3; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done
setup_loadgens "${GENS[@]}"
if ! command -v nginx >/dev/null 2>&1; then
    apt_install nginx-light || apt_install nginx
fi
command -v nginx >/dev/null 2>&1 || die "nginx is not available"
if [ "$REPLICAS" = 2 ] && [ "$BALANCER" = caddy ]; then
    command -v caddy >/dev/null 2>&1 || die "BALANCER=caddy needs caddy on the PATH"
fi

# SCHED_BATCH needs chrt and a kernel that allows it (any Linux does for an unprivileged task).
if ! chrt --batch 0 true >/dev/null 2>&1; then
    log "chrt --batch is not available: the load generator runs as an ordinary task only"
    LOADGEN_POLICY=normal
    OTHER_POLICY=
fi

# ---------------------------------------------------------------------------
# Workspace and cleanup
# ---------------------------------------------------------------------------
TMP=$(mktemp -d -t keyhost-load.XXXXXX)
declare -A KH_PID=()
NGINX_PID=
LB_PID=

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    local pids=("$CHILD_PID" "${KH_PID[@]}" "$NGINX_PID" "$LB_PID")
    for pid in "${pids[@]}"; do
        if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    for pid in "${pids[@]}"; do
        if [ -n "$pid" ]; then
            for _ in $(seq 50); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL "$pid" 2>/dev/null || true
            wait "$pid" 2>/dev/null || true
        fi
    done
    pg_drop_schema
    rm -rf "$TMP"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# nginx workers may run as another user: the web root must be traversable; keyhost's own
# directories stay private.
chmod 0755 "$TMP"
mkdir -p "$TMP/www/.well-known" "$TMP/nginx" "$TMP/lb"

port_in_use() {  # port_in_use HOST:PORT -> true if something accepts connections there
    timeout 2 bash -c "exec 3<>/dev/tcp/${1%:*}/${1##*:}" 2>/dev/null
}
for port in 18080 18081 18082 18083 18084 18085 18086 18087 18090; do
    if port_in_use "127.0.0.1:$port"; then
        die "something already answers on 127.0.0.1:$port; stop it first"
    fi
done

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
# One master key for every server: replicas sharing a store must have the same.
MASTER_KEY=$(head -c 32 /dev/urandom | base64)

if [ "$STORE" != sqlite ]; then
    pg_create_schema
fi

# start_keyhost NAME PUBLIC_PORT INTERNAL_PORT ENV...: starts one server (ENV: `env` arguments
# put before keyhost's own settings) and waits until it is healthy and ready.
declare -A PUBLIC_URL=() INTERNAL_URL=() IDLE_RSS_KB=()
start_keyhost() {
    local name=$1 public=127.0.0.1:$2 internal=127.0.0.1:$3
    shift 3
    mkdir -m 0700 "$TMP/$name"
    mkdir -m 0700 "$TMP/$name/data" "$TMP/$name/keys"
    log "starting keyhost $name on $public (public) and $internal (internal)"
    env "$@" \
        KEYHOST_DATA_DIR="$TMP/$name/data" \
        KEYHOST_KEYS_DIR="$TMP/$name/keys" \
        KEYHOST_PUBLIC_ADDR="$public" \
        KEYHOST_INTERNAL_ADDR="$internal" \
        KEYHOST_ADMIN_TOKEN="$ADMIN" \
        KEYHOST_MASTER_KEY="$MASTER_KEY" \
        KEYHOST_PARTNER_ID=bench-partner \
        KEYHOST_CLIENT_RATE_LIMIT="${KEYHOST_CLIENT_RATE_LIMIT:-0}" \
        "$BIN" serve >"$TMP/$name.log" 2>&1 &
    KH_PID[$name]=$!
    PUBLIC_URL[$name]="http://$public"
    INTERNAL_URL[$name]="http://$internal"
    if ! wait_http "http://$public/healthz" 30 "${KH_PID[$name]}" "keyhost $name" ||
        ! wait_http "http://$internal/readyz" 30 "${KH_PID[$name]}" "keyhost $name"; then
        tail -n 30 "$TMP/$name.log" >&2 || true
        curl -s --max-time 2 "http://$internal/readyz" >&2 || true
        die "keyhost $name did not become healthy and ready"
    fi
    IDLE_RSS_KB[$name]=$(rss_kb "${KH_PID[$name]}")
    log "keyhost $name is up (pid ${KH_PID[$name]}, idle RSS ${IDLE_RSS_KB[$name]} kB)"
}

# Servers, and the targets the scenarios load: name -> URLs and the processes that serve them.
TARGETS=()
declare -A TARGET_PIDS=() TARGET_LABEL=() TARGET_KEY=()
if [ "$STORE" != postgres ]; then
    start_keyhost sqlite 18080 18081 -u KEYHOST_DATABASE_URL -u KEYHOST_DATABASE_URL_FILE
    TARGETS+=(sqlite)
    TARGET_LABEL[sqlite]="SQLite"
fi
if [ "$STORE" != sqlite ]; then
    start_keyhost postgres 18082 18083 -u KEYHOST_DATABASE_URL_FILE KEYHOST_DATABASE_URL="$PG_URL"
    TARGETS+=(postgres)
    TARGET_LABEL[postgres]="PostgreSQL"
    if [ "$REPLICAS" = 2 ]; then TARGET_LABEL[postgres]="PostgreSQL, one replica directly"; fi
fi
if [ "$REPLICAS" = 2 ]; then
    start_keyhost postgres2 18084 18085 -u KEYHOST_DATABASE_URL_FILE KEYHOST_DATABASE_URL="$PG_URL"
fi

# API clients: one per store (a client made through one replica reaches the other by itself).
for name in sqlite postgres; do
    [ -n "${KH_PID[$name]:-}" ] || continue
    client_json=$(curl -sS --max-time 10 -X POST "${INTERNAL_URL[$name]}/admin/clients" \
        -H "Authorization: Bearer $ADMIN" \
        -H 'content-type: application/json' \
        -d '{"name":"bench","scopes":["issue"]}') || die "POST /admin/clients ($name) failed"
    TARGET_KEY[$name]=$(printf '%s' "$client_json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["apiKey"])') \
        || die "unexpected answer from POST /admin/clients ($name): $client_json"
done

# mint_ok URL KEY ALG: whether one token is minted.
mint_ok() {
    local code
    code=$(curl -s -o "$TMP/token.json" -w '%{http_code}' --max-time 10 -X POST "$1/v1/tokens" \
        -H "Authorization: Bearer $2" -H 'content-type: application/json' \
        -d "{\"email\":\"bench@example.com\",\"alg\":\"$3\"}" || true)
    [ "$code" = 200 ] || [ "$code" = 201 ]
}

# Sanity checks before loading: one token of each algorithm from every server, and the same
# JWKS bytes from replicas of one store.
for name in "${!KH_PID[@]}"; do
    key=${TARGET_KEY[$name]:-${TARGET_KEY[postgres]:-}}
    for alg in ES256 RS256; do
        ok=0
        for _ in $(seq 50); do  # the second replica learns of the client within a second
            if mint_ok "${INTERNAL_URL[$name]}" "$key" "$alg"; then ok=1; break; fi
            sleep 0.1
        done
        [ "$ok" = 1 ] || die "POST /v1/tokens ($alg) on $name answered: $(cat "$TMP/token.json" 2>/dev/null)"
    done
    curl -fsS --max-time 10 -o "$TMP/jwks-$name.json" "${PUBLIC_URL[$name]}$JWKS_PATH" || die "GET $JWKS_PATH on $name failed"
done
if [ "$REPLICAS" = 2 ]; then
    cmp -s "$TMP/jwks-postgres.json" "$TMP/jwks-postgres2.json" || die "the two replicas serve different JWKS bytes"
fi

# ---------------------------------------------------------------------------
# The balancer (REPLICAS=2)
# ---------------------------------------------------------------------------
if [ "$REPLICAS" = 2 ]; then
    LB_PUBLIC=127.0.0.1:18086
    LB_INTERNAL=127.0.0.1:18087
    if [ "$BALANCER" = nginx ]; then
        cat >"$TMP/lb/nginx.conf" <<EOF
worker_processes 2;
daemon off;
pid $TMP/lb/nginx.pid;
error_log $TMP/lb/error.log warn;

events {
    worker_connections 4096;
}

http {
    access_log off;
    keepalive_timeout 65;
    keepalive_requests 1000000;

    client_body_temp_path $TMP/lb/client_body;
    proxy_temp_path $TMP/lb/proxy;
    fastcgi_temp_path $TMP/lb/fastcgi;
    uwsgi_temp_path $TMP/lb/uwsgi;
    scgi_temp_path $TMP/lb/scgi;

    # Round robin, with connections to the replicas kept open (without keepalive, nginx would
    # open a connection per request).
    upstream keyhost_public {
        server ${PUBLIC_URL[postgres]#http://};
        server ${PUBLIC_URL[postgres2]#http://};
        keepalive 64;
        keepalive_requests 1000000;
    }
    upstream keyhost_internal {
        server ${INTERNAL_URL[postgres]#http://};
        server ${INTERNAL_URL[postgres2]#http://};
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen $LB_PUBLIC;
        location / {
            proxy_pass http://keyhost_public;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
    server {
        listen $LB_INTERNAL;
        location / {
            proxy_pass http://keyhost_internal;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
        log "starting the balancer (nginx) on $LB_PUBLIC and $LB_INTERNAL"
        nginx -e "$TMP/lb/error.log" -p "$TMP/lb" -c "$TMP/lb/nginx.conf" &
        LB_PID=$!
    else
        cat >"$TMP/lb/Caddyfile" <<EOF
{
	admin off
	auto_https off
}

http://$LB_PUBLIC {
	reverse_proxy ${PUBLIC_URL[postgres]#http://} ${PUBLIC_URL[postgres2]#http://} {
		lb_policy round_robin
		transport http {
			keepalive_idle_conns 256
			keepalive_idle_conns_per_host 128
		}
	}
}

http://$LB_INTERNAL {
	reverse_proxy ${INTERNAL_URL[postgres]#http://} ${INTERNAL_URL[postgres2]#http://} {
		lb_policy round_robin
		transport http {
			keepalive_idle_conns 256
			keepalive_idle_conns_per_host 128
		}
	}
}
EOF
        log "starting the balancer (caddy) on $LB_PUBLIC and $LB_INTERNAL"
        XDG_DATA_HOME="$TMP/lb" XDG_CONFIG_HOME="$TMP/lb" \
            caddy run --adapter caddyfile --config "$TMP/lb/Caddyfile" >"$TMP/lb/caddy.log" 2>&1 &
        LB_PID=$!
    fi
    if ! wait_http "http://$LB_PUBLIC$JWKS_PATH" 15 "$LB_PID" balancer; then
        for f in "$TMP/lb/error.log" "$TMP/lb/caddy.log"; do
            [ -f "$f" ] && tail -n 20 "$f" >&2
        done
        die "the balancer did not start"
    fi
    mint_ok "http://$LB_INTERNAL" "${TARGET_KEY[postgres]}" ES256 || die "minting through the balancer failed"
    TARGETS+=(balancer)
    TARGET_LABEL[balancer]="PostgreSQL, 2 replicas behind $BALANCER"
    PUBLIC_URL[balancer]="http://$LB_PUBLIC"
    INTERNAL_URL[balancer]="http://$LB_INTERNAL"
    TARGET_KEY[balancer]=${TARGET_KEY[postgres]}
fi

for t in "${TARGETS[@]}"; do
    case "$t" in
        balancer) TARGET_PIDS[$t]="${KH_PID[postgres]} ${KH_PID[postgres2]}" ;;
        *) TARGET_PIDS[$t]=${KH_PID[$t]} ;;
    esac
done
PRIMARY=${TARGETS[${#TARGETS[@]} - 1]}

# ---------------------------------------------------------------------------
# nginx serving the same bytes
# ---------------------------------------------------------------------------
REF=${TARGETS[0]}
cp "$TMP/jwks-$REF.json" "$TMP/www$JWKS_PATH"
chmod 0644 "$TMP/www$JWKS_PATH"
JWKS_BYTES=$(wc -c <"$TMP/www$JWKS_PATH")
for name in "${!KH_PID[@]}"; do
    size=$(wc -c <"$TMP/jwks-$name.json")
    [ "$size" = "$JWKS_BYTES" ] || log "note: $name's JWKS is $size bytes, nginx serves $REF's $JWKS_BYTES"
done

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

# nginx's workers are its children; their CPU is what serving costs.
group_pids() {  # group_pids PID: the process and its children
    echo "$1" $(pgrep -P "$1" 2>/dev/null || true)
}
NGINX_PIDS=$(group_pids "$NGINX_PID")
LB_PIDS=
if [ -n "$LB_PID" ]; then LB_PIDS=$(group_pids "$LB_PID"); fi
PG_PIDS=
if [ "$STORE" != sqlite ]; then PG_PIDS=$(postgres_pids); fi

# ---------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------
# measure NAME GEN POLICY TARGET METHOD URL BODY [HEADER...]: run_load, plus the CPU each party
# used meanwhile, written to $TMP/NAME.cpu as
# "server_ticks balancer_ticks postgres_ticks busy_ticks steal_ticks wall_ticks".
measure() {
    local name=$1 gen=$2 policy=$3 target=$4
    shift 4
    local server_pids lb_pids=
    if [ "$target" = nginx ]; then
        server_pids=$NGINX_PIDS
    else
        server_pids=${TARGET_PIDS[$target]}
        if [ "$target" = balancer ]; then lb_pids=$LB_PIDS; fi
    fi
    local s0 l0 p0 sys0 t0 s1 l1 p1 sys1 t1
    # shellcheck disable=SC2086
    s0=$(proc_ticks $server_pids); l0=$(proc_ticks $lb_pids); p0=$(proc_ticks $PG_PIDS)
    sys0=$(system_ticks); t0=$(date +%s%N)
    run_load "$name" "$gen" "$policy" "$@"
    # shellcheck disable=SC2086
    s1=$(proc_ticks $server_pids); l1=$(proc_ticks $lb_pids); p1=$(proc_ticks $PG_PIDS)
    sys1=$(system_ticks); t1=$(date +%s%N)
    read -r b0 st0 <<<"$sys0"
    read -r b1 st1 <<<"$sys1"
    echo "$((s1 - s0)) $((l1 - l0)) $((p1 - p0)) $((b1 - b0)) $((st1 - st0)) $(((t1 - t0) * CLK_TCK / 1000000000))" >"$TMP/$name.cpu"
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

# The rows of the report: key|target|kind|policy|label.
{
    echo "nginx-jwks|nginx|jwks|$LOADGEN_POLICY|nginx static JWKS (reference)"
    for t in "${TARGETS[@]}"; do
        echo "jwks-$t|$t|jwks|$LOADGEN_POLICY|${TARGET_LABEL[$t]}: GET /.well-known/jwks.json"
        echo "es256-$t|$t|es256|$LOADGEN_POLICY|${TARGET_LABEL[$t]}: POST /v1/tokens ES256"
        echo "rs256-$t|$t|rs256|$LOADGEN_POLICY|${TARGET_LABEL[$t]}: POST /v1/tokens RS256"
    done
    if [ -n "$OTHER_POLICY" ]; then
        echo "es256-other-$PRIMARY|$PRIMARY|es256|$OTHER_POLICY|${TARGET_LABEL[$PRIMARY]}: ES256, load generator $OTHER_POLICY"
    fi
} >"$TMP/rows"

# run_row ROUND KEY TARGET KIND POLICY: one scenario with each load generator.
run_row() {
    local round=$1 key=$2 target=$3 kind=$4 policy=$5 gen
    for gen in "${GENS[@]}"; do
        case "$kind" in
            jwks)
                local url="$NGINX_URL$JWKS_PATH"
                [ "$target" = nginx ] || url="${PUBLIC_URL[$target]}$JWKS_PATH"
                measure "$key.$gen.$round" "$gen" "$policy" "$target" GET "$url" ""
                ;;
            es256 | rs256)
                local body=$ES_BODY
                if [ "$kind" = rs256 ]; then body=$RS_BODY; fi
                measure "$key.$gen.$round" "$gen" "$policy" "$target" POST "${INTERNAL_URL[$target]}/v1/tokens" "$body" \
                    "Authorization: Bearer ${TARGET_KEY[$target]}" "Content-Type: application/json"
                ;;
        esac
    done
}

wait_quiet
for round in $(seq "$ROUNDS"); do
    log "round $round of $ROUNDS"
    # The targets' order alternates between rounds, so that neither always runs first.
    order=$(cat "$TMP/rows")
    if [ $((round % 2)) = 0 ]; then
        order=$(python3 - "$TMP/rows" <<'PY'
import sys
rows = [l.rstrip("\n") for l in open(sys.argv[1])]
head, tail = rows[:1], rows[1:]
other = [r for r in tail if "-other-" in r]
body = [r for r in tail if "-other-" not in r]
groups = [body[i:i + 3] for i in range(0, len(body), 3)]
print("\n".join(head + [r for g in reversed(groups) for r in g] + other))
PY
)
    fi
    while IFS='|' read -r key target kind policy _; do
        run_row "$round" "$key" "$target" "$kind" "$policy"
    done <<<"$order"
    run_speed "$round"
    for name in "${!KH_PID[@]}"; do
        kill -0 "${KH_PID[$name]}" 2>/dev/null || die "keyhost $name exited during the load test"
    done
done
END_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)

: >"$TMP/rss"
for name in "${!KH_PID[@]}"; do
    echo "$name ${IDLE_RSS_KB[$name]} $(rss_kb "${KH_PID[$name]}") $(hwm_kb "${KH_PID[$name]}")" >>"$TMP/rss"
done

# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------
python3 - "$TMP" "$ROUNDS" "$DURATION" "$CONNECTIONS" "$LOADGEN" "$LOADGEN_POLICY" \
    "$JWKS_BYTES" "$CLK_TCK" "$START_LOAD" "$END_LOAD" "$STORE" "$REPLICAS" "$BALANCER" <<'PY'
import math, statistics, sys
(tmp, rounds, duration, connections, loadgen, policy, jwks_bytes, clk_tck, start_load, end_load,
 store, replicas, balancer) = sys.argv[1:14]
gens = loadgen.split()
rounds = range(1, int(rounds) + 1)
clk_tck = int(clk_tck)
rows = [line.rstrip("\n").split("|") for line in open(f"{tmp}/rows")]
targets = []
for key, target, kind, pol, label in rows:
    if target != "nginx" and target not in targets:
        targets.append(target)

def load(name):
    rps, p50, p99, non2xx, errors, requests, gen_ticks = open(f"{tmp}/{name}.result").read().split()
    server, lb, pg, busy, steal, wall = (int(v) for v in open(f"{tmp}/{name}.cpu").read().split())
    requests = max(int(requests), 1)
    us = lambda ticks: ticks / clk_tck * 1e6 / requests
    gen_ticks = int(gen_ticks)
    other = busy - server - lb - pg - gen_ticks
    return dict(rps=float(rps), p50=float(p50), p99=float(p99), non2xx=int(non2xx),
                errors=int(errors), server_us=us(server), lb_us=us(lb), pg_us=us(pg),
                gen_us=us(gen_ticks), other_cores=max(other, 0) / max(wall, 1),
                steal_cores=steal / max(wall, 1), pg_cores=pg / max(wall, 1))

res = {(key, gen): [load(f"{key}.{gen}.{r}") for r in rounds] for key, *_ in rows for gen in gens}
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

def col(key, gen, field):
    return [x[field] for x in res[(key, gen)]]

title = {"sqlite": "SQLite", "postgres": "PostgreSQL", "both": "SQLite and PostgreSQL"}[store]
if replicas == "2":
    title += f", 2 replicas behind {balancer}"
print()
print(f"## keyhost load test ({title}; {' and '.join(gens)} under {policy} scheduling, "
      f"{len(rounds)} rounds of {duration} per scenario, {connections} connections, "
      f"JWKS {jwks_bytes} bytes; load average {start_load} at the start, {end_load} at the end)")
for gen in gens:
    print()
    print(f"### {gen}: medians over the rounds")
    print()
    print("| scenario | req/s | p50 ms | p99 ms | server CPU µs/req | balancer µs/req | "
          f"{gen} µs/req | non-2xx | errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for key, target, kind, pol, label in rows:
        lb = median(col(key, gen, "lb_us")) if target == "balancer" else float("nan")
        print(f"| {label} | {num(median(col(key, gen, 'rps')))} | "
              f"{num(median(col(key, gen, 'p50')), '{:.2f}')} | {num(median(col(key, gen, 'p99')), '{:.2f}')} | "
              f"{num(median(col(key, gen, 'server_us')), '{:.1f}')} | {num(lb, '{:.1f}')} | "
              f"{num(median(col(key, gen, 'gen_us')), '{:.1f}')} | "
              f"{sum(col(key, gen, 'non2xx'))} | {sum(col(key, gen, 'errors'))} |")

if len(gens) > 1:
    print()
    print("### side by side (median req/s)")
    print()
    print("| scenario | " + " | ".join(gens) + f" | {gens[0]}/{gens[1]} |")
    print("|---|" + "---:|" * (len(gens) + 1))
    for key, target, kind, pol, label in rows:
        rates = [median(col(key, g, "rps")) for g in gens]
        ratio = [a / b for a, b in zip(col(key, gens[0], "rps"), col(key, gens[1], "rps"))]
        print(f"| {label} | " + " | ".join(num(r) for r in rates) + f" | {median(ratio):.2f} |")

def ratios(a_key, b_key, gen):
    return [100.0 * a["rps"] / b["rps"] for a, b in zip(res[(a_key, gen)], res[(b_key, gen)])]

def ceiling_ratios(mint_key, target, gen, speed_index):
    out = []
    for i, _ in enumerate(rounds):
        r_jwks = res[(f"jwks-{target}", gen)][i]["rps"]
        r_sign = speed[i][speed_index]
        if math.isnan(r_sign) or r_sign <= 0:
            continue
        out.append(100.0 * res[(mint_key, gen)][i]["rps"] / (1.0 / (1.0 / r_jwks + 1.0 / r_sign)))
    return out

print()
print("### ratios (each taken within a round; median and range over the rounds)")
print()
for gen in gens:
    print(f"{gen}:")
    for t in targets:
        print(f"- {t} JWKS: {spread(ratios(f'jwks-{t}', 'nginx-jwks', gen))} % of nginx serving the same bytes")
    for key, target, kind, pol, label in rows:
        if kind == "jwks":
            continue
        idx = 1 if kind == "es256" else 0
        r = ceiling_ratios(key, target, gen, idx)
        print(f"- {label}: " + (f"{spread(r)} % of the composite ceiling" if r else "no openssl figure"))
    if "sqlite" in targets and "postgres" in targets:
        for kind in ("jwks", "es256", "rs256"):
            print(f"- PostgreSQL / SQLite, {kind}: {spread(ratios(f'{kind}-postgres', f'{kind}-sqlite', gen))} %")
    if "balancer" in targets:
        for kind in ("jwks", "es256", "rs256"):
            print(f"- 2 replicas behind {balancer} / one replica directly, {kind}: "
                  f"{spread(ratios(f'{kind}-balancer', f'{kind}-postgres', gen))} %")
    print(f"- per round: " + "; ".join(
        f"nginx {res[('nginx-jwks', gen)][i]['rps']:,.0f}, "
        + ", ".join(f"{t} JWKS {res[(f'jwks-{t}', gen)][i]['rps']:,.0f} ES256 {res[(f'es256-{t}', gen)][i]['rps']:,.0f}"
                    for t in targets)
        + f", openssl ES {speed[i][1]:,.0f}"
        for i, _ in enumerate(rounds)))

print()
ec = median([s[1] for s in speed])
rsa = median([s[0] for s in speed])
print(f"- openssl speed -multi 2: {num(ec)} ECDSA P-256 and {num(rsa)} RSA-2048 signatures/s (median)")
every = [x for v in res.values() for x in v]
print(f"- other processes on the machine during the scenarios: {median([x['other_cores'] for x in every]):.2f} "
      f"cores (median; max {max(x['other_cores'] for x in every):.2f}), steal "
      f"{median([x['steal_cores'] for x in every]):.2f} cores (max {max(x['steal_cores'] for x in every):.2f})")
if store != "sqlite":
    pg = [x["pg_cores"] for (key, gen), v in res.items() for x in v if key != "nginx-jwks"]
    print(f"- PostgreSQL server (all its clients) during the keyhost scenarios: {median(pg):.3f} cores "
          f"(median; max {max(pg):.3f})")
for line in open(f"{tmp}/rss"):
    name, idle, loaded, peak = line.split()
    print(f"- keyhost {name} RSS: idle {int(idle) / 1024:.1f} MB, after load {int(loaded) / 1024:.1f} MB "
          f"(peak {int(peak) / 1024:.1f} MB)")

bad = sorted({label for (key, gen), v in res.items() for x in v if x["non2xx"] or x["errors"]
              for k, _, _, _, label in rows if k == key})
if bad:
    print()
    print("WARNING: some requests failed or were rejected (see non-2xx / errors), so the rates above")
    print("include failures: " + "; ".join(bad) + ".")
    print("Errors near the end of a run can be requests cut off by the deadline. A 429 on the token")
    print("scenarios is the per-client rate limit (KEYHOST_CLIENT_RATE_LIMIT, 0 = unlimited).")
PY
