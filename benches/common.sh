# Shared by the bench scripts (sourced, not run): logging, installing tools, waiting for a
# quiet machine, running a load generator (wrk or oha) and reading its figures, CPU accounting,
# and a throw-away PostgreSQL schema.
#
# Settings read here (environment):
#   QUIET_LOAD   before measuring, wait until the 1-minute load average is below this (default
#                1.0); QUIET_WAIT bounds the wait in seconds (default 600, 0 = do not wait)
#   KEYHOST_BENCH_POSTGRES_URL
#                PostgreSQL server and database for STORE=postgres (default
#                postgres://postgres@127.0.0.1:5432/test); each run creates a schema of its own
#                there and drops it on exit

export PATH="$PATH:${CARGO_HOME:-$HOME/.cargo}/bin:/usr/sbin:/sbin"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

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

load1() { cut -d' ' -f1 /proc/loadavg; }

# wait_quiet: waits (at most QUIET_WAIT seconds) until the 1-minute load average is below
# QUIET_LOAD, so that a measurement does not start while something else keeps the cores busy.
# Sets START_LOAD to the load average measured when it returns.
wait_quiet() {
    local limit=${QUIET_LOAD:-1.0} wait=${QUIET_WAIT:-600} deadline
    deadline=$((SECONDS + wait))
    while ! python3 -c "import sys; sys.exit(0 if float('$(load1)') < float('$limit') else 1)"; do
        if [ "$SECONDS" -ge "$deadline" ]; then
            log "load average still $(load1) after ${wait}s (wanted < $limit); measuring anyway"
            break
        fi
        log "load average $(load1), waiting for < $limit"
        sleep 10
    done
    START_LOAD=$(cut -d' ' -f1-3 /proc/loadavg)
    log "load average when measuring starts: $START_LOAD"
}

# ---------------------------------------------------------------------------
# Load generators
# ---------------------------------------------------------------------------
# setup_loadgens GEN...: installs what is missing (wrk from apt, oha with cargo install) and sets
# OHA_FLAGS for this oha's version.
OHA_FLAGS=()
setup_loadgens() {
    local gen help
    for gen in "$@"; do
        case "$gen" in
            wrk)
                command -v wrk >/dev/null 2>&1 || apt_install wrk
                command -v wrk >/dev/null 2>&1 || die "wrk is not available"
                log "load generator: $(wrk --version 2>&1 | head -n1)"
                ;;
            oha)
                if ! command -v oha >/dev/null 2>&1; then
                    log "oha not found: cargo install oha --locked"
                    cargo install oha --locked || die "oha could not be installed"
                fi
                help=$(oha --help 2>&1 || true)
                # oha changed its JSON switch over time: `--output-format json` in newer
                # releases, `-j` before. Requests still in flight at the deadline are awaited
                # (when supported) rather than counted as errors.
                if grep -q -- '--output-format' <<<"$help"; then
                    OHA_FLAGS=(--output-format json)
                else
                    OHA_FLAGS=(-j)
                fi
                if grep -q -- '--wait-ongoing-requests-after-deadline' <<<"$help"; then
                    OHA_FLAGS+=(--wait-ongoing-requests-after-deadline)
                fi
                log "load generator: $(oha --version 2>/dev/null | head -n1) (${OHA_FLAGS[*]})"
                ;;
            *) die "unknown load generator '$gen' (wrk or oha)" ;;
        esac
    done
}

# run_waited OUTFILE CMD...: runs CMD in the background and waits for it, so that an interrupt
# stops the script (and CMD, via the caller's cleanup, which kills $CHILD_PID) at once.
CHILD_PID=
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

# children_ticks: CPU time, in clock ticks, of this shell's reaped children (the load generator
# among them). `times` runs in this shell (a command substitution would fork and see zero).
# Sets CHILD_TICKS.
children_ticks() {
    times >"$TMP/.times"
    # The shell's own line, then the children's: "XmY.YYYs XmY.YYYs".
    CHILD_TICKS=$(sed -n 2p "$TMP/.times" | python3 -c '
import re, sys
print(round(sum(int(m) * 60 + float(s) for m, s in re.findall(r"(\d+)m([\d.]+)s", sys.stdin.read())) * 100))')
}

# proc_ticks PID...: utime + stime of these processes (every thread), in clock ticks; a pid
# that is gone counts 0.
proc_ticks() {
    local total=0 pid stat
    local -a f
    for pid in "$@"; do
        [ -n "$pid" ] || continue
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        # The fields after the command name (which may hold spaces): state is f[0], utime f[11].
        read -r -a f <<<"${stat##*) }"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

# system_ticks: "busy steal" clock ticks of the whole machine since boot (busy: user, nice,
# system, irq, softirq; steal: time the hypervisor gave to someone else).
system_ticks() {
    awk '/^cpu / {print $2 + $3 + $4 + $7 + $8, $9}' /proc/stat
}

# run_load NAME GEN POLICY METHOD URL BODY [HEADER...]
#   Runs GEN (wrk or oha) for $DURATION with $CONNECTIONS connections, under POLICY (`batch`:
#   SCHED_BATCH via chrt, `normal`), and writes
#   "req/s p50_ms p99_ms non2xx errors requests loadgen_ticks" to $TMP/NAME.result.
#   BODY may be empty (no body); each HEADER is "Name: value".
run_load() {
    local name=$1 gen=$2 policy=$3 method=$4 url=$5 body=$6
    shift 6
    local headers=("$@")
    local out="$TMP/$name.out" sched=() before after
    if [ "$policy" = batch ]; then
        sched=(chrt --batch 0)
    fi
    log "$name: $gen $method $url for $DURATION with $CONNECTIONS connections ($policy)"
    children_ticks
    before=$CHILD_TICKS
    if [ "$gen" = oha ]; then
        local args=(-z "$DURATION" -c "$CONNECTIONS" --no-tui "${OHA_FLAGS[@]}" -m "$method")
        local h
        for h in "${headers[@]}"; do
            args+=(-H "$h")
        done
        if [ -n "$body" ]; then
            args+=(-d "$body")
        fi
        run_waited "$out" "${sched[@]}" oha "${args[@]}" "$url"
        children_ticks
        after=$CHILD_TICKS
        python3 - "$out" "$((after - before))" >"$TMP/$name.result" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["summary"]
p = r.get("latencyPercentiles", {})
codes = {int(k): v for k, v in r.get("statusCodeDistribution", {}).items()}
non2xx = sum(v for k, v in codes.items() if not 200 <= k < 300)
errors = sum(r.get("errorDistribution", {}).values())
requests = sum(codes.values()) + errors
ms = lambda v: float("nan") if v is None else v * 1000.0
print(f'{s["requestsPerSec"]:.1f} {ms(p.get("p50")):.3f} {ms(p.get("p99")):.3f} {non2xx} {errors} {requests} {sys.argv[2]}')
PY
    else
        local threads=$((CONNECTIONS < 2 ? CONNECTIONS : 2))
        local script="$TMP/$name.lua"
        # wrk sends what the script sets: method, body and headers, the same for every request.
        python3 - "$method" "$body" "${headers[@]}" >"$script" <<'PY'
import json, sys
method, body, headers = sys.argv[1], sys.argv[2], sys.argv[3:]
print(f"wrk.method = {json.dumps(method)}")
if body:
    print(f"wrk.body = {json.dumps(body)}")
for h in headers:
    name, value = h.split(":", 1)
    print(f"wrk.headers[{json.dumps(name.strip())}] = {json.dumps(value.strip())}")
PY
        run_waited "$out" "${sched[@]}" wrk -t "$threads" -c "$CONNECTIONS" -d "$DURATION" --latency -s "$script" "$url"
        children_ticks
        after=$CHILD_TICKS
        python3 - "$out" "$((after - before))" >"$TMP/$name.result" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
def ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}[unit]
def pct(p):
    m = re.search(rf"^\s*{p}%\s+([\d.]+)(us|ms|s|m)\s*$", text, re.M)
    return ms(*m.groups()) if m else float("nan")
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
requests = int(re.search(r"(\d+) requests in", text).group(1))
m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
non2xx = int(m.group(1)) if m else 0
m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
errors = sum(map(int, m.groups())) if m else 0
print(f"{rps:.1f} {pct(50):.3f} {pct(99):.3f} {non2xx} {errors} {requests} {sys.argv[2]}")
PY
    fi
    log "$name: $(cut -d' ' -f1-5 "$TMP/$name.result") (req/s p50_ms p99_ms non2xx errors)"
}

# ---------------------------------------------------------------------------
# PostgreSQL
# ---------------------------------------------------------------------------
PG_BASE_URL=${KEYHOST_BENCH_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}
PG_SCHEMA=

# pg_create_schema: checks that PostgreSQL answers, creates a schema of this run's own and sets
# PG_SCHEMA and PG_URL (the server's URL with that schema as its search_path). The caller's
# cleanup calls pg_drop_schema.
pg_create_schema() {
    command -v psql >/dev/null 2>&1 || apt_install postgresql-client
    command -v psql >/dev/null 2>&1 || die "psql is not available"
    local answer
    if ! answer=$(PGCONNECT_TIMEOUT=5 psql "$PG_BASE_URL" -XAtq -c 'SELECT version()' 2>&1); then
        die "PostgreSQL does not answer at $PG_BASE_URL (set KEYHOST_BENCH_POSTGRES_URL): $answer"
    fi
    log "PostgreSQL: ${answer%% on *}"
    PG_SCHEMA="keyhost_bench_$$_$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
    PGCONNECT_TIMEOUT=5 psql "$PG_BASE_URL" -XAtq -v ON_ERROR_STOP=1 -c "CREATE SCHEMA $PG_SCHEMA" \
        || die "could not create schema $PG_SCHEMA"
    local sep='?'
    case "$PG_BASE_URL" in *\?*) sep='&' ;; esac
    # PG_OPTIONS: more `-c name=value` settings for keyhost's sessions, URL-encoded.
    case "$PG_BASE_URL" in
        *sslmode=*) PG_URL="$PG_BASE_URL${sep}options=-c%20search_path%3D$PG_SCHEMA${PG_OPTIONS:-}" ;;
        *) PG_URL="$PG_BASE_URL${sep}sslmode=disable&options=-c%20search_path%3D$PG_SCHEMA${PG_OPTIONS:-}" ;;
    esac
    log "PostgreSQL schema $PG_SCHEMA"
}

pg_drop_schema() {
    if [ -n "$PG_SCHEMA" ]; then
        PGCONNECT_TIMEOUT=5 psql "$PG_BASE_URL" -XAtq -c "DROP SCHEMA IF EXISTS $PG_SCHEMA CASCADE" \
            >/dev/null 2>&1 || log "could not drop schema $PG_SCHEMA"
        PG_SCHEMA=
    fi
}

# CPU ticks the PostgreSQL server's processes used (all of them: other clients of the same
# server count too); empty when they cannot be seen (another host, or not permitted).
postgres_pids() {
    local master
    master=$(PGCONNECT_TIMEOUT=2 psql "$PG_BASE_URL" -XAtq -c \
        "SELECT setting FROM pg_settings WHERE name = 'data_directory'" 2>/dev/null) || return 0
    [ -r "$master/postmaster.pid" ] || return 0
    master=$(head -n1 "$master/postmaster.pid")
    echo "$master" $(pgrep -P "$master" 2>/dev/null || true)
}
