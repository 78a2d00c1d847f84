#!/usr/bin/env bash
# The agent on simulated hardware: a patrol route replayed through a pty at its
# real rate, GPIO on mock pins, a local mosquitto started for the purpose, and
# dispatch's view of what arrives. 20 s in, the driver's panic button is held;
# the demo dispatcher acknowledges the alert, and clears it 30 s later.
# Everything lives under .demo/ and stops with Ctrl-C (exit 0).
#
# Timing (seconds), for a shorter run:
#   DEMO_PRESS_AFTER=20   when the driver holds the panic button
#   DEMO_CLEAR_AFTER=30   how long after the press dispatch clears the alert
#   DEMO_RUN_FOR=0        stop by itself after this long (0: run until Ctrl-C)
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/.venv/bin
DEMO=$PWD/.demo
PRESS_AFTER=${DEMO_PRESS_AFTER:-20}
CLEAR_AFTER=${DEMO_CLEAR_AFTER:-30}
RUN_FOR=${DEMO_RUN_FOR:-0}
rm -rf "$DEMO"; mkdir -p "$DEMO/state" "$DEMO/run" "$DEMO/broker"
PORT=$($BIN/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
pids=()
finish() {
    trap - INT TERM EXIT
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for _ in $(seq 80); do  # up to 8 s for a clean stop (the agent says offline, flushes its outbox)
        alive=no
        for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=yes; done
        [ "$alive" = no ] && break
        sleep 0.1
    done
    for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done  # nothing of the demo outlives it
    wait 2>/dev/null || true
}
trap 'finish; echo "patrol-agent demo: stopped"; exit 0' INT TERM
trap finish EXIT

MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
cat > "$DEMO/broker/mosquitto.conf" <<CONF
user $(id -un)
listener $PORT 127.0.0.1
allow_anonymous true
persistence false
set_tcp_nodelay true
log_dest file $DEMO/broker/mosquitto.log
CONF
"$MOSQUITTO" -c "$DEMO/broker/mosquitto.conf" 2>> "$DEMO/broker/mosquitto.log" & pids+=($!)
$BIN/patrol-agent sim gnss --link "$DEMO/gnss" & pids+=($!)
sed -e "s|@PORT@|$PORT|" -e "s|@DEMO@|$DEMO|g" config/demo.yaml > "$DEMO/agent.yaml"
for _ in $(seq 50); do [ -e "$DEMO/gnss" ] && break; sleep 0.1; done

$BIN/patrol-agent run --config "$DEMO/agent.yaml" 2> "$DEMO/agent.log" & pids+=($!)
for _ in $(seq 100); do [ -S "$DEMO/run/control.sock" ] && break; sleep 0.1; done
cat <<TEXT
patrol-agent demo: broker 127.0.0.1:$PORT, receiver $DEMO/gnss, agent log $DEMO/agent.log
What dispatch receives follows (Ctrl-C stops the demo). In another terminal you can:
  $BIN/patrol-agent sim press driver --hold 2 --runtime-dir $DEMO/run   # the panic button
  $BIN/patrol-agent panic test --runtime-dir $DEMO/run                   # an installer's test alarm
  $BIN/patrol-agent monitor --runtime-dir $DEMO/run                      # the unit's live view
TEXT
(
  sleep "$PRESS_AFTER"
  echo ">>> demo: the driver holds the panic button for 2 s"
  $BIN/patrol-agent sim press driver --hold 2 --runtime-dir "$DEMO/run" >/dev/null || true
  sleep "$CLEAR_AFTER"
  alert=$($BIN/python - "$DEMO/run" <<'PY' || true
import sys
from pathlib import Path
from agent.daemon_client import ToolError, ask
try:
    reply = ask(Path(sys.argv[1]), "alert")[-1]
except ToolError:
    sys.exit(0)
print((reply.get("emergency") or {}).get("alert_id", ""))
PY
)
  if [ -n "$alert" ]; then
    echo ">>> demo: dispatch clears alert $alert (clear_alert on the vehicle's cmd topic)"
    $BIN/patrol-agent dispatch clear PV-DEMO-1 "$alert" --operator demo-dispatcher \
        --broker "mqtt://127.0.0.1:$PORT" 2>&1 | sed 's/^/>>> demo: the vehicle answered: /' || true
  else
    echo ">>> demo: no open alert to clear"
  fi
) & pids+=($!)
if [ "$RUN_FOR" != 0 ]; then ( sleep "$RUN_FOR"; kill -TERM $$ ) & pids+=($!); fi
$BIN/patrol-agent watch --broker "mqtt://127.0.0.1:$PORT" --auto-ack & watch_pid=$!; pids+=($watch_pid)
wait "$watch_pid"
