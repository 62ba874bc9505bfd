#!/usr/bin/env bash
# Walks the recipes of README.md in the order printed, as a new user would, and fails if any step
# fails: every ```sh block from "Quick start" up to "Development" (whose commands are the
# project's own checks, minutes to hours long), in a fresh directory that stands in for the
# checkout, with a built keyhost on the PATH.
#
#   bash tests/readme_recipes.sh [path/to/keyhost]     (default: target/debug/keyhost, built if missing)
#
# The rules are the reader's:
#   - `cargo run --release` starts the binary given (what it would build and run);
#   - a command whose program is `keyhost` alone (or `keyhost serve`) or `keyhost airkit-emulator`
#     keeps running, as in a shell of its own: it is started in the background and waited for.
#     Starting a keyhost server first stops the running one with Ctrl-C (SIGINT), as the README
#     says to;
#   - every other command runs in one shell, in order, so that variables carry over. A command
#     that exits non-zero fails the walk, and so does an HTTP error (curl runs with
#     --fail-with-body), a server that exits on its own, or an ERROR or panic in a server's log.
#
# Needs the ports the README uses (8080, 8081, 8090) free, and curl, jq and openssl.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
readme="$root/README.md"
binary=${1:-$root/target/debug/keyhost}
if [ ! -x "$binary" ]; then
    if [ $# -gt 0 ]; then
        echo "readme_recipes: $binary is not an executable" >&2
        exit 2
    fi
    (cd "$root" && cargo build --quiet)
fi
binary=$(cd "$(dirname "$binary")" && pwd)/$(basename "$binary")

for tool in curl jq openssl; do
    command -v "$tool" >/dev/null || { echo "readme_recipes: $tool is needed" >&2; exit 2; }
done
for port in 8080 8081 8090; do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
        echo "readme_recipes: something already listens on 127.0.0.1:$port, which the README uses" >&2
        exit 2
    fi
done

work=$(mktemp -d)
bin=$(mktemp -d)
ln -s "$binary" "$bin/keyhost"
export PATH="$bin:$PATH"
logs="$work.logs"
mkdir -p "$logs"

# Background processes, each in a process group of its own (so that Ctrl-C reaches keyhost
# itself, not only the shell that started it).
set -m
declare -a started=() emulators=()
keyhost_pid=""

stop() {
    local pid=$1
    kill -INT -- "-$pid" 2>/dev/null || return 0
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    for pid in "${started[@]}"; do
        stop "$pid"
    done
    rm -rf "$bin"
    if [ "$status" -eq 0 ]; then
        rm -rf "$work" "$logs"
    else
        echo "readme_recipes: FAILED; directory $work, server logs in $logs" >&2
    fi
    exit "$status"
}
trap cleanup EXIT

fail() {
    echo "readme_recipes: $*" >&2
    for log in "$logs"/*.log; do
        [ -e "$log" ] || continue
        echo "--- last lines of $(basename "$log")" >&2
        tail -n 20 "$log" >&2
    done
    exit 1
}

# HTTP errors fail the step, as they would stop a reader.
curl() { command curl --fail-with-body "$@"; }

# Waits until something answers HTTP on 127.0.0.1:$port, while process $pid lives.
await_http() {
    local port=$1 pid=$2 name=$3
    for _ in $(seq 600); do
        kill -0 "$pid" 2>/dev/null || fail "$name exited before it served"
        if [ "$(command curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/")" != 000 ]; then
            return 0
        fi
        sleep 0.1
    done
    fail "$name did not serve on port $port within a minute"
}

# The commands of the README's sh blocks, continuation lines joined, comments and blank lines
# left out; one per NUL-terminated record.
extract() {
    local in_section=0 in_block=0 indent="" cmd="" line
    while IFS= read -r line; do
        case "$line" in
            "## Quick start"*) in_section=1 ;;
            "## Development"*) in_section=0 ;;
        esac
        [ "$in_section" -eq 1 ] || continue
        if [ "$in_block" -eq 0 ]; then
            if [[ "$line" =~ ^([[:space:]]*)\`\`\`sh[[:space:]]*$ ]]; then
                in_block=1
                indent=${BASH_REMATCH[1]}
            fi
            continue
        fi
        if [[ "$line" =~ ^[[:space:]]*\`\`\`[[:space:]]*$ ]]; then
            in_block=0
            continue
        fi
        line=${line#"$indent"}
        if [ -z "$cmd" ] && [[ "$line" =~ ^[[:space:]]*(#.*)?$ ]]; then
            continue
        fi
        cmd=${cmd:+$cmd$'\n'}$line
        [[ "$line" == *\\ ]] && continue
        printf '%s\0' "$cmd"
        cmd=""
    done <"$readme"
}

# The program and its first argument, after any VAR=value assignments (comments left out).
program_of() {
    local words=() word
    read -r -a words <<<"${1//$'\\\n'/ }"
    for word in "${words[@]}"; do
        [[ "$word" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] && continue
        [[ "$word" == \#* ]] && break
        printf '%s ' "$word"
    done
}

cd "$work"
SECONDS=0
step=0
while IFS= read -r -d '' cmd; do
    step=$((step + 1))
    printf '\n==> [%d] %s\n' "$step" "$cmd"
    read -r -a prog <<<"$(program_of "$cmd")"
    case "${prog[0]:-} ${prog[1]:-}" in
        "cargo install")
            echo "(not run: $binary stands for the installed keyhost)"
            ;;
        "keyhost airkit-emulator")
            port=8090
            [[ "$cmd" =~ --listen[[:space:]]+[0-9.]+:([0-9]+) ]] && port=${BASH_REMATCH[1]}
            eval "$cmd" >"$logs/emulator.log" 2>&1 &
            pid=$!
            started+=("$pid")
            emulators+=("$pid")
            await_http "$port" "$pid" "the emulator"
            echo "(running in the background, log $logs/emulator.log)"
            ;;
        "cargo run")
            # What it builds and runs is the binary given: the server, as `keyhost` would start it.
            cmd=keyhost
            ;&
        "keyhost " | "keyhost serve")
            if [ -n "$keyhost_pid" ]; then
                echo "(Ctrl-C to the running server)"
                stop "$keyhost_pid"
            fi
            eval "$cmd" >"$logs/keyhost-$step.log" 2>&1 &
            keyhost_pid=$!
            started+=("$keyhost_pid")
            await_http 8081 "$keyhost_pid" "the server of step $step"
            echo "(running in the background, log $logs/keyhost-$step.log)"
            ;;
        *)
            eval "$cmd" || fail "step $step failed (exit $?)"
            ;;
    esac
done < <(extract)

[ "$step" -gt 0 ] || fail "no recipe found in $readme"
for pid in $keyhost_pid "${emulators[@]}"; do
    kill -0 "$pid" 2>/dev/null || fail "a server the recipes left running has exited"
done
# Log lines are "<time> <LEVEL> <target>: ...", coloured.
if sed 's/\x1b\[[0-9;]*m//g' "$logs"/*.log | grep -E '^[^ ]+ +ERROR |panicked' >&2; then
    fail "a server logged an error or a panic (above)"
fi
printf '\nreadme_recipes: %d steps passed in %d s\n' "$step" "$SECONDS"
