"""Bytes over RPC for a target restart, with and without the RPC worker's tensor cache (``ggml-rpc-server -c``).

A real llama-server (``--rpc``, every layer on the worker's device: ``-dev RPC0 -ngl 99``) loads a model
through a counting TCP relay on 127.0.0.1 to a real ggml-rpc-server, is stopped once it is healthy, and is
started again, ``--starts`` times in all. The relay counts the bytes llama-server sends to the worker
(weights, mostly) for each start. Then the worker itself is restarted on the same cache folder and the
target started once more: the cache lives on the worker's disk, so it outlasts both restarts.

How the cache works (ggml/src/ggml-rpc/ggml-rpc.cpp): for a weight tensor larger than ``HASH_THRESHOLD``
(10 MiB) the client first sends a hash; a worker with ``-c`` that has the tensor in its cache folder loads
it from there, and only the hash crosses the network. Smaller tensors are always sent. So the saving is
the share of the weights held in tensors over 10 MiB. Two models show both ends:

- SmolLM2-135M (Q4_1): every per-layer tensor is under 1 MiB; only the output matrix (the tied token
  embedding, 17 MiB) is large enough;
- a wide model written here with gguf-py (llama architecture, SmolLM2's tokenizer, n_embd 1024, n_ff 6144,
  4 layers, F16 random weights): its feed-forward matrices are 12 MiB each, like the weight matrices of
  any multi-billion-parameter model, which are tens to hundreds of MiB.

    .venv/bin/python benchmarks/rpc_cache.py [--starts 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from llamafleet.rig import cache, servers
from llamafleet.rig.cache import _exclusive, _stamp, _stamped, cache_root
from llamafleet.rig.relay import CountingRelay, cacheable_bytes, target_load_bytes
WIDE = {"n_embd": 1024, "n_ff": 6144, "n_head": 16, "n_head_kv": 4, "layers": 4}
MIB = 2**20


def ensure_wide_model() -> Path:
    """A llama-architecture GGUF with SmolLM2's tokenizer and wide F16 layers (random weights), cached."""
    root = cache_root() / "models" / "bench-rpc-wide-v1"
    model = root / "wide-4l-1024x6144-f16.gguf"
    key = json.dumps(WIDE, sort_keys=True)
    if _stamped(root, key) and model.exists():
        return model
    with _exclusive("bench-rpc-wide"):
        if not (_stamped(root, key) and model.exists()):
            root.mkdir(parents=True, exist_ok=True)
            partial = model.with_suffix(".partial")
            _write_wide(cache.ensure_smollm2(), partial)
            partial.rename(model)
            _stamp(root, key)
    return model


def _write_wide(tokenizer_source: Path, dest: Path) -> None:
    import gguf

    reader = gguf.GGUFReader(tokenizer_source)
    e, f, heads, kv_heads, layers = (WIDE[k] for k in ("n_embd", "n_ff", "n_head", "n_head_kv", "layers"))
    head_dim = e // heads
    writer = gguf.GGUFWriter(dest, "llama")
    for field in reader.fields.values():  # the tokenizer, as SmolLM2 has it
        if field.name.startswith("tokenizer."):
            sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
            writer.add_key_value(field.name, field.contents(), field.types[0], sub_type=sub_type)
    n_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    writer.add_name("rpc-cache benchmark wide model")
    writer.add_block_count(layers)
    writer.add_context_length(2048)
    writer.add_embedding_length(e)
    writer.add_feed_forward_length(f)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    rng = np.random.default_rng(0)

    def weight(rows: int, cols: int) -> np.ndarray:  # ggml shape (cols, rows) = numpy (rows, cols)
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    writer.add_tensor("token_embd.weight", weight(n_vocab, e))
    writer.add_tensor("output_norm.weight", np.ones(e, dtype=np.float32))
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(e, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.attn_q.weight", weight(e, e))
        writer.add_tensor(f"blk.{i}.attn_k.weight", weight(kv_heads * head_dim, e))
        writer.add_tensor(f"blk.{i}.attn_v.weight", weight(kv_heads * head_dim, e))
        writer.add_tensor(f"blk.{i}.attn_output.weight", weight(e, e))
        writer.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(e, dtype=np.float32))
        writer.add_tensor(f"blk.{i}.ffn_gate.weight", weight(f, e))
        writer.add_tensor(f"blk.{i}.ffn_up.weight", weight(f, e))
        writer.add_tensor(f"blk.{i}.ffn_down.weight", weight(e, f))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def timed_start(build, model: Path, relay: CountingRelay, log_dir: Path) -> tuple[int, float]:
    started = time.perf_counter()
    sent = target_load_bytes(build, model, relay, log_dir)
    return sent, time.perf_counter() - started


def measure(build, model: Path, use_cache: bool, starts: int, work: Path) -> dict:
    cache_dir = work / ("cache" if use_cache else "no-cache")
    log_dir = work / "logs"
    env = {"LLAMA_CACHE": str(cache_dir)}
    args = ["-c"] if use_cache else []
    runs = []
    worker = servers.start_rpc_server(build, log_dir=log_dir, args=args, env=env)
    relay = CountingRelay(("127.0.0.1", worker.port))
    try:
        for _ in range(starts):
            runs.append(timed_start(build, model, relay, log_dir))
        worker.stop()  # the worker restarts too: its cache is on disk
        worker = servers.start_rpc_server(build, log_dir=log_dir, args=args, env=env)
        relay.target = ("127.0.0.1", worker.port)
        after_worker_restart = timed_start(build, model, relay, log_dir)
    finally:
        relay.close()
        worker.stop()
    cached_files = sorted((cache_dir / "rpc").glob("*")) if use_cache else []
    return {"cache": use_cache, "starts": [r[0] for r in runs], "seconds": [round(r[1], 2) for r in runs],
            "after_worker_restart": after_worker_restart[0],
            "cache_files": len(cached_files), "cache_bytes": sum(p.stat().st_size for p in cached_files)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--starts", type=int, default=3, help="target starts per worker (default 3)")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON")
    args = parser.parse_args()
    build = cache.ensure_llama_cpp()
    rows = []
    for label, model in (("SmolLM2-135M Q4_1", cache.ensure_smollm2()), ("wide F16 (4 x 1024/6144)", ensure_wide_model())):
        total, large = cacheable_bytes(model)
        for use_cache in (False, True):
            with tempfile.TemporaryDirectory(prefix="rpc-cache-") as tmp:
                result = measure(build, model, use_cache, args.starts, Path(tmp))
            result.update(model=label, file=model.name, tensor_bytes=total, large_tensor_bytes=large)
            rows.append(result)
            print(json.dumps(result), file=sys.stderr, flush=True)
    print(f"llama.cpp {build.build}; bytes llama-server sent to ggml-rpc-server per target start (MiB)\n")
    print("| model | worker | start 1 | start 2 | start 3+ | after a worker restart | weights (over 10 MiB) |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        later = ", ".join(f"{s / MIB:.1f}" for s in r["starts"][2:]) or "-"
        print(f"| {r['model']} | {'`-c`' if r['cache'] else 'no cache'} | {r['starts'][0] / MIB:.1f} | "
              f"{r['starts'][1] / MIB:.1f} | {later} | {r['after_worker_restart'] / MIB:.1f} | "
              f"{r['tensor_bytes'] / MIB:.1f} ({r['large_tensor_bytes'] / MIB:.1f}) |")
    if args.json:
        args.json.write_text(json.dumps({"build": build.build, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
