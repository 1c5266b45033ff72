"""A TCP relay on loopback that counts the bytes it forwards each way: it sits between a client and a
server (llama-server ``--rpc`` and a ``ggml-rpc-server``) to measure what crosses the wire."""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field


@dataclass
class Counts:
    to_server: int = 0  # client -> server (for RPC: weights the client uploads)
    to_client: int = 0
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, upstream: bool, n: int) -> None:
        with self.lock:
            if upstream:
                self.to_server += n
            else:
                self.to_client += n


class CountingRelay:
    """Listen on 127.0.0.1 (a free port), forward every connection to ``target``; ``counts`` grows as
    bytes pass. ``reset()`` starts a new measurement."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.counts = Counts()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._stopped = threading.Event()
        self._sockets: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def reset(self) -> Counts:
        """The counts so far; counting starts again from zero."""
        done, self.counts = self.counts, Counts()
        return done

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.target)
            except OSError:
                client.close()
                continue
            self.counts.connections += 1
            self._sockets += [client, server]
            for a, b, up in ((client, server, True), (server, client, False)):
                threading.Thread(target=self._pipe, args=(a, b, up), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket, upstream: bool) -> None:
        try:
            while True:
                data = src.recv(1 << 20)
                if not data:
                    break
                self.counts.add(upstream, len(data))
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stopped.set()
        self._listener.close()
        for s in self._sockets:
            s.close()
