#!/usr/bin/env bash
# Issuance throughput of keyhost's proxy against the AIR Kit emulator, with no injected faults,
# and the latency the proxy adds over calling the emulator directly.
#
# Usage:
#   benches/issuance.sh
#   DURATION=20s CONNECTIONS=32 benches/issuance.sh
#   STORE=both LOADGEN=both ROUNDS=3 benches/issuance.sh
#
#   DURATION     length of each scenario (default 10s; a bare number means seconds)
#   CONNECTIONS  concurrent connections (default 16)
#   ROUNDS       repetitions of the set of scenarios, medians reported (default 1)
#   STORE        `sqlite` (default), `postgres` (a schema of its own in KEYHOST_BENCH_POSTGRES_URL,
#                default postgres://postgres@127.0.0.1:5432/test, dropped at the end), or `both`
#   LOADGEN      `wrk` (default), `oha`, or `both` (each scenario with each, back to back)
#   QUIET_LOAD, QUIET_WAIT: see benches/common.sh
#   PG_STATEMENT_LOG
#                path of the PostgreSQL server's log file (readable by this script; the server
#                must log to it, e.g. /var/log/postgresql/postgresql-15-main.log on Debian):
#                keyhost's own sessions then log every statement with its duration
#                (`log_min_duration_statement=0`, set in the connection's options, which needs a
#                superuser), and the report adds a profile of the store's work per issuance:
#                transactions, round trips, time waiting for the write lock and holding it, and
#                the time keyhost took between two statements of one write transaction
#
# It builds keyhost in release mode, starts the emulator (`keyhost airkit-emulator`, on-chain
# delay 0) and keyhost pointed at it (one emulator per keyhost, each trusting its keyhost's
# JWKS), on loopback only, creates an API client, and in each round measures:
#   (a) direct: POST /v1/credentials/issue-on-behalf on the emulator with one pre-minted
#       Partner JWT (the floor: what a caller without keyhost would pay per request);
#   (b) proxy:  POST /v1/credentials/issue-on-behalf on keyhost, which records the issuance in
#       its store (SQLite: synchronous=FULL, so each record is on disk before AIR Kit is called;
#       PostgreSQL: committed), mints a fresh JWT, calls the emulator, records the answer, and
#       polls the status to ONCHAIN in the background; once per store.
# After each proxy run it waits (at most SETTLE seconds, default 20) until no issuance of it is
# still being followed, so that one run's background polls weigh little on the next. Prints req/s and p50/p99 of each,
# the latency the proxy adds at p50 and p99, and the CPU time per issuance of keyhost, the
# emulator and the PostgreSQL server (all its clients). Needs cargo, curl, python3, and wrk or oha
# (installed when missing: wrk from apt, oha with `cargo install oha --locked`).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benches/common.sh
. benches/common.sh

DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-16}
ROUNDS=${ROUNDS:-1}
STORE=${STORE:-sqlite}
LOADGEN=${LOADGEN:-wrk}
[[ "$DURATION" =~ ^[0-9]+$ ]] && DURATION="${DURATION}s"
[[ "$CONNECTIONS" =~ ^[1-9][0-9]*$ ]] || die "CONNECTIONS must be a positive integer, got '$CONNECTIONS'"
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ ]] || die "ROUNDS must be a positive integer, got '$ROUNDS'"
[ "$LOADGEN" = both ] && LOADGEN="wrk oha"
read -r -a GENS <<<"$LOADGEN"
case "$STORE" in
    sqlite) STORES=(sqlite) ;;
    postgres) STORES=(postgres) ;;
    both) STORES=(sqlite postgres) ;;
    *) die "STORE must be sqlite, postgres or both, got '$STORE'" ;;
esac
CLK_TCK=$(getconf CLK_TCK)
ADMIN=bench-admin-token-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')

for tool in cargo curl python3; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool is required"
done

TMP=$(mktemp -d -t keyhost-issuance.XXXXXX)
PIDS=()
cleanup() {
    local status=$?
    trap - EXIT INT TERM
    for p in "$CHILD_PID" "${PIDS[@]}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    pg_drop_schema
    rm -rf "$TMP"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

setup_loadgens "${GENS[@]}"
cargo build --release --locked --quiet
BIN="${CARGO_TARGET_DIR:-target}/release/keyhost"

wait_http() {
    for _ in $(seq 1 300); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    die "$1 did not answer"
}

# start STORE INDEX: an emulator and a keyhost pointed at it.
declare -A INTERNAL=() EMULATOR=() KH=() EMU=() API_KEY=()
start() {
    local store=$1 i=$2
    local public=127.0.0.1:$((19080 + 2 * i)) internal=127.0.0.1:$((19081 + 2 * i)) emulator=127.0.0.1:$((19090 + i))
    local db=(-u KEYHOST_DATABASE_URL -u KEYHOST_DATABASE_URL_FILE)
    if [ "$store" = postgres ]; then
        if [ -n "${PG_STATEMENT_LOG:-}" ]; then
            [ -r "$PG_STATEMENT_LOG" ] || die "PG_STATEMENT_LOG=$PG_STATEMENT_LOG is not readable"
            PG_OPTIONS="%20-c%20log_min_duration_statement%3D0"
        fi
        pg_create_schema
        db=(-u KEYHOST_DATABASE_URL_FILE KEYHOST_DATABASE_URL="$PG_URL")
    fi
    RUST_LOG=warn "$BIN" airkit-emulator --listen "$emulator" \
        --jwks-url "http://$public/.well-known/jwks.json" --partner-id bench-partner \
        --onchain-delay 0s >"$TMP/emulator-$store.log" 2>&1 &
    PIDS+=($!)
    EMU[$store]=$!
    mkdir -m 0700 "$TMP/$store"
    env "${db[@]}" KEYHOST_DATA_DIR="$TMP/$store/data" KEYHOST_KEYS_DIR="$TMP/$store/keys" \
        KEYHOST_PUBLIC_ADDR="$public" KEYHOST_INTERNAL_ADDR="$internal" \
        KEYHOST_PARTNER_ID=bench-partner KEYHOST_ADMIN_TOKEN="$ADMIN" \
        KEYHOST_CLIENT_RATE_LIMIT=0 KEYHOST_AIRKIT_BASE_URL="http://$emulator/v1" \
        KEYHOST_ISSUER_DID=did:air:id:test:bench KEYHOST_CREDENTIAL_ID=bench-program \
        RUST_LOG=warn "$BIN" serve >"$TMP/keyhost-$store.log" 2>&1 &
    PIDS+=($!)
    KH[$store]=$!
    wait_http "http://$public/healthz"
    INTERNAL[$store]="http://$internal"
    EMULATOR[$store]="http://$emulator"
    API_KEY[$store]=$(curl -fsS -X POST "http://$internal/admin/clients" -H "Authorization: Bearer $ADMIN" \
        -H 'content-type: application/json' -d '{"name":"bench","scopes":["issue"]}' |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["apiKey"])')
    log "keyhost on $store: internal $internal, emulator $emulator"
}
i=0
for store in "${STORES[@]}"; do
    start "$store" "$i"
    i=$((i + 1))
done
FIRST=${STORES[0]}
JWT=$(curl -fsS -X POST "${INTERNAL[$FIRST]}/v1/tokens" -H "Authorization: Bearer ${API_KEY[$FIRST]}" \
    -H 'content-type: application/json' -d '{"email":"bench@example.com"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
SUBJECT='{"kycVerified":true,"kycLevel":"basic"}'
PG_PIDS=
if [ "$STORE" != sqlite ]; then PG_PIDS=$(postgres_pids); fi

# settle STORE: waits (at most SETTLE seconds, default 20) until no issuance is queued or
# submitted. (Status polls back off from 1 s to 30 s, so after a long run the last few can take
# minutes; those that remain are light.)
settle() {
    local store=$1 state n deadline=$((SECONDS + ${SETTLE:-20}))
    while [ "$SECONDS" -lt "$deadline" ]; do
        n=0
        for state in queued submitted; do
            n=$((n + $(curl -fsS "${INTERNAL[$store]}/admin/issuances?state=$state&limit=1" \
                -H "Authorization: Bearer $ADMIN" |
                python3 -c 'import json,sys; print(len(json.load(sys.stdin)["issuances"]))')))
        done
        [ "$n" = 0 ] && return 0
        sleep 0.5
    done
    log "issuances on $store still being followed after ${SETTLE:-20} s; going on"
}

# measure NAME GEN STORE URL HEADER BODY: run_load plus CPU per party ("keyhost emulator postgres").
measure() {
    local name=$1 gen=$2 store=$3 url=$4 header=$5 body=$6 k0 e0 p0 k1 e1 p1
    # shellcheck disable=SC2086
    k0=$(proc_ticks "${KH[$store]}"); e0=$(proc_ticks "${EMU[$store]}"); p0=$(proc_ticks $PG_PIDS)
    run_load "$name" "$gen" normal POST "$url" "$body" "$header" "Content-Type: application/json"
    # shellcheck disable=SC2086
    k1=$(proc_ticks "${KH[$store]}"); e1=$(proc_ticks "${EMU[$store]}"); p1=$(proc_ticks $PG_PIDS)
    echo "$((k1 - k0)) $((e1 - e0)) $((p1 - p0))" >"$TMP/$name.cpu"
}

wait_quiet
if [ -n "${PG_STATEMENT_LOG:-}" ]; then LOG_START=$(wc -l <"$PG_STATEMENT_LOG"); fi
for round in $(seq "$ROUNDS"); do
    log "round $round of $ROUNDS"
    for gen in "${GENS[@]}"; do
        measure "direct.$gen.$round" "$gen" "$FIRST" "${EMULATOR[$FIRST]}/v1/credentials/issue-on-behalf" \
            "x-partner-auth: $JWT" \
            "{\"issuerDid\":\"did:air:id:test:bench\",\"credentialId\":\"bench-program\",\"credentialSubject\":$SUBJECT}"
        for store in "${STORES[@]}"; do
            measure "proxy-$store.$gen.$round" "$gen" "$store" "${INTERNAL[$store]}/v1/credentials/issue-on-behalf" \
                "Authorization: Bearer ${API_KEY[$store]}" \
                "{\"email\":\"bench@example.com\",\"credentialSubject\":$SUBJECT}"
            settle "$store"
        done
    done
done
END_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
if [ -n "${PG_STATEMENT_LOG:-}" ]; then
    # Only keyhost's sessions log every statement; other sessions' slow statements would show
    # as lines without this run's schema in their transactions, and are rare.
    tail -n +"$((LOG_START + 1))" "$PG_STATEMENT_LOG" | grep ' duration: ' >"$TMP/statements" || true
fi

: >"$TMP/onchain"
for store in "${STORES[@]}"; do
    counts=
    for state in onchain queued submitted failed stalled unconfirmed; do
        counts="$counts $(curl -fsS "${INTERNAL[$store]}/admin/issuances?state=$state&limit=1000" -H "Authorization: Bearer $ADMIN" |
            python3 -c 'import json,sys; print(len(json.load(sys.stdin)["issuances"]))')"
    done
    echo "$store$counts" >>"$TMP/onchain"
done

python3 - "$TMP" "$ROUNDS" "$LOADGEN" "$STORE" "$DURATION" "$CONNECTIONS" "$CLK_TCK" "$START_LOAD" "$END_LOAD" <<'PY'
import statistics, sys
tmp, rounds, loadgen, store, duration, connections, clk, start_load, end_load = sys.argv[1:10]
rounds, clk = range(1, int(rounds) + 1), int(clk)
stores = ["sqlite", "postgres"] if store == "both" else [store]
label = {"direct": "emulator directly", "proxy-sqlite": "through keyhost, SQLite",
         "proxy-postgres": "through keyhost, PostgreSQL"}
rows = ["direct"] + [f"proxy-{s}" for s in stores]

def load(name):
    rps, p50, p99, non2xx, errors, requests, _ = open(f"{tmp}/{name}.result").read().split()
    k, e, p = (int(v) for v in open(f"{tmp}/{name}.cpu").read().split())
    n = max(int(requests), 1)
    us = lambda t: t / clk * 1e6 / n
    return dict(rps=float(rps), p50=float(p50), p99=float(p99), bad=int(non2xx) + int(errors),
                keyhost=us(k), emulator=us(e), pg=us(p))

med = statistics.median
print(f"\n## issuance ({len(rounds)} round(s) of {duration}, {connections} connections; load average "
      f"{start_load} at the start, {end_load} at the end)")
for gen in loadgen.split():
    res = {row: [load(f"{row}.{gen}.{r}") for r in rounds] for row in rows}
    m = lambda row, f: med([x[f] for x in res[row]])
    print(f"\n### {gen} (medians over the rounds)\n")
    print("| path | issuances/s | p50 ms | p99 ms | keyhost CPU µs/req | emulator µs/req | PostgreSQL µs/req | non-2xx + errors |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        kh = "—" if row == "direct" else f"{m(row, 'keyhost'):.0f}"
        pg = f"{m(row, 'pg'):.0f}" if store != "sqlite" else "—"
        print(f"| {label[row]} | {m(row, 'rps'):,.0f} | {m(row, 'p50'):.2f} | {m(row, 'p99'):.2f} | {kh} | "
              f"{m(row, 'emulator'):.0f} | {pg} | {sum(x['bad'] for x in res[row])} |")
    print()
    for row in rows[1:]:
        print(f"- {label[row]}: keyhost adds {m(row, 'p50') - m('direct', 'p50'):.2f} ms at p50 and "
              f"{m(row, 'p99') - m('direct', 'p99'):.2f} ms at p99")
    if len(stores) == 2:
        ratio = [a["rps"] / b["rps"] for a, b in zip(res["proxy-postgres"], res["proxy-sqlite"])]
        print(f"- PostgreSQL / SQLite issuances/s: {med(ratio):.2f} (rounds: "
              + ", ".join(f"{r:.2f}" for r in ratio) + ")")
import os
if os.path.exists(f"{tmp}/statements"):
    import datetime, re
    issued = sum(int(open(f"{tmp}/proxy-postgres.{g}.{r}.result").read().split()[5])
                 for g in loadgen.split() for r in rounds)
    begin_w, hold, wait, gaps, commits, trips, reads = {}, [], [], [], [], [], 0
    last, in_tx = {}, {}
    for line in open(f"{tmp}/statements"):
        m = re.match(r"(\S+ \S+) \S+ \[(\d+)\].*duration: ([\d.]+) ms  (\w+)[^:]*: (.*)", line)
        if not m:
            continue
        end = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp() * 1000
        pid, took, kind, text = m.group(2), float(m.group(3)), m.group(4), m.group(5)
        if kind in ("parse", "bind"):
            continue  # the extended protocol's parse/bind/execute go in one round trip
        if pid in begin_w:
            gaps.append(end - took - last[pid])
            trips[-1] += 1
        last[pid] = end
        if text.startswith("BEGIN ISOLATION LEVEL READ COMMITTED"):
            begin_w[pid] = end
            wait.append(took)
            trips.append(1)
        elif text.startswith("COMMIT") and pid in begin_w:
            hold.append(end - begin_w.pop(pid))
            commits.append(took)
        elif text.startswith("ROLLBACK"):
            begin_w.pop(pid, None)
        elif text.startswith("BEGIN"):
            reads += 1
    q = lambda a, p: sorted(a)[round((len(a) - 1) * p)] if a else float("nan")
    per = max(issued, 1)
    print(f"\n### PostgreSQL statement profile ({issued:,} issuances through keyhost on PostgreSQL)\n")
    print(f"- write transactions: {len(hold):,} ({len(hold) / per:.1f} per issuance, background polls and "
          f"claims included), {q(trips, 0.5)} round trips each (median); read transactions: {reads / per:.1f} per issuance")
    print(f"- waiting for the write lock (the BEGIN batch): p50 {q(wait, 0.5):.2f} ms, p90 {q(wait, 0.9):.2f} ms, "
          f"p99 {q(wait, 0.99):.2f} ms; {sum(wait) / per:.1f} ms per issuance in all")
    print(f"- holding it (BEGIN to COMMIT): p50 {q(hold, 0.5):.2f} ms, p90 {q(hold, 0.9):.2f} ms, p99 "
          f"{q(hold, 0.99):.2f} ms; {sum(hold) / per:.1f} ms per issuance, which bounds the rate at "
          f"{1000 * per / max(sum(hold), 1):.0f} issuances/s")
    print(f"- of the holding: COMMIT {sum(commits) / max(sum(hold), 1) * 100:.0f} % (p50 {q(commits, 0.5):.2f} ms), "
          f"keyhost's time between two statements {sum(gaps) / max(sum(hold), 1) * 100:.0f} % "
          f"(p50 {q(gaps, 0.5):.2f} ms, p90 {q(gaps, 0.9):.2f} ms, p99 {q(gaps, 0.99):.2f} ms)")
print()
for line in open(f"{tmp}/onchain"):
    s, onchain, *others = line.split()
    print(f"- {s}: when the run ended, {onchain} issuances on chain (counted up to 1000), "
          f"{sum(map(int, others))} in any other state (queued, submitted, failed, stalled, unconfirmed)")
PY
