"""The RPC worker's tensor cache (``ggml-rpc-server -c``, an rpc-worker's ``cache: true``) with the real
b11434 binaries: a target restart sends the weights again without it, and with it everything but the
tensors over ggml-rpc's hash threshold, which the GGUF's tensor table predicts to the byte (plus one
small hash message per cached tensor). Bytes are counted by a TCP relay on loopback. The figures for
a model with large matrices are in docs/benchmarks-rpc-cache.md (benchmarks/rpc_cache.py)."""

from __future__ import annotations

import pytest

from llamafleet.rig import servers
from llamafleet.rig.relay import CountingRelay, cacheable_bytes, target_load_bytes

HASH_MESSAGE_SLACK = 4096  # a 1-tensor cache hit costs a few hundred bytes of request headers


@pytest.mark.parametrize("use_cache", [False, True], ids=["no-cache", "cache"])
def test_a_cached_worker_spares_the_large_tensors_on_restart(use_cache, llama_build, smollm2, log_dir, tmp_path):
    total, large = cacheable_bytes(smollm2)
    assert large > 0  # SmolLM2's output matrix (the tied embedding) is over the threshold
    worker = servers.start_rpc_server(llama_build, log_dir=log_dir, args=["-c"] if use_cache else [],
                                      env={"LLAMA_CACHE": str(tmp_path)})
    relay = CountingRelay(("127.0.0.1", worker.port))
    try:
        first = target_load_bytes(llama_build, smollm2, relay, log_dir)
        second = target_load_bytes(llama_build, smollm2, relay, log_dir)
    finally:
        relay.close()
        worker.stop()
    assert total <= first < total * 1.02  # every weight crosses the wire on the first start
    if use_cache:
        assert 0 <= (first - second) - large < HASH_MESSAGE_SLACK
        cached = list((tmp_path / "rpc").iterdir())
        assert sum(p.stat().st_size for p in cached) == large
    else:
        assert second == first
        assert not (tmp_path / "rpc").exists()
