"""A TCP proxy between the agent and the broker that can misbehave on command.

``forward`` passes bytes; ``blackhole`` keeps every connection open but
passes nothing (a half-open cellular link); ``reset`` closes every
connection with RST; ``delay`` holds each chunk for ``delay_s``. New
connections follow ``new_mode`` (default: forward), so that a client which
notices the dead link can reconnect through the proxy.
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time


class TcpProxy:
    def __init__(self, upstream_port: int, *, host: str = "127.0.0.1") -> None:
        self.upstream = (host, upstream_port)
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((host, 0))
        self._listener.listen(16)
        self.port = int(self._listener.getsockname()[1])
        self.mode = "forward"
        self.new_mode = "forward"
        self.delay_s = 0.0
        self.connections = 0
        self._pairs: list[tuple[socket.socket, socket.socket, list[str]]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def set_mode(self, mode: str, *, new_connections: str = "forward") -> None:
        """Change what existing connections do; ``new_connections`` for those opened from now on."""
        with self._lock:
            self.new_mode = new_connections
            for _, _, state in self._pairs:
                state[0] = mode
            if mode == "reset":
                for a, b, _ in self._pairs:
                    for sock in (a, b):
                        with contextlib.suppress(OSError):
                            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                            sock.close()
                self._pairs.clear()

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self.set_mode("reset")

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.upstream, timeout=5)
            except OSError:
                client.close()
                continue
            with self._lock:
                state = [self.new_mode]
                self._pairs.append((client, upstream, state))
                self.connections += 1
            threading.Thread(target=self._pump, args=(client, upstream, state), daemon=True).start()

    def _pump(self, a: socket.socket, b: socket.socket, state: list[str]) -> None:
        peers = {a: b, b: a}
        try:
            while not self._stop.is_set():
                ready, _, _ = select.select([a, b], [], [], 0.1)
                if state[0] == "blackhole":
                    time.sleep(0.05)  # read nothing: data piles up in the kernel, as on a dead link
                    continue
                for sock in ready:
                    data = sock.recv(65536)
                    if not data:
                        return
                    if state[0] == "delay" and self.delay_s:
                        time.sleep(self.delay_s)
                    peers[sock].sendall(data)
        except (OSError, ValueError):  # reset closed the sockets under us
            return
        finally:
            for sock in (a, b):
                with contextlib.suppress(OSError):
                    sock.close()
