#!/usr/bin/env bash
# Key-change propagation across keyhost replicas sharing one PostgreSQL store, with release
# processes.
#
# Usage:
#   benches/propagation.sh
#   ROTATIONS=100 benches/propagation.sh
#
#   ROTATIONS    emergency rotations to make (default 40); each is observed on the two replicas
#                that did not make it, so there are twice as many samples
#   REPLICAS     servers on the store (default 3, at least 2)
#   POLL_MS      pause between two polls of a replica's JWKS, in milliseconds (default 1)
#   QUIET_LOAD, QUIET_WAIT, KEYHOST_BENCH_POSTGRES_URL: see benches/common.sh
#   Other KEYHOST_* variables in the environment are passed to the servers unchanged
#   (KEYHOST_REFRESH_INTERVAL, the periodic re-read, defaults to 2s; changes normally arrive
#   sooner, by LISTEN/NOTIFY).
#
# What it does: builds keyhost in release mode, creates a schema of its own in PostgreSQL, starts
# REPLICAS servers on it (one master key and admin token; public listeners 127.0.0.1:19180,
# :19182, ..., internal :19181, :19183, ...), then ROTATIONS times, through each replica in turn
# and 100-400 ms apart (a random pause, so that the rotations do not keep step with the periodic
# re-read): POST /admin/keys/rotate {"alg":"ES256","emergency":true}, and from the moment its
# answer arrives, polls every other replica's JWKS over a kept-alive connection every POLL_MS
# until the new kid is listed and the revoked one is gone. Prints p50, p90, p99 and max of those
# delays, and the same for the replica that rotated (which should show the change at once).
# The schema, the servers and the temporary directory are removed on exit.
set -euo pipefail

cd "$(dirname "$0")/.."
# shellcheck source=benches/common.sh
. benches/common.sh

ROTATIONS=${ROTATIONS:-40}
REPLICAS=${REPLICAS:-3}
POLL_MS=${POLL_MS:-1}
[[ "$ROTATIONS" =~ ^[1-9][0-9]*$ ]] || die "ROTATIONS must be a positive integer, got '$ROTATIONS'"
[[ "$REPLICAS" =~ ^[0-9]+$ ]] && [ "$REPLICAS" -ge 2 ] && [ "$REPLICAS" -le 9 ] \
    || die "REPLICAS must be 2 to 9, got '$REPLICAS'"
[[ "$POLL_MS" =~ ^[0-9]+$ ]] || die "POLL_MS must be a whole number of milliseconds, got '$POLL_MS'"
for tool in cargo curl python3; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done

TMP=$(mktemp -d -t keyhost-propagation.XXXXXX)
PIDS=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    pg_drop_schema
    rm -rf "$TMP"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

log "cargo build --release --locked"
cargo build --release --locked
BIN="${CARGO_TARGET_DIR:-target}/release/keyhost"
[ -x "$BIN" ] || die "$BIN not found after build"

pg_create_schema
ADMIN="bench-admin-token-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
MASTER_KEY=$(head -c 32 /dev/urandom | base64)

wait_ready() {  # wait_ready URL PID
    for _ in $(seq 150); do
        kill -0 "$2" 2>/dev/null || return 1
        [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "$1" || true)" = 200 ] && return 0
        sleep 0.2
    done
    return 1
}

ENDPOINTS=()
for i in $(seq 0 $((REPLICAS - 1))); do
    public=127.0.0.1:$((19180 + 2 * i))
    internal=127.0.0.1:$((19181 + 2 * i))
    mkdir -m 0700 "$TMP/r$i"
    env -u KEYHOST_DATABASE_URL_FILE \
        KEYHOST_DATABASE_URL="$PG_URL" \
        KEYHOST_DATA_DIR="$TMP/r$i" KEYHOST_KEYS_DIR="$TMP/r$i" \
        KEYHOST_PUBLIC_ADDR="$public" KEYHOST_INTERNAL_ADDR="$internal" \
        KEYHOST_ADMIN_TOKEN="$ADMIN" KEYHOST_MASTER_KEY="$MASTER_KEY" \
        KEYHOST_PARTNER_ID=bench-partner RUST_LOG="${RUST_LOG:-warn}" \
        "$BIN" serve >"$TMP/r$i.log" 2>&1 &
    PIDS+=($!)
    if ! wait_ready "http://$internal/readyz" "${PIDS[-1]}"; then
        tail -n 30 "$TMP/r$i.log" >&2 || true
        die "replica $i did not become ready"
    fi
    log "replica $i ready (public $public, internal $internal)"
    ENDPOINTS+=("$public,$internal")
done

wait_quiet
python3 - "$ADMIN" "$ROTATIONS" "$POLL_MS" "$START_LOAD" "${ENDPOINTS[@]}" <<'PY'
import http.client, json, random, sys, time

admin, rotations, poll_ms, start_load = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
replicas = [tuple(e.split(",")) for e in sys.argv[5:]]

def conn(addr):
    host, port = addr.rsplit(":", 1)
    return http.client.HTTPConnection(host, int(port), timeout=5)

public = [conn(p) for p, _ in replicas]
internal = [conn(i) for _, i in replicas]

def kids(i):
    public[i].request("GET", "/.well-known/jwks.json")
    r = public[i].getresponse()
    body = r.read()
    if r.status != 200:
        raise SystemExit(f"replica {i} answered {r.status} to GET /.well-known/jwks.json: {body[:200]!r}")
    return {k["kid"] for k in json.loads(body)["keys"]}

def rotate(i):
    internal[i].request("POST", "/admin/keys/rotate", body=json.dumps({"alg": "ES256", "emergency": True}),
                        headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"})
    r = internal[i].getresponse()
    body = r.read()
    if r.status not in (200, 201):
        raise SystemExit(f"rotate through replica {i} answered {r.status}: {body[:300]!r}")
    doc = json.loads(body)
    return doc["key"]["kid"], set(doc.get("revoked") or [])

remote, local, rotate_ms = [], [], []
local_first = 0
rng = random.Random()
for n in range(rotations):
    time.sleep(rng.uniform(0.1, 0.4))
    through = n % len(replicas)
    sent = time.perf_counter()
    new, revoked = rotate(through)
    answered = time.perf_counter()
    rotate_ms.append((answered - sent) * 1000)
    waiting = set(range(len(replicas)))
    polls = 0
    while waiting:
        for i in sorted(waiting):
            listed = kids(i)
            if new in listed and not (revoked & listed):
                delay = (time.perf_counter() - answered) * 1000
                (local if i == through else remote).append(delay)
                if i == through and polls == 0:
                    local_first += 1
                waiting.discard(i)
        polls += 1
        if time.perf_counter() - answered > 10:
            raise SystemExit(f"rotation {n}: replicas {sorted(waiting)} did not show {new} within 10 s")
        if waiting and poll_ms:
            time.sleep(poll_ms / 1000)
    print(f"==> rotation {n + 1}/{rotations} through replica {through}: answered in {rotate_ms[-1]:.1f} ms, "
          f"others after " + ", ".join(f"{d:.1f}" for d in remote[-(len(replicas) - 1):]) + " ms",
          file=sys.stderr)

def pct(values, p):
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round((len(s) - 1) * p)))]

def line(values):
    return (f"p50 {pct(values, 0.5):.1f} ms, p90 {pct(values, 0.9):.1f} ms, p99 {pct(values, 0.99):.1f} ms, "
            f"max {max(values):.1f} ms")

end_load = open("/proc/loadavg").read().split()[:3]
print()
print(f"## key-change propagation across {len(replicas)} replicas on one PostgreSQL schema "
      f"({rotations} emergency ES256 rotations, JWKS polled every {poll_ms} ms; load average "
      f"{start_load} at the start, {' '.join(end_load)} at the end)")
print()
print(f"- on the other replicas, from the rotation's answer ({len(remote)} observations): {line(remote)}")
print(f"- on the replica that rotated ({len(local)} observations): {line(local)}; "
      f"listed at the first poll {local_first} times of {len(local)}")
print(f"- the rotation itself (POST /admin/keys/rotate, {len(rotate_ms)} calls): {line(rotate_ms)}")
PY
