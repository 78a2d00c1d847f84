#!/usr/bin/env bash
# The agent on simulated hardware: a patrol route replayed through a pty at its
# real rate, GPIO on mock pins, and a local mosquitto started for the purpose.
# Everything lives under .demo/ and stops with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=.venv/bin
DEMO=$PWD/.demo
rm -rf "$DEMO"; mkdir -p "$DEMO/state" "$DEMO/run" "$DEMO/broker"
PORT=$($BIN/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
cat > "$DEMO/broker/mosquitto.conf" <<CONF
user $(id -un)
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
log_dest file $DEMO/broker/mosquitto.log
CONF
"$MOSQUITTO" -c "$DEMO/broker/mosquitto.conf" & pids+=($!)

$BIN/patrol-agent sim gnss --link "$DEMO/gnss" & pids+=($!)

sed -e "s|@PORT@|$PORT|" -e "s|@DEMO@|$DEMO|g" config/demo.yaml > "$DEMO/agent.yaml"
echo "demo: broker on 127.0.0.1:$PORT, GNSS on $DEMO/gnss, config $DEMO/agent.yaml"
for _ in $(seq 50); do [ -e "$DEMO/gnss" ] && break; sleep 0.1; done
$BIN/patrol-agent run --config "$DEMO/agent.yaml"
