"""Fixtures for doctor: a draft model with a changed vocabulary, and writing doctor inventories."""

from __future__ import annotations

import shutil
from pathlib import Path

import gguf
import pytest
from ruamel.yaml import YAML

from llamafleet.rig.cache import LlamaCpp, cache_root

# Two equally long token strings ("Ġ" marks a leading space in the GPT-2 byte alphabet). Swapping
# them keeps the file layout and n_vocab, but " the" and " and" now map to each other's ids: the
# model metadata still matches the target's, only tokenizing text shows the difference.
SWAPPED_TOKENS = ("Ġthe", "Ġand")
VOCAB_MODEL_KEY = "rig-vocab-v1"


def swap_tokens_in_place(path: Path, first: str, second: str) -> None:
    """Swap two token strings of equal length in a GGUF's tokenizer.ggml.tokens, editing the bytes
    where gguf's reader maps them (as gguf-py's own gguf_set_metadata does for scalars)."""
    if len(first.encode()) != len(second.encode()):
        raise ValueError("only equally long token strings can be swapped in place")
    reader = gguf.GGUFReader(path, "r+")
    field = reader.fields["tokenizer.ggml.tokens"]
    tokens = field.contents()
    a, b = tokens.index(first), tokens.index(second)
    part_a, part_b = field.parts[field.data[a]], field.parts[field.data[b]]
    saved = part_a.copy()
    part_a[:] = part_b
    part_b[:] = saved
    reader.data.flush()


def swapped_vocab_model(source: Path) -> Path:
    """SmolLM2 with two vocabulary entries swapped, cached like the rest of the rig."""
    root = cache_root() / "models" / VOCAB_MODEL_KEY
    model = root / f"{source.stem}-swapped-vocab.gguf"
    if (root / ".complete").exists():
        return model
    root.mkdir(parents=True, exist_ok=True)
    partial = model.with_suffix(".partial")
    shutil.copyfile(source, partial)
    swap_tokens_in_place(partial, *SWAPPED_TOKENS)
    partial.rename(model)
    (root / ".complete").write_text("ok\n")
    return model


@pytest.fixture(scope="session")
def swapped_vocab(smollm2) -> Path:
    return swapped_vocab_model(smollm2)


def write_inventory(tmp_path: Path, services: dict, *, build: str = "b11434", hosts: dict | None = None) -> Path:
    """A doctor inventory for servers running on this machine."""
    data = {
        "version": 1,
        "cluster": "doctor-test",
        "llama_cpp": {"build": build, "mirror": "http://127.0.0.1:1",
                      "releases": [{"file": f"llama-{build}-bin-ubuntu-x64.tar.gz", "os": "linux", "arch": "x86_64",
                                    "backend": "cpu", "sha256": "0" * 64}]},
        "hosts": hosts or {
            "box": {"connection": {"type": "local"}, "addresses": ["127.0.0.2"], "os": "linux", "install_dir": str(tmp_path / "opt"),
                    "models_dir": str(tmp_path / "models"), "service_manager": "supervisord", "models": ["smollm2"]},
        },
        "models": {
            "smollm2": {"files": [{"name": "SmolLM2-135M-Instruct.Q4_1.gguf", "sha256": "0" * 64, "size": 98362432}],
                        "quant": "Q4_1", "tokenizer": "smollm2",
                        "architecture": {"family": "llama", "layers": 30, "n_embd": 576, "kv_dim": 192}},
        },
        "services": services,
    }
    path = tmp_path / "doctor.yaml"
    with path.open("w") as out:
        YAML().dump(data, out)
    return path


@pytest.fixture(scope="session")
def other_build(llama_build, tmp_path_factory) -> LlamaCpp:
    """A llama-server that reports another build: a copy of the pinned binary whose compiled-in commit
    string "unknown" (the only such string in it) reads "patched", beside the same shared libraries.
    Its --version and /props build_info then say commit "patched" where the pinned build says "unknown"."""
    root = tmp_path_factory.mktemp("other-build")
    bin_dir = root / "build" / "bin"
    bin_dir.mkdir(parents=True)
    for lib in llama_build.bin_dir.glob("*.so*"):
        (bin_dir / lib.name).symlink_to(lib)
    blob = llama_build.server.read_bytes()
    if blob.count(b"\0unknown\0") != 1:
        pytest.skip("llama-server holds the string 'unknown' more or less than once; cannot patch its commit")
    (bin_dir / "llama-server").write_bytes(blob.replace(b"\0unknown\0", b"\0patched\0"))
    (bin_dir / "llama-server").chmod(0o755)
    return LlamaCpp(root)
