#!/usr/bin/env bash
# The agent on simulated hardware: a patrol route replayed through a pty at its
# real rate, GPIO on mock pins, a local mosquitto started for the purpose, and
# dispatch's view of what arrives. 20 s in, the driver's panic button is held;
# the demo dispatcher acknowledges the alert, and clears it 30 s later.
# Everything lives under .demo/ and stops with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/.venv/bin
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
set_tcp_nodelay true
log_dest file $DEMO/broker/mosquitto.log
CONF
"$MOSQUITTO" -c "$DEMO/broker/mosquitto.conf" & pids+=($!)
$BIN/patrol-agent sim gnss --link "$DEMO/gnss" & pids+=($!)
sed -e "s|@PORT@|$PORT|" -e "s|@DEMO@|$DEMO|g" config/demo.yaml > "$DEMO/agent.yaml"
for _ in $(seq 50); do [ -e "$DEMO/gnss" ] && break; sleep 0.1; done

$BIN/patrol-agent run --config "$DEMO/agent.yaml" 2> "$DEMO/agent.log" & pids+=($!)
cat <<TEXT
patrol-agent demo: broker 127.0.0.1:$PORT, receiver $DEMO/gnss, agent log $DEMO/agent.log
What dispatch receives follows. In another terminal you can:
  $BIN/patrol-agent sim press driver --hold 2 --runtime-dir $DEMO/run   # the panic button
  $BIN/patrol-agent panic test --runtime-dir $DEMO/run                   # an installer's test alarm
  $BIN/patrol-agent status --runtime-dir $DEMO/run                       # the unit's state
TEXT
(
  sleep 20
  echo ">>> demo: the driver holds the panic button for 2 s"
  $BIN/patrol-agent sim press driver --hold 2 --runtime-dir "$DEMO/run" >/dev/null
  sleep 30
  alert=$($BIN/patrol-agent status --runtime-dir "$DEMO/run" >/dev/null; $BIN/python - "$DEMO/run" <<'PY'
import sys
from pathlib import Path
from agent.control import request
reply = list(request(Path(sys.argv[1]), "alert"))[-1]
print((reply.get("emergency") or {}).get("alert_id", ""))
PY
)
  if [ -n "$alert" ]; then
    echo ">>> demo: dispatch clears alert $alert"
    $BIN/patrol-agent dispatch clear PV-DEMO-1 "$alert" --broker "mqtt://127.0.0.1:$PORT" >/dev/null
  fi
) & pids+=($!)
exec_watch() { $BIN/patrol-agent watch --broker "mqtt://127.0.0.1:$PORT" --auto-ack; }
exec_watch
