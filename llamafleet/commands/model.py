"""``llamafleet model add SOURCE...`` and ``llamafleet model verify``: model entries from the GGUF itself.

``add`` reads each source's GGUF header (only the header, over HTTP Range for a remote file), hashes
every file, and writes the model entry into the inventory with ruamel.yaml's round-trip mode, so the
file's comments and order survive. The edited inventory is validated before it replaces the old one
(written beside it, then renamed). A file whose header or hash contradicts what the inventory already
says is refused, naming the field.

``verify`` re-reads the local files and their headers and reports every difference from the
inventory. Exit codes as ``drift``: 0 no differences, 2 differences, 1 error.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from dataclasses import replace
from pathlib import Path

from llamafleet import gguf_info
from llamafleet.config.loader import DEFAULT_INVENTORY, INVENTORY_ENV, check_inventory, default_inventory_path, load_inventory
from llamafleet.config.models import NAME_PATTERN, Inventory, Model
from llamafleet.errors import UserError
from llamafleet.gguf_info import ModelFacts, SourceError
from llamafleet.findings import Finding, Severity
from llamafleet.report import Report, emit

PARAMS_TOLERANCE = 0.02  # parameter counts are typed rounded (0.135 for 134,515,008): 2% is a contradiction


def register(subparsers) -> None:
    parser = subparsers.add_parser("model", help="add a model entry from its GGUF file(s), or verify the files",
                                   description="Model entries read from the GGUF files themselves.")
    sub = parser.add_subparsers(dest="model_command", required=True, metavar="SUBCOMMAND")
    inventory_help = f"inventory YAML file (default: ${INVENTORY_ENV} or {DEFAULT_INVENTORY})"

    add = sub.add_parser(
        "add", help="read GGUF headers, hash the files, write the model entry into the inventory",
        description="Add one model per SOURCE: a local .gguf file, an http(s) URL, or hf://ORG/REPO/FILE.gguf "
        "(a Hugging Face file; hf://ORG/REPO@REVISION/... for another revision than main). For a split model "
        "name any one shard: all of them are read. Only the header of a remote file is read to fill in the "
        "entry, but every byte is hashed (streamed, not stored).")
    add.add_argument("sources", nargs="+", metavar="SOURCE", help="GGUF file, URL or hf:// reference")
    add.add_argument("--name", help="the model's name in the inventory (default: from the file name; one SOURCE only)")
    add.add_argument("--inventory", type=Path, help=inventory_help)
    add.set_defaults(func=run_add)

    verify = sub.add_parser(
        "verify", help="re-read the model files and headers and report every difference from the inventory",
        description="Hash every file of the inventory's models in --models-dir, re-read their headers, and report "
        "each difference from the inventory. Exit 0: none; 2: differences; 1: error.")
    verify.add_argument("models", nargs="*", metavar="MODEL", help="only these models (default: all)")
    verify.add_argument("--inventory", type=Path, help=inventory_help)
    verify.add_argument("--models-dir", type=Path, default=Path("."),
                        help="folder holding the model files (default: the current folder)")
    verify.add_argument("--json", action="store_true", help="print the findings as JSON instead of a table")
    verify.add_argument("--junit", metavar="FILE", type=Path, help="also write a JUnit XML report to FILE")
    verify.add_argument("--verbose", "-v", action="store_true", help="list passing checks in the table too")
    verify.set_defaults(func=run_verify)


# --- comparing an entry with the files -----------------------------------------------------------


def default_name(file_name: str) -> str:
    """``SmolLM2-135M-Instruct.Q4_1.gguf`` -> ``smollm2-135m-instruct-q4-1`` (shard suffix dropped)."""
    match = gguf_info.SHARD_NAME.match(file_name)
    stem = match["stem"] if match else file_name.removesuffix(".gguf")
    name = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")[:63].rstrip("-")
    if not re.match(NAME_PATTERN, name):
        raise UserError(f"{file_name}: cannot derive a model name from the file name; pass --name")
    return name


def compare(entry: Model, facts: ModelFacts) -> list[tuple[str, str, str, bool]]:
    """``(field, inventory value, file value, same)`` for every fact the entry states and the files can
    confirm. Facts the entry leaves out are not compared (``add`` fills them in). The quant and tokenizer
    labels are compared only when written in the names ``add`` gives them (``Q4_K_M``, ``smollm:4ca839f1``)."""
    out: list[tuple[str, str, str, bool]] = []

    def fact(field: str, have, got, same: bool | None = None) -> None:
        out.append((field, str(have), str(got), have == got if same is None else same))

    if [f.name for f in entry.files] != [f.name for f in facts.files]:
        fact("files", ", ".join(f.name for f in entry.files), ", ".join(f.name for f in facts.files), False)
    else:
        for i, (have, got) in enumerate(zip(entry.files, facts.files)):
            fact(f"files[{i}].size", have.size, got.size)
            fact(f"files[{i}].sha256", have.sha256, got.sha256)
    arch = entry.architecture
    for field in ("family", "layers", "n_embd", "kv_dim"):
        if getattr(arch, field) is not None:
            fact(f"architecture.{field}", getattr(arch, field), getattr(facts, field))
    for field in ("total_params_b", "active_params_b"):
        have, got = getattr(arch, field), getattr(facts, field)
        if have is not None:
            fact(f"architecture.{field}", have, got, abs(have - got) <= PARAMS_TOLERANCE * got)
    if arch.moe is not None:
        got = f"{facts.moe[0]} experts, {facts.moe[1]} active" if facts.moe else "not a MoE model"
        fact("architecture.moe", f"{arch.moe.experts} experts, {arch.moe.active_experts} active", got)
    if entry.quant in gguf_info.quant_names():
        fact("quant", entry.quant, facts.quant)
    if gguf_info.TOKENIZER_LABEL.match(entry.tokenizer):
        fact("tokenizer", entry.tokenizer, facts.tokenizer)
    return out


def entry_data(facts: ModelFacts) -> dict:
    """The inventory entry, in the order it is written."""
    arch = {"family": facts.family, "layers": facts.layers, "n_embd": facts.n_embd, "kv_dim": facts.kv_dim,
            "total_params_b": facts.total_params_b, "active_params_b": facts.active_params_b}
    if facts.moe:
        arch["moe"] = {"experts": facts.moe[0], "active_experts": facts.moe[1]}
    files = [{"name": f.name, **({"url": f.url} if f.url else {}), "sha256": f.sha256, "size": f.size}
             for f in facts.files]
    return {"files": files, "quant": facts.quant, "tokenizer": facts.tokenizer,
            "architecture": {k: v for k, v in arch.items() if v is not None}}


def conflicts_elsewhere(inventory: Inventory, name: str, facts: ModelFacts) -> list[str]:
    """Lines for files the inventory already holds under another model (same name, or same bytes)."""
    lines = []
    for other, model in inventory.models.items():
        if other == name:
            continue
        for i, have in enumerate(model.files):
            for got in facts.files:
                where = f"models.{other}.files[{i}]"
                if have.name == got.name and (have.sha256, have.size) != (got.sha256, got.size):
                    field = "sha256" if have.sha256 != got.sha256 else "size"
                    lines.append(f"{where}.{field}: {got.name} is listed with {field} "
                                 f"{getattr(have, field)}, the file has {getattr(got, field)}")
                elif have.sha256 == got.sha256:
                    lines.append(f"{where}: {got.name} is already in the inventory as model {other} ({have.name}); "
                                 f"to check or complete that entry: --name {other}")
    return lines


# --- writing the inventory -----------------------------------------------------------------------


def _yaml():
    from ruamel.yaml import YAML

    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def _commented(data):
    """Plain data -> ruamel's round-trip types; ``moe`` in flow style, as the examples write it."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(data, dict):
        out = CommentedMap((k, _commented(v)) for k, v in data.items())
        if set(data) == {"experts", "active_experts"}:
            out.fa.set_flow_style()
        return out
    if isinstance(data, list):
        return CommentedSeq(_commented(v) for v in data)
    return data


def _last_line(node) -> tuple | None:
    """``(container, key, slot)`` of the last value written in ``node`` (block style): ruamel keeps the
    comments and blank lines that follow a section on that value, ``container.ca.items[key][slot]``."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    while isinstance(node, (CommentedMap, CommentedSeq)) and len(node):
        key = list(node)[-1] if isinstance(node, CommentedMap) else len(node) - 1
        value = node[key]
        if isinstance(value, (CommentedMap, CommentedSeq)) and len(value) and not value.fa.flow_style():
            node = value
            continue
        return node, key, 2 if isinstance(node, CommentedMap) else 0
    return None


def _move_trailing_lines(before: tuple | None, after: tuple | None) -> None:
    """Keep what followed the models section (blank lines, the next section's comment) after it: move it
    from the value that ended the section before the edit to the value that ends it now."""
    import copy

    if before is None or after is None or before[:2] == after[:2]:
        return
    old, key, slot = before
    slots = old.ca.items.get(key)
    token = slots[slot] if slots and len(slots) > slot else None
    if token is None or "\n" not in token.value:
        return
    eol, _, rest = token.value.partition("\n")
    if not rest:
        return
    if eol.strip():
        token.value = eol + "\n"
    else:
        slots[slot] = None
    moved = copy.copy(token)
    moved.value = "\n" + rest
    new, new_key, new_slot = after
    new.ca.items.setdefault(new_key, [None] * 4)[new_slot] = moved


def write_entries(path: Path, entries: dict[str, dict]) -> bool:
    """Set ``models.<name>`` for each entry, keeping the rest of the file; validate, then replace
    atomically. False when the file already said all of it (and is left untouched)."""
    target = path.resolve()  # the default inventory may be a symlink: edit the file it points at
    yaml = _yaml()
    original = target.read_text(encoding="utf-8")
    document = yaml.load(original)
    models = document.get("models")
    if not models:  # no models: key, "models:" with nothing, or "models: {}"
        from ruamel.yaml.comments import CommentedMap

        models = document["models"] = CommentedMap()
    section_end = _last_line(models)
    for name, data in entries.items():
        if name in models:
            for key, value in data.items():  # fill in, keeping the entry's own order and comments
                if isinstance(value, dict) and isinstance(models[name].get(key), dict):
                    for sub_key, sub_value in value.items():
                        models[name][key].setdefault(sub_key, _commented(sub_value))
                else:
                    models[name].setdefault(key, _commented(value))
        else:
            models[name] = _commented(data)
    _move_trailing_lines(section_end, _last_line(models))
    text = io.StringIO()
    yaml.dump(document, text)
    if text.getvalue() == original:
        return False
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text.getvalue())
        os.chmod(tmp, target.stat().st_mode & 0o7777)
        inventory, findings = check_inventory(tmp)
        if inventory is None:
            errors = [str(replace(f, file=str(path))) for f in findings if f.severity is Severity.error]
            raise UserError(f"{path}: not changed: with the new entry the inventory would not validate:\n"
                            + "\n".join(errors))
        os.replace(tmp, target)
        return True
    finally:
        tmp.unlink(missing_ok=True)


# --- the commands --------------------------------------------------------------------------------


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def describe(name: str, facts: ModelFacts) -> str:
    moe = f", MoE {facts.moe[0]} experts / {facts.moe[1]} used" if facts.moe else ""
    return (f"{name}: {facts.family}, {facts.layers} layers, n_embd {facts.n_embd}, kv_dim {facts.kv_dim}, "
            f"{facts.total_params_b:g}B params ({facts.active_params_b:g}B active){moe}, {facts.quant}, "
            f"tokenizer {facts.tokenizer}, chat template {'yes' if facts.has_chat_template else 'no'}, "
            f"{len(facts.files)} file(s), {_mib(sum(f.size for f in facts.files))}")


def run_add(args) -> int:
    if args.name and len(args.sources) > 1:
        raise UserError("--name names one model: give one SOURCE with it (a split model needs only one shard)")
    path = args.inventory or default_inventory_path()
    # Headers first (cheap, and a bad source is the likelier mistake), then the inventory, then the hashing.
    read = [(source, *gguf_info.read_headers(source)) for source in args.sources]
    inventory = load_inventory(path)  # an invalid inventory is reported as validate reports it
    entries: dict[str, dict] = {}
    lines: list[str] = []
    for source, files, headers in read:
        facts = gguf_info.hash_model(files, headers)
        name = args.name or default_name(facts.files[0].name)
        if name in entries:
            raise UserError(f"{source}: model {name} is already being added from another SOURCE")
        refusals = conflicts_elsewhere(inventory, name, facts)
        existing = inventory.models.get(name)
        if existing is not None:
            refusals += [f"models.{name}.{field}: the inventory says {have}, {source} says {got}"
                         for field, have, got, same in compare(existing, facts) if not same]
        if refusals:
            raise UserError(f"{path}: refusing {source}: it contradicts the inventory:\n" + "\n".join(refusals))
        entries[name] = entry_data(facts)
        verb = "checked" if existing is not None else "added"
        lines.append(f"{verb} {describe(name, facts)}")
    changed = write_entries(path, entries)
    print("\n".join(lines + [f"wrote {path}" if changed else f"{path} already says all of this: not changed"]))
    return 0


def verify_model(name: str, entry: Model, models_dir: Path, report: Report) -> None:
    """One finding per file fact and per header fact of one model."""
    check = lambda what: f"model {name} {what}"  # noqa: E731
    sources = [gguf_info.FileSource(f.name, path=models_dir / f.name) for f in entry.files]
    missing = [s for s in sources if not s.path.is_file()]
    for s in missing:
        actual = "not a regular file" if s.path.exists() else "missing"
        report.add(Finding("local", check(f"file {s.name}"), Severity.fail, expected="a file", actual=actual,
                           hint=f"{s.path}: copy the file there, or pass --models-dir"))
    if missing:
        return
    try:
        facts = gguf_info.hash_model(sources, [gguf_info.read_header(s) for s in sources])
    except SourceError as err:
        report.add(Finding("local", check("header"), Severity.fail, expected="a readable GGUF model",
                           actual=str(err)))
        return
    for field, have, got, same in compare(entry, facts):
        if same:
            report.add(Finding("local", check(field), Severity.ok, expected=have, actual=got))
        else:
            report.add(Finding("local", check(field), Severity.fail, expected=have, actual=got,
                               hint="the file is not what the inventory describes: fetch it again, or re-add it"))


def run_verify(args) -> int:
    path = args.inventory or default_inventory_path()
    inventory = load_inventory(path)
    unknown = [m for m in args.models if m not in inventory.models]
    if unknown:
        raise UserError(f"{', '.join(unknown)}: not a model of {path} (models: {', '.join(inventory.models) or 'none'})")
    if not args.models_dir.is_dir():
        raise UserError(f"--models-dir {args.models_dir}: not a folder")
    report = Report("model verify")
    for name, entry in inventory.models.items():
        if not args.models or name in args.models:
            verify_model(name, entry, args.models_dir, report)
    if not report.findings:
        report.notes.append(f"{path} lists no models")
    return emit(report, args)
