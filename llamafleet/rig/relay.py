"""A TCP relay on loopback that counts the bytes it forwards each way: it sits between a client and a
server (llama-server ``--rpc`` and a ``ggml-rpc-server``) to measure what crosses the wire.

:func:`target_load_bytes` measures what one start of a target sends to its RPC worker, and
:func:`cacheable_bytes` what a worker's tensor cache (``ggml-rpc-server -c``) can spare: the bytes of
weight tensors over ``HASH_THRESHOLD``, which the client announces by hash before sending
(ggml/src/ggml-rpc/ggml-rpc.cpp).
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass, field
from pathlib import Path

HASH_THRESHOLD = 10 * 1024 * 1024  # ggml-rpc.cpp: weight tensors above this go through the hash/cache path


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


def cacheable_bytes(model: Path) -> tuple[int, int]:
    """(all tensor bytes, bytes in tensors over ``HASH_THRESHOLD``), from the GGUF header."""
    import gguf
    import numpy as np

    from llamafleet import gguf_info

    header = gguf_info.read_header(gguf_info.FileSource(model.name, path=model))
    total = large = 0
    for _name, shape, qtype in header.tensors:
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(qtype)]
        n = int(np.prod(shape, dtype=np.int64)) * type_size // block
        total += n
        large += n if n > HASH_THRESHOLD else 0
    return total, large


def target_load_bytes(build, model: Path, relay: CountingRelay, log_dir: Path) -> int:
    """Start llama-server with every layer on the worker behind ``relay`` (``-dev RPC0 -ngl 99``) until
    it is healthy, check it completes, stop it: the bytes it sent to the worker while loading."""
    from llamafleet.llama_client import LlamaClient
    from llamafleet.rig import servers

    relay.reset()
    target = servers.start_llama_server(build, model, log_dir=log_dir, name="rpc-target",
                                        args=["--rpc", relay.address, "-dev", "RPC0", "-ngl", "99",
                                              "-c", "256", "-np", "1"])
    sent = relay.counts.to_server  # healthy: the weights are on the worker
    with servers.running(target):  # and it works (its compute traffic is not counted)
        answer = LlamaClient(120.0).json(f"{target.url}/completion", data={"prompt": "Hello", "n_predict": 4})
        if "content" not in answer:
            raise RuntimeError(f"the target on the RPC worker did not complete:\n{target.log_tail()}")
    return sent
