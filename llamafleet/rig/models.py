"""Derived test models for the proxy rig, made from the cached SmolLM2 with the ``gguf`` package.

- **Slow target** (:func:`ensure_slow_target`): SmolLM2 plus 200 blocks that copy the last block with
  ``attn_output.weight`` and ``ffn_down.weight`` all zero. Each added block adds exactly 0 to the
  residual stream (a quantised zero is exact), so greedy outputs stay SmolLM2's while every token
  costs about 7x more: a slow target paired with a fast draft that always agrees.
- **Partly agreeing target** (:func:`ensure_partial_target`): SmolLM2 plus one added block whose
  ``ffn_down`` is the last block's scaled by ``PARTIAL_SCALE`` (attention output zeroed). The added
  feed-forward term moves the logits a little, so SmolLM2 as the draft agrees with it only part of
  the time (acceptance measured and recorded in docs/benchmarks-proxy.md). It stays fast, which
  keeps the tests short.

Each model is written to a temporary name, then renamed; ``.complete`` is stamped last.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from llamafleet.config import builds
from llamafleet.rig.cache import LLAMA_CPP_BUILD, _exclusive, _log, _stamp, _stamped, cache_root, ensure_smollm2

RIG_VERSION = "rig-v1"
PADDING_BLOCKS = 200
TEST_PADDING_BLOCKS = 10
PARTIAL_SCALE = 0.3  # measured: SmolLM2 agrees on 85% of positions, ~67% acceptance at draft length 4


def rig_dir() -> Path:
    return cache_root() / "models" / RIG_VERSION


def ensure_slow_target() -> Path:
    """SmolLM2 with 200 zero-output blocks: identical greedy outputs, about 7x slower."""
    return _ensure("smollm2-slow-230.gguf", extra_blocks=PADDING_BLOCKS, ffn_down_scale=0.0)


def ensure_agreeing_target() -> Path:
    """A lighter padded target (10 zero-output blocks, about 1.3x slower) for tests on a busy 2-core CI:
    made exactly like the slow target, so it also agrees with SmolLM2 on every greedy token."""
    return _ensure("smollm2-padded-40.gguf", extra_blocks=TEST_PADDING_BLOCKS, ffn_down_scale=0.0)


def ensure_partial_target() -> Path:
    """SmolLM2 with one extra block that perturbs the logits: SmolLM2 drafts for it with partial acceptance."""
    return _ensure("smollm2-partial-31.gguf", extra_blocks=1, ffn_down_scale=PARTIAL_SCALE)


def _ensure(name: str, *, extra_blocks: int, ffn_down_scale: float) -> Path:
    root = rig_dir()
    model = root / name
    stamp_dir = root / f".{name}.d"
    key = f"blocks={extra_blocks} ffn_down_scale={ffn_down_scale}"  # a changed recipe rebuilds
    if _stamped(stamp_dir, key) and model.exists():
        return model
    source = ensure_smollm2()
    with _exclusive(RIG_VERSION):
        if not (_stamped(stamp_dir, key) and model.exists()):
            _write(source, model, stamp_dir, key, extra_blocks=extra_blocks, ffn_down_scale=ffn_down_scale)
    return model


def _write(source: Path, model: Path, stamp_dir: Path, key: str, *, extra_blocks: int, ffn_down_scale: float) -> None:
    model.parent.mkdir(parents=True, exist_ok=True)
    if stamp_dir.exists():
        shutil.rmtree(stamp_dir)
    _log(f"writing {model.name} ({extra_blocks} added blocks)")
    partial = model.with_suffix(".partial")
    write_padded(source, partial, extra_blocks=extra_blocks, ffn_down_scale=ffn_down_scale)
    partial.rename(model)
    stamp_dir.mkdir()
    _stamp(stamp_dir, key)


def native_target_args(draft: Path, rpc_address: str, n_max: int, device: str = "none",
                       build: str = LLAMA_CPP_BUILD) -> list[str]:
    """llama-server flags for native speculation with the draft on an RPC worker's device, spelled
    the way ``build`` spells them (``llamafleet.config.builds``).

    ``-dev none`` keeps the target on the local CPU (``CPU`` is not a valid device name); a GPU run
    passes its device (e.g. ``CUDA0``, as the GPU benchmark does) and offloads every target layer.
    The draft goes to the first RPC device, fully offloaded.
    """
    caps = builds.caps_for(build)
    if caps is None:
        raise ValueError(f"no capability data for llama.cpp {build}")
    flag = caps.deploy_flags
    placement = [flag["devices"], device] + ([] if device == "none" else [flag["gpu_layers"], "99"])
    return [flag["rpc"], rpc_address, *placement, flag["draft_model"], str(draft), flag["draft_device"], "RPC0",
            flag["draft_gpu_layers"], "99", *caps.draft_args(n_max, 0)]


def write_padded(source: Path, dest: Path, *, extra_blocks: int, ffn_down_scale: float) -> None:
    """Copy ``source`` and append ``extra_blocks`` copies of its last block (see the module doc)."""
    import gguf

    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    block_key = f"{arch}.block_count"
    n_blocks = int(reader.fields[block_key].contents())
    writer = gguf.GGUFWriter(dest, arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = n_blocks + extra_blocks if field.name == block_key else field.contents()
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, field.types[0], sub_type=sub_type)
    last = f"blk.{n_blocks - 1}."
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    template = [t for t in reader.tensors if t.name.startswith(last)]
    for i in range(n_blocks, n_blocks + extra_blocks):
        for tensor in template:
            data = tensor.data
            suffix = tensor.name[len(last):]
            if suffix == "attn_output.weight":
                data = np.zeros_like(data)
            elif suffix == "ffn_down.weight":
                data = scaled(tensor.data, tensor.tensor_type, ffn_down_scale)
            writer.add_tensor(f"blk.{i}.{suffix}", data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def scaled(data: np.ndarray, qtype, factor: float) -> np.ndarray:
    """``data`` times ``factor``, without dequantising: scale each block's f16 scale (and min).

    A factor of 0 gives an exact zero tensor (all bytes zero decode to 0 in these formats).
    """
    import gguf

    if factor == 0.0:
        return np.zeros_like(data)
    T = gguf.GGMLQuantizationType
    if qtype in (T.F32, T.F16):
        return (data * factor).astype(data.dtype)
    # Formats whose blocks start with an f16 scale d (and, for *_1, an f16 min m): value = q*d (+ m).
    scale_halves = {T.Q4_0: 1, T.Q5_0: 1, T.Q8_0: 1, T.Q4_1: 2, T.Q5_1: 2}.get(qtype)
    if scale_halves is None:
        raise ValueError(f"cannot scale a {qtype.name} tensor")
    _, type_size = gguf.GGML_QUANT_SIZES[qtype]
    blocks = data.copy().reshape(-1, type_size)
    halves = blocks[:, : 2 * scale_halves].copy().view(np.float16)
    blocks[:, : 2 * scale_halves] = (halves.astype(np.float32) * factor).astype(np.float16).view(np.uint8)
    return blocks.reshape(data.shape)
