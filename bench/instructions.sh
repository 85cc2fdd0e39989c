#!/usr/bin/env bash
# instructions.sh -- user-space instructions per operation of a real qserver, counted by
# valgrind (callgrind) while ../shared/loadgen drives it over TCP: a figure that does not
# move with the machine's load, for comparing builds (pure / compiled) on a busy host.
# The server's own CPU in user space: the kernel's part (the sockets) is not counted.
#
#   bench/instructions.sh [--tree DIR] [--mode put|cycle] [--jobs N1,N2] [VAR=VALUE ...]
#   bench/instructions.sh --mode cycle QSERVER_PURE=1
#   bench/instructions.sh --store --mode cycle   # a --store redis:// node (redis-server not counted)
#
# Runs the server twice (N1 and N2 operations, default 2000 and 10000) and prints the
# slope, so startup, imports and shutdown drop out. put: 10 connections, one put in
# flight each; cycle: 5 producers and 5 workers, an operation being one job put,
# reserved and deleted. Each run takes about a minute under valgrind.
# --store: the server is a shared-store node on a redis-server started here (a temporary
# directory, a free port, no persistence, stopped by its PID at the end); only the node
# runs under valgrind, so the figure is the node's Python per operation.
set -euo pipefail

HERE="$(cd "$(dirname "$0")" && pwd)"
TREE="$(dirname "$HERE")"
MODE=put
STORE=
N1=2000
N2=10000
LG="$(dirname "$TREE")/shared/loadgen/bin/loadgen"
ENVS=()
while [ $# -gt 0 ]; do
    case "$1" in
    --tree) TREE=$2; shift 2 ;;
    --mode) MODE=$2; shift 2 ;;
    --store) STORE=1; shift ;;
    --jobs) N1=${2%,*}; N2=${2#*,}; shift 2 ;;
    --loadgen) LG=$2; shift 2 ;;
    -h|--help) sed -n '2,/^set -e/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *=*) ENVS+=("$1"); shift ;;
    *) echo "instructions.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
command -v valgrind >/dev/null || { echo "instructions.sh: needs valgrind" >&2; exit 2; }
[ -x "$LG" ] || { echo "instructions.sh: no loadgen at $LG (--loadgen PATH)" >&2; exit 2; }
# The interpreter itself, not a wrapper script (pyenv's shims are shell scripts).
PY="$(python3 -c 'import sys; print(sys.executable)')"

STOREARGS=()
if [ -n "$STORE" ]; then
    command -v redis-server >/dev/null || { echo "instructions.sh: --store needs redis-server" >&2; exit 2; }
    RDIR="$(mktemp -d)"
    RPORT="$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    redis-server --bind 127.0.0.1 --port "$RPORT" --dir "$RDIR" --save "" --appendonly no \
        --daemonize no --logfile "$RDIR/redis.log" >/dev/null 2>&1 &
    RPID=$!
    trap 'kill "$RPID" 2>/dev/null; wait "$RPID" 2>/dev/null; rm -rf "$RDIR"' EXIT
    for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$RPORT") 2>/dev/null && break; sleep 0.1; done
fi

count() {
    local n=$1 port=$((31000 + RANDOM % 2000)) log
    log="$(mktemp)"
    if [ -n "$STORE" ]; then
        STOREARGS=(--store "redis://127.0.0.1:$RPORT/0" --store-prefix "instr$n-$RANDOM")
    fi
    env "${ENVS[@]}" PYTHONDONTWRITEBYTECODE=1 PYTHONPATH="$TREE" valgrind --tool=callgrind \
        --callgrind-out-file=/dev/null "$PY" -m qserver -l 127.0.0.1 -p "$port" \
        "${STOREARGS[@]}" 2>"$log" &
    local pid=$!
    for _ in $(seq 600); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
    case $MODE in
    put) "$LG" put --port "$port" --conns 10 --jobs "$n" --timeout 900 >/dev/null ;;
    cycle) "$LG" cycle --port "$port" --producers 5 --workers 5 --jobs "$n" --timeout 900 >/dev/null ;;
    *) kill "$pid"; echo "instructions.sh: unknown mode $MODE" >&2; exit 2 ;;
    esac
    kill -TERM "$pid"
    wait "$pid" || true
    grep Collected "$log" | awk '{print $NF}'
    rm -f "$log"
}

a=$(count "$N1")
b=$(count "$N2")
echo "$MODE${STORE:+ --store} ($TREE${ENVS[*]:+ ${ENVS[*]}}): $(( (b - a) / (N2 - N1) )) instructions per operation" \
     "($a at $N1, $b at $N2)"
