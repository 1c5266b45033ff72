"""Write a large, slow target with SmolLM2's exact greedy outputs, for the GPU benchmark.

The CPU rig's padding (llamafleet.rig.models) copies the last block in Q4_1, about 2 MB a block;
llama.cpp allows at most 512 blocks, so that stays near 1 GB. Here every added block's matrices
are F16 zeros (7 MB a block) and its norm weights are copied: attention and feed-forward then add
exactly 0 to the residual stream, outputs are unchanged, and 450 added blocks make about 3.3 GB of
weights that every token has to stream through, as a big dense target does.

    python benchmarks/gpu/make_target.py SOURCE.gguf DEST.gguf --blocks 450
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

MAX_LAYERS = 512  # LLAMA_MAX_LAYERS in llama.cpp b11434 (src/llama-hparams.h)


def write_zero_padded(source: Path, dest: Path, extra_blocks: int) -> int:
    """Copy ``source`` and add ``extra_blocks`` F16 zero blocks; returns the new block count."""
    import gguf

    reader = gguf.GGUFReader(source)
    arch = reader.fields["general.architecture"].contents()
    block_key = f"{arch}.block_count"
    n_blocks = int(reader.fields[block_key].contents())
    total = n_blocks + extra_blocks
    if total > MAX_LAYERS:
        raise SystemExit(f"{total} blocks: llama.cpp loads at most {MAX_LAYERS}")
    writer = gguf.GGUFWriter(dest, arch)
    for field in reader.fields.values():
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        value = total if field.name == block_key else field.contents()
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, value, field.types[0], sub_type=sub_type)
    for tensor in reader.tensors:
        writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    last = f"blk.{n_blocks - 1}."
    template = [t for t in reader.tensors if t.name.startswith(last)]
    for i in range(n_blocks, total):
        for tensor in template:
            suffix = tensor.name[len(last):]
            if len(tensor.shape) == 1:  # norm weights: kept, so the block's arithmetic stays finite
                writer.add_tensor(f"blk.{i}.{suffix}", tensor.data, raw_dtype=tensor.tensor_type)
            else:  # GGUF lists dimensions innermost first; numpy wants them outermost first
                shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
                writer.add_tensor(f"blk.{i}.{suffix}", np.zeros(shape, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return total


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("dest", type=Path)
    parser.add_argument("--blocks", type=int, default=450, help="blocks to add (default 450)")
    args = parser.parse_args()
    partial = args.dest.with_suffix(".partial")
    total = write_zero_padded(args.source, partial, args.blocks)
    partial.rename(args.dest)
    print(f"{args.dest}: {total} blocks, {args.dest.stat().st_size / 1e9:.2f} GB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
