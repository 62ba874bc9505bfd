#!/usr/bin/env bash
# Where a JWKS request's CPU goes, in keyhost and in nginx serving the same bytes: a CPU profile
# of each server under the same wrk load, and their costs per request side by side.
#
# Usage:
#   benches/jwks-profile.sh
#   DURATION=10 CONNECTIONS=50 TOP=40 benches/jwks-profile.sh
#
#   DURATION     seconds of load on each server (default 8; the profile covers the middle of it)
#   CONNECTIONS  wrk connections (default 50)
#   TOP          symbols listed per server (default 30)
#   QUIET_LOAD, QUIET_WAIT: see benches/common.sh
#
# It builds keyhost in release mode (SQLite store; the JWKS path is the same on either engine),
# starts it on 127.0.0.1:18280 and nginx on 127.0.0.1:18290 with the same JWKS bytes and headers
# (configured as in benches/load.sh), then for each server: wrk (2 threads, under SCHED_BATCH as
# in load.sh) for DURATION seconds, with `perf stat` (task clock, context switches) and
# `perf record` (cpu-clock sampling at 2,999 Hz, all threads of the server) attached to the
# server over the middle DURATION-2 seconds. It prints the request rates, CPU per request, context
# switches per request, the share of kernel and user time, and the top symbols of each profile
# (self time). Needs perf (Debian: linux-perf, installed when missing), wrk and nginx.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=benches/common.sh
. benches/common.sh

DURATION=${DURATION:-8}
CONNECTIONS=${CONNECTIONS:-50}
TOP=${TOP:-30}
[[ "$DURATION" =~ ^[0-9]+$ ]] && [ "$DURATION" -ge 4 ] || die "DURATION must be a whole number of seconds, at least 4"
[[ "$CONNECTIONS" =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be a positive integer"

command -v perf >/dev/null 2>&1 || apt_install linux-perf
command -v perf >/dev/null 2>&1 || die "perf is not available"
setup_loadgens wrk
command -v nginx >/dev/null 2>&1 || apt_install nginx-light || apt_install nginx

TMP=$(mktemp -d -t keyhost-jwks-profile.XXXXXX)
PIDS=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "$CHILD_PID" "${PIDS[@]}"; do [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$TMP"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
chmod 0755 "$TMP"
mkdir -p "$TMP/www/.well-known" "$TMP/nginx"
mkdir -m 0700 "$TMP/data" "$TMP/keys"

log "cargo build --release --locked"
cargo build --release --locked
BIN="${CARGO_TARGET_DIR:-target}/release/keyhost"

env -u KEYHOST_DATABASE_URL -u KEYHOST_DATABASE_URL_FILE \
    KEYHOST_DATA_DIR="$TMP/data" KEYHOST_KEYS_DIR="$TMP/keys" \
    KEYHOST_PUBLIC_ADDR=127.0.0.1:18280 KEYHOST_INTERNAL_ADDR=127.0.0.1:18281 \
    KEYHOST_ADMIN_TOKEN="bench-admin-token-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')" \
    KEYHOST_PARTNER_ID=bench-partner \
    "$BIN" serve >"$TMP/keyhost.log" 2>&1 &
KEYHOST_PID=$!
PIDS+=("$KEYHOST_PID")
for _ in $(seq 150); do
    curl -fsS -o "$TMP/www/.well-known/jwks.json" http://127.0.0.1:18280/.well-known/jwks.json 2>/dev/null && break
    sleep 0.2
done
[ -s "$TMP/www/.well-known/jwks.json" ] || die "keyhost did not start: $(tail -n 20 "$TMP/keyhost.log")"
chmod 0644 "$TMP/www/.well-known/jwks.json"

cat >"$TMP/nginx/nginx.conf" <<EOF
worker_processes 2;
daemon off;
pid $TMP/nginx/nginx.pid;
error_log $TMP/nginx/error.log warn;
events { worker_connections 4096; }
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
        listen 127.0.0.1:18290;
        root $TMP/www;
        add_header Cache-Control "public, max-age=300";
        add_header Access-Control-Allow-Origin "*";
    }
}
EOF
nginx -e "$TMP/nginx/error.log" -p "$TMP/nginx" -c "$TMP/nginx/nginx.conf" &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
for _ in $(seq 50); do
    curl -fsS -o /dev/null http://127.0.0.1:18290/.well-known/jwks.json 2>/dev/null && break
    sleep 0.2
done
sleep 0.5
NGINX_PIDS=$(echo "$NGINX_PID" $(pgrep -P "$NGINX_PID" || true) | tr ' ' ',')

# profile NAME URL PIDS(comma-separated)
profile() {
    local name=$1 url=$2 pids=$3
    log "$name: wrk for ${DURATION}s, perf on pids $pids"
    chrt --batch 0 wrk -t 2 -c "$CONNECTIONS" -d "${DURATION}s" --latency "$url" >"$TMP/$name.wrk" &
    local wrk_pid=$!
    sleep 1
    perf stat -e task-clock,context-switches,cpu-migrations -p "$pids" -o "$TMP/$name.stat" -- sleep "$((DURATION - 2))" &
    local stat_pid=$!
    perf record -q -e cpu-clock -F 2999 -p "$pids" -o "$TMP/$name.data" -- sleep "$((DURATION - 2))" >/dev/null 2>&1
    wait "$stat_pid" || true
    wait "$wrk_pid"
    perf report -i "$TMP/$name.data" --no-children --sort dso,symbol --stdio 2>/dev/null |
        grep -v '^#' | grep -v '^$' >"$TMP/$name.report"
    perf report -i "$TMP/$name.data" --no-children --sort dso --stdio 2>/dev/null |
        grep -v '^#' | grep -v '^$' >"$TMP/$name.dso"
}

wait_quiet
profile nginx http://127.0.0.1:18290/.well-known/jwks.json "$NGINX_PIDS"
profile keyhost http://127.0.0.1:18280/.well-known/jwks.json "$KEYHOST_PID"
END_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$TMP" "$DURATION" "$TOP" "$START_LOAD" "$END_LOAD" <<'PY'
import re, sys
tmp, duration, top, start_load, end_load = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
window = duration - 2
print(f"\n## JWKS: keyhost and nginx under wrk (load average {start_load} at the start, {end_load} at the end)\n")
cpu_per_req = {}
print("| server | req/s | CPU µs/req | context switches/req | kernel share of samples |")
print("|---|---:|---:|---:|---:|")
for name in ("nginx", "keyhost"):
    text = open(f"{tmp}/{name}.wrk").read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    stat = open(f"{tmp}/{name}.stat").read()
    clock = float(re.search(r"([\d.,]+)\s+msec task-clock", stat).group(1).replace(",", ""))
    switches = float(re.search(r"([\d.,]+)\s+context-switches", stat).group(1).replace(",", ""))
    requests = rps * window
    kernel = 0.0
    for line in open(f"{tmp}/{name}.dso"):
        m = re.match(r"\s*([\d.]+)%\s+(\S+)", line)
        if m and m.group(2) == "[kernel.kallsyms]":
            kernel = float(m.group(1))
    cpu_per_req[name] = clock * 1000 / requests
    print(f"| {name} | {rps:,.0f} | {clock * 1000 / requests:.1f} | {switches / requests:.3f} | {kernel:.0f} % |")
# Where each server's samples go, by kind of work (symbol names matched as below).
groups = [
    ("kernel (TCP, syscalls, scheduler)", lambda dso, sym: dso == "[kernel.kallsyms]"),
    ("allocator (malloc, free)", lambda dso, sym: re.search(r"malloc|free|unlink_chunk|realloc|calloc|cfree", sym)),
    ("memcpy, memmove", lambda dso, sym: re.search(r"mem(move|cpy|set)", sym)),
    ("clock and timers", lambda dso, sym: re.search(r"clock_gettime|read_tsc|runtime::time|TokioTimer|Sleep|timer", sym)),
    ("tokio scheduler, I/O driver, sync", lambda dso, sym: re.search(r"tokio::|mio::|epoll", sym)),
    ("hyper (HTTP/1 parsing, encoding, dispatch)", lambda dso, sym: "hyper" in sym),
    ("axum, tower, tower-http (routing, layers, the handler)", lambda dso, sym: re.search(r"axum|tower|matchit", sym)),
    ("keyhost's own code (accept loop, connection)", lambda dso, sym: "keyhost::" in sym),
    ("http, bytes (header maps, buffers)", lambda dso, sym: re.search(r"\bhttp::|bytes::", sym)),
    ("nginx's own code", lambda dso, sym: dso == "nginx"),
]
print("\n### where the samples go (share of the server's samples, and µs per request)\n")
print("| kind of work | " + " | ".join(("nginx", "keyhost")) + " |")
print("|---|---:|---:|")
shares = {}
for name in ("nginx", "keyhost"):
    totals = {}
    for line in open(f"{tmp}/{name}.report"):
        m = re.match(r"\s*([\d.]+)%\s+(\S+)\s+\[[.k]\]\s+(.*)", line)
        if not m:
            continue
        share, dso, sym = float(m.group(1)), m.group(2), m.group(3).strip()
        for label, match in groups:
            if match(dso, sym):
                totals[label] = totals.get(label, 0.0) + share
                break
        else:
            totals["other"] = totals.get("other", 0.0) + share
    shares[name] = totals
for label in [g[0] for g in groups] + ["other"]:
    print(f"| {label} | " + " | ".join(
        f"{shares[n].get(label, 0.0):.1f} % ({shares[n].get(label, 0.0) * cpu_per_req[n] / 100:.2f} µs)"
        for n in ("nginx", "keyhost")) + " |")
for name in ("nginx", "keyhost"):
    print(f"\n### {name}: top {top} symbols (self time, share of the server's samples)\n")
    print("```")
    lines = [l for l in open(f"{tmp}/{name}.report") if re.match(r"\s*[\d.]+%", l)]
    for line in lines[:top]:
        # perf pads its columns (and may add empty ones, shown as "-"): one space between fields.
        line = re.sub(r"(\s+-)+\s*$", "", re.sub(r"\s+", " ", line.strip()))
        print(line[:150])
    print("```")
PY
