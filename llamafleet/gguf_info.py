"""What a GGUF file says about itself: the facts an inventory's model entry holds, read from the header.

A source is a local file, an ``http(s)://`` URL or ``hf://org/repo/file.gguf`` (a Hugging Face
file, resolved by :func:`resolve`). Only the header is read: the key/value metadata and the tensor
table, never the tensor data. Over HTTP that means Range requests for the first bytes of the file,
in growing chunks, up to :data:`MAX_HEADER_BYTES`; a server that ignores Range is read as a stream
and dropped as soon as the header is complete.

The header is parsed by the ``gguf`` package's own :class:`gguf.GGUFReader` (llama.cpp's gguf-py),
with its byte access pointed at the lazily fetched prefix instead of a memory map of a whole file.

A split model (``name-00001-of-00003.gguf``, llama.cpp's ``gguf-split`` and gguf-py's writer naming)
is always handled as the whole set: naming any one shard finds the others, and every shard's
``split.no`` / ``split.count`` must agree with its place in the set.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from llamafleet.errors import UserError

MAX_HEADER_BYTES = 64 * 1024 * 1024  # the largest vocabularies make headers of a few tens of MiB
FIRST_CHUNK = 64 * 1024
MAX_CHUNK = 8 * 1024 * 1024
HTTP_TIMEOUT_S = 30
HF_ENDPOINT = "https://huggingface.co"  # $HF_ENDPOINT overrides it, as for huggingface_hub (mirrors, tests)
SHARD_NAME = re.compile(r"^(?P<stem>.+)-(?P<no>\d{5})-of-(?P<count>\d{5})\.gguf$")
EXPERT_TENSOR = "_exps."  # llama.cpp names stacked expert weights blk.N.ffn_{gate,up,down,gate_up}_exps.*


class SourceError(UserError):
    """A source that cannot be read as a GGUF model: the message names the source and what is wrong."""


# --- sources -------------------------------------------------------------------------------------


def resolve(source: str) -> str:
    """``hf://org/repo[@revision]/path/file.gguf`` -> the Hub's download URL; other sources unchanged.

    ``hf://unsloth/gpt-oss-20b-GGUF/gpt-oss-20b-F16.gguf`` ->
    ``https://huggingface.co/unsloth/gpt-oss-20b-GGUF/resolve/main/gpt-oss-20b-F16.gguf``
    """
    if not source.startswith("hf://"):
        return source
    parts = source[len("hf://"):].split("/")
    if len(parts) < 3 or not all(parts):
        raise SourceError(f"{source}: a Hugging Face reference is hf://ORG/REPO/FILE.gguf "
                          "(or hf://ORG/REPO@REVISION/PATH/FILE.gguf)")
    org, repo, path = parts[0], parts[1], parts[2:]
    repo, _, revision = repo.partition("@")
    if not repo or any(p in (".", "..") for p in parts):
        raise SourceError(f"{source}: not a valid Hugging Face reference (hf://ORG/REPO/FILE.gguf)")
    quote = lambda s: urllib.parse.quote(s, safe="")  # noqa: E731
    endpoint = (os.environ.get("HF_ENDPOINT") or HF_ENDPOINT).rstrip("/")
    return "/".join([endpoint, quote(org), quote(repo), "resolve", quote(revision or "main"),
                     *map(quote, path)])


def is_remote(source: str) -> bool:
    return source.startswith(("http://", "https://", "hf://"))


@dataclass(frozen=True)
class FileSource:
    """One file of a model: a local path or a URL (the URL of an ``hf://`` source already resolved)."""

    name: str  # the file name, as the inventory's files[].name
    path: Path | None = None
    url: str | None = None

    def __str__(self) -> str:
        return self.url or str(self.path)

    def open(self) -> "Prefix":
        return HttpPrefix(self.url) if self.url else LocalPrefix(self.path)


def file_sources(source: str) -> list[FileSource]:
    """Every file of the model that ``source`` names: itself, or all shards of its split set, in order."""
    if is_remote(source):
        url = resolve(source)
        parsed = urllib.parse.urlsplit(url)
        base, _, last = parsed.path.rpartition("/")
        name = urllib.parse.unquote(last)
        if not name:
            raise SourceError(f"{source}: the URL does not end in a file name")
        names = _shard_names(name)
        return [FileSource(n, url=urllib.parse.urlunsplit(parsed._replace(path=f"{base}/{urllib.parse.quote(n)}")))
                for n in names]
    path = Path(source)
    if path.is_dir():
        raise SourceError(f"{source}: is a directory; name the .gguf file (for a split model, any one shard)")
    if not path.exists():
        raise SourceError(f"{source}: no such file")
    if not path.is_file():  # a device, FIFO or socket: reading it could block or never end
        raise SourceError(f"{source}: not a regular file")
    sources = [FileSource(n, path=path.with_name(n)) for n in _shard_names(path.name)]
    missing = [str(s.path) for s in sources if not s.path.is_file()]
    if missing:
        raise SourceError(f"{source}: split model of {len(sources)} shards, but {', '.join(missing)} "
                          "is missing (every shard must lie beside the first)")
    return sources


def _shard_names(name: str) -> list[str]:
    match = SHARD_NAME.match(name)
    if not match:
        return [name]
    count = int(match["count"])
    if count < 1 or not 1 <= int(match["no"]) <= count:
        raise SourceError(f"{name}: shard {int(match['no'])} of {count} is not a valid split-model name")
    return [f"{match['stem']}-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


# --- reading only the header ---------------------------------------------------------------------


class Prefix:
    """The first bytes of a file, fetched on demand and kept: the header is read front to back."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.buffer = bytearray()
        self.bytes_fetched = 0  # what crossed the wire (or the disk): tests hold it to the header's size
        self.size: int | None = None  # the whole file's size, once known
        self._eof = False
        self._next_chunk = FIRST_CHUNK

    def read_at(self, offset: int, length: int) -> bytes:
        end = offset + length
        if end > MAX_HEADER_BYTES:
            raise SourceError(f"{self.label}: the GGUF header would run past {MAX_HEADER_BYTES // 2**20} MiB "
                              f"(a field at byte {offset} claims {length} bytes): a corrupt header?")
        while len(self.buffer) < end and not self._eof:
            want = max(self._next_chunk, end - len(self.buffer))
            want = min(want, MAX_HEADER_BYTES - len(self.buffer))
            block = self._fetch(len(self.buffer), want)
            self.bytes_fetched += len(block)
            self._next_chunk = min(self._next_chunk * 2, MAX_CHUNK)
            self.buffer += block
            # A short answer is the end only where the size says so: a server may cap a range's length.
            known_end = self.size is not None and len(self.buffer) >= self.size
            self._eof = not block or known_end or (self.size is None and len(block) < want)
        if len(self.buffer) < end:
            raise SourceError(f"{self.label}: truncated: the file ends at byte {len(self.buffer)}, inside the GGUF "
                              f"header (a field needs bytes {offset}..{end})")
        return bytes(self.buffer[offset:end])

    def _fetch(self, start: int, length: int) -> bytes:
        raise NotImplementedError

    def close(self) -> None:
        pass


class LocalPrefix(Prefix):
    def __init__(self, path: Path) -> None:
        super().__init__(str(path))
        try:
            self._file: BinaryIO = path.open("rb")
        except OSError as err:
            raise SourceError(f"{path}: cannot read: {err.strerror}") from None
        self.size = path.stat().st_size

    def _fetch(self, start: int, length: int) -> bytes:
        self._file.seek(start)
        return self._file.read(length)

    def close(self) -> None:
        self._file.close()


def http_error(url: str, err: Exception) -> SourceError:
    if isinstance(err, urllib.error.HTTPError):
        return SourceError(f"{url}: HTTP {err.code} {err.reason}")
    reason = getattr(err, "reason", err)
    return SourceError(f"{url}: cannot fetch: {reason}")


class HttpPrefix(Prefix):
    """Range requests (``bytes=START-END``); a server that answers 200 instead is read as one stream."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.requests = 0
        self._stream = None  # the open 200 response of a server without Range support

    def _fetch(self, start: int, length: int) -> bytes:
        if self._stream is not None:
            return self._read(self._stream, length)
        request = urllib.request.Request(self.label, headers={"Range": f"bytes={start}-{start + length - 1}"})
        self.requests += 1
        try:
            response = urllib.request.urlopen(request, timeout=HTTP_TIMEOUT_S)
        except urllib.error.HTTPError as err:
            if err.code == 416:  # the range starts at or past the end: nothing more to read
                return b""
            raise http_error(self.label, err) from None
        except (urllib.error.URLError, OSError) as err:
            raise http_error(self.label, err) from None
        if response.status == 206:
            total = (response.headers.get("Content-Range") or "").rpartition("/")[2]
            self.size = int(total) if total.isdigit() else self.size
            with response:
                return self._read(response, length)
        if start != 0:
            response.close()
            raise SourceError(f"{self.label}: the server answered a Range request with HTTP {response.status}")
        length_header = response.headers.get("Content-Length")
        self.size = int(length_header) if length_header and length_header.isdigit() else None
        self._stream = response
        return self._read(response, length)

    def _read(self, response, length: int) -> bytes:
        try:
            chunks, remaining = [], length
            while remaining > 0:
                block = response.read(remaining)
                if not block:
                    break
                chunks.append(block)
                remaining -= len(block)
            return b"".join(chunks)
        except (OSError, urllib.error.URLError) as err:
            raise http_error(self.label, err) from None

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


def _reader_class():
    import gguf

    class HeaderReader(gguf.GGUFReader):
        """gguf's reader over a :class:`Prefix`: same parser, but bytes come from the prefix and the
        tensor table is kept as (name, shape, type) without mapping any tensor data."""

        def __init__(self, prefix: Prefix) -> None:
            self.prefix = prefix
            self.tensor_table: list[tuple[str, tuple[int, ...], int]] = []
            # GGUFReader.__init__ memory-maps its argument before parsing; hand it a one-byte stand-in
            # (every read goes through _get below) so nothing but the header is ever touched.
            with tempfile.TemporaryFile() as stub:
                stub.write(b"\0")
                stub.flush()
                super().__init__(stub)

        def _get(self, offset, dtype, count=1, override_order=None):
            count = int(count)
            dtype = np.dtype(dtype)
            arr = np.frombuffer(self.prefix.read_at(int(offset), dtype.itemsize * count), dtype=dtype, count=count)
            order = self.byte_order if override_order is None else override_order
            return arr if order == "I" else arr.view(dtype.newbyteorder(order))  # "I": as the host (no swap)

        def _get_field_parts(self, orig_offs, raw_type):
            # gguf parses an array element by element: refuse a length that cannot fit under the cap
            # before looping over it (a corrupt length would otherwise take minutes to run into it).
            if raw_type == gguf.GGUFValueType.ARRAY:
                item_type = int(self._get(orig_offs, np.uint32)[0])
                count = int(self._get(orig_offs + 4, np.uint64)[0])
                scalar = self.gguf_scalar_to_np.get(item_type) if item_type in set(gguf.GGUFValueType) else None
                smallest = np.dtype(scalar).itemsize if scalar is not None else 8  # a string's length prefix
                if orig_offs + 12 + count * smallest > MAX_HEADER_BYTES:
                    raise SourceError(f"{self.prefix.label}: an array at byte {orig_offs} claims {count} items, "
                                      f"more than a {MAX_HEADER_BYTES // 2**20} MiB header holds: a corrupt header?")
            return super()._get_field_parts(orig_offs, raw_type)

        def _build_tensors(self, start_offs, fields) -> None:
            for f in fields:
                _name_len, name_data, _n_dims, dims, raw_dtype, _offset = f.parts
                self.tensor_table.append((bytes(name_data).decode("utf-8"), tuple(int(d) for d in dims),
                                          int(raw_dtype[0])))

    return HeaderReader


def read_header(source: FileSource) -> "Header":
    """The header facts of one file; a :class:`SourceError` naming the source for anything unreadable."""
    prefix = source.open()
    try:
        try:
            reader = _reader_class()(prefix)
        except SourceError:
            raise
        except ValueError as err:
            if "magic" in str(err):
                raise SourceError(f"{source}: not a GGUF file (it does not start with the GGUF magic)") from None
            raise SourceError(f"{source}: unreadable GGUF header: {err}") from None
        except (KeyError, UnicodeDecodeError, OverflowError, MemoryError, IndexError, TypeError) as err:
            raise SourceError(f"{source}: corrupt GGUF header: {type(err).__name__}: {err}") from None
        header = Header.from_reader(reader, str(source))
        header.header_bytes = reader.data_offset
        header.bytes_fetched = prefix.bytes_fetched
        header.size = prefix.size
        return header
    finally:
        prefix.close()


# --- the facts -----------------------------------------------------------------------------------


def _value(reader, key: str) -> Any:
    f = reader.fields.get(key)
    return None if f is None else f.contents()


def _largest(value: Any) -> int | None:
    """A per-model count, or its largest per-layer value (some architectures vary head counts by layer)."""
    if value is None:
        return None
    if isinstance(value, list):
        return max((int(v) for v in value), default=None)
    return int(value)


def sig4(x: float) -> float:
    """Four significant digits: how parameter counts (in billions) are written to the inventory."""
    return float(f"{x:.4g}")


@dataclass
class Header:
    """Facts from one file's header. Shards after the first carry tensors and split keys only."""

    source: str
    architecture: str | None
    block_count: int | None
    n_embd: int | None
    n_head: int | None
    n_head_kv: int | None
    key_length: int | None
    expert_count: int | None
    expert_used_count: int | None
    file_type: int | None
    tokenizer_model: str | None
    tokenizer_pre: str | None
    tokens_fingerprint: str | None
    n_vocab: int | None
    has_chat_template: bool
    split_no: int | None
    split_count: int | None
    split_tensors: int | None
    tensors: list[tuple[str, tuple[int, ...], int]] = field(default_factory=list)
    header_bytes: int = 0
    bytes_fetched: int = 0
    size: int | None = None

    @classmethod
    def from_reader(cls, reader, source: str) -> "Header":
        arch = _value(reader, "general.architecture")
        a = lambda key: _value(reader, f"{arch}.{key}") if arch else None  # noqa: E731
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        fingerprint = None
        if tokens is not None:
            digest = hashlib.sha256()
            for index in tokens.data:
                digest.update(bytes(tokens.parts[index]))
                digest.update(b"\0")
            fingerprint = digest.hexdigest()
        template = _value(reader, "tokenizer.chat_template")
        return cls(
            source=source,
            architecture=arch,
            block_count=_largest(a("block_count")),
            n_embd=_largest(a("embedding_length")),
            n_head=_largest(a("attention.head_count")),
            n_head_kv=_largest(a("attention.head_count_kv")),
            key_length=_largest(a("attention.key_length")),
            expert_count=_largest(a("expert_count")),
            expert_used_count=_largest(a("expert_used_count")),
            file_type=_largest(_value(reader, "general.file_type")),
            tokenizer_model=_value(reader, "tokenizer.ggml.model"),
            tokenizer_pre=_value(reader, "tokenizer.ggml.pre"),
            tokens_fingerprint=fingerprint,
            n_vocab=len(tokens.data) if tokens is not None else None,
            has_chat_template=bool(template),
            split_no=_largest(_value(reader, "split.no")),
            split_count=_largest(_value(reader, "split.count")),
            split_tensors=_largest(_value(reader, "split.tensors.count")),
            tensors=list(reader.tensor_table),
        )


@dataclass(frozen=True)
class FileFacts:
    name: str
    sha256: str
    size: int
    url: str | None = None


@dataclass
class ModelFacts:
    """Everything ``llamafleet model add`` writes for one model (all files of a split set together)."""

    files: list[FileFacts]
    family: str
    layers: int | None
    n_embd: int | None
    kv_dim: int | None
    n_params: int
    n_active_params: int
    experts: int | None
    experts_used: int | None
    quant: str
    tokenizer: str
    has_chat_template: bool
    headers: list[Header]

    @property
    def total_params_b(self) -> float:
        return sig4(self.n_params / 1e9)

    @property
    def active_params_b(self) -> float:
        return sig4(self.n_active_params / 1e9)

    @property
    def moe(self) -> tuple[int, int] | None:
        if self.experts and self.experts > 1 and self.experts_used:
            return self.experts, self.experts_used
        return None


def tokenizer_family(model: str | None, pre: str | None, fingerprint: str | None) -> str:
    """The inventory's tokenizer label: ``<name>:<8 hex>``.

    ``<name>`` is llama.cpp's pre-tokenizer name (``tokenizer.ggml.pre``, which llama.cpp's converter
    picks by recognising the tokenizer: ``llama-bpe``, ``qwen2``, ``smollm``, ...), or the tokenizer
    model (``llama``, ``gpt2``, ...) when the pre-tokenizer is absent or ``default``. The 8 hex digits
    are the start of the sha256 of the vocabulary (every token's text, in id order): two models get
    the same label exactly when their token ids mean the same strings, which is what a draft needs.
    """
    name = pre if pre and pre != "default" else model
    if not name or fingerprint is None:
        return "unknown"
    name = re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-") or "unknown"
    return f"{name}:{fingerprint[:8]}"


TOKENIZER_LABEL = re.compile(r"^[a-z0-9._-]+:[0-9a-f]{8}$")


def quant_name(file_type: int | None, tensors: list[tuple[str, tuple[int, ...], int]]) -> str:
    """llama.cpp's name for ``general.file_type`` (``MOSTLY_Q4_K_M`` -> ``Q4_K_M``); without that key,
    the tensor type holding the most bytes (what llama.cpp itself falls back to guessing)."""
    import gguf

    if file_type is not None:
        try:
            name = gguf.LlamaFileType(file_type).name
        except ValueError:
            return f"file-type-{file_type}"
        return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    by_type: dict[int, int] = {}
    for name, shape, qtype in tensors:
        if len(shape) >= 2:
            by_type[qtype] = by_type.get(qtype, 0) + int(np.prod(shape, dtype=np.int64))
    if not by_type:
        return "unknown"
    return gguf.GGMLQuantizationType(max(by_type, key=by_type.get)).name


def quant_names() -> set[str]:
    """Every name :func:`quant_name` gives a ``general.file_type``."""
    import gguf

    return {t.name.removeprefix("MOSTLY_").removeprefix("ALL_") for t in gguf.LlamaFileType}


def check_shards(headers: list[Header]) -> None:
    """Every shard's split keys agree with the set it was found in (count, place, total tensors)."""
    count = len(headers)
    for index, h in enumerate(headers):
        if count == 1:
            if h.split_count not in (None, 0, 1):
                raise SourceError(f"{h.source}: the header says this is shard {(h.split_no or 0) + 1} of "
                                  f"{h.split_count}, but the file name lacks the -0000N-of-0000M part that "
                                  "finds the other shards")
            continue
        if h.split_count != count:
            raise SourceError(f"{h.source}: split.count is {h.split_count}, but the file name says {count} shards")
        if h.split_no != index:
            raise SourceError(f"{h.source}: split.no is {h.split_no}, but the file name puts it at {index} "
                              "(counting from 0)")
    if count > 1:
        expected = headers[0].split_tensors
        found = sum(len(h.tensors) for h in headers)
        if expected is not None and expected != found:
            raise SourceError(f"{headers[0].source}: split.tensors.count is {expected}, but the {count} shards hold "
                              f"{found} tensors")


def model_facts(headers: list[Header], files: list[FileFacts]) -> ModelFacts:
    """The model's facts from its files' headers (the first shard carries the metadata)."""
    check_shards(headers)
    first = headers[0]
    if not first.architecture:
        raise SourceError(f"{first.source}: the header has no general.architecture: not a model file?")
    tensors = [t for h in headers for t in h.tensors]
    n_params = sum(int(np.prod(shape, dtype=np.int64)) for _, shape, _ in tensors)
    expert_params = sum(int(np.prod(shape, dtype=np.int64)) for name, shape, _ in tensors if EXPERT_TENSOR in name)
    experts, used = first.expert_count, first.expert_used_count
    active = n_params
    if experts and experts > 1 and used:
        active = n_params - expert_params + expert_params * used // experts
    head_dim = first.key_length or (first.n_embd // first.n_head if first.n_embd and first.n_head else None)
    n_head_kv = first.n_head_kv or first.n_head
    return ModelFacts(
        files=files,
        family=first.architecture,
        layers=first.block_count or None,
        n_embd=first.n_embd or None,
        kv_dim=n_head_kv * head_dim if n_head_kv and head_dim else None,
        n_params=n_params,
        n_active_params=active,
        experts=experts,
        experts_used=used,
        quant=quant_name(first.file_type, tensors),
        tokenizer=tokenizer_family(first.tokenizer_model, first.tokenizer_pre, first.tokens_fingerprint),
        has_chat_template=first.has_chat_template,
        headers=headers,
    )


# --- hashing -------------------------------------------------------------------------------------


def progress(total: int | None, label: str):
    """A byte progress bar on stderr, shown only when stderr is a terminal."""
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit="B", unit_scale=True, unit_divisor=1024, leave=False,
                file=sys.stderr, disable=not sys.stderr.isatty())


def hash_file(source: FileSource, on_block: Callable[[int], None] | None = None) -> tuple[str, int]:
    """(sha256, size) of the whole file, streamed with a progress bar; nothing is stored."""
    digest = hashlib.sha256()
    size = 0
    if source.path is not None:
        try:
            stream = source.path.open("rb")
            total = source.path.stat().st_size
        except OSError as err:
            raise SourceError(f"{source}: cannot read: {err.strerror}") from None
    else:
        try:
            stream = urllib.request.urlopen(source.url, timeout=HTTP_TIMEOUT_S)
        except (urllib.error.URLError, OSError) as err:
            raise http_error(source.url, err) from None
        length = stream.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
    with stream, progress(total, source.name) as bar:
        try:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
                bar.update(len(block))
                if on_block:
                    on_block(len(block))
        except OSError as err:
            raise SourceError(f"{source}: read failed after {size} bytes: {err}") from None
    if total is not None and size != total:
        raise SourceError(f"{source}: got {size} bytes, the server announced {total}")
    return digest.hexdigest(), size


def read_headers(source: str) -> tuple[list[FileSource], list[Header]]:
    """Every file of the model ``source`` names, and their headers, checked as a set (no hashing yet)."""
    sources = file_sources(source)
    headers = [read_header(s) for s in sources]
    model_facts(headers, [])  # a bad split set or a header without a model is refused here
    return sources, headers


def hash_model(sources: list[FileSource], headers: list[Header]) -> ModelFacts:
    """The model's facts with every file hashed (each file streamed once)."""
    files = []
    for s, header in zip(sources, headers):
        sha256, size = hash_file(s)
        if header.size is not None and header.size != size:
            raise SourceError(f"{s}: {size} bytes read, but {header.size} announced when the header was read")
        files.append(FileFacts(s.name, sha256, size, s.url))
    return model_facts(headers, files)
