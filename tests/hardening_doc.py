"""The generated parts of ``docs/hardening.md``: the bad inventories (``config/bad_inventories.py``,
each run through the real loader, with the finding it ended in) and the bad command lines
(``cli_bad_inputs.py``). ``python tests/hardening_doc.py`` rewrites them between their markers;
``test_hardening_doc`` fails when the committed page differs, so the page cannot drift from the tests."""

from __future__ import annotations

import sys
import tempfile
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "config")]

from bad_inventories import CASES  # noqa: E402
from cli_bad_inputs import CALLS  # noqa: E402

from llamafleet.config import check_inventory  # noqa: E402
from llamafleet.findings import dotted  # noqa: E402

DOC = HERE.parent / "docs" / "hardening.md"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def inventories_section() -> str:
    rows, ended = [], Counter()
    for case in CASES:
        with tempfile.TemporaryDirectory() as folder:
            path, _ = case.write(Path(folder))
            inventory, findings = check_inventory(path)
            hit = next((f for f in findings if f.code == case.code and dotted(f.path) == case.path), None)
            how = "ACCEPTED" if inventory is not None else "no matching finding" if hit is None else (
                f"`{hit.code}` at {hit.line}:{hit.col} `{dotted(hit.path)}`: {hit.message.replace(folder, '{d}')}")
            ended[hit.code if hit else how] += 1
            rows.append(f"| {_cell(case.kind)} | {_cell(case.name)} | {_cell(how)} |")
    summary = ", ".join(f"{code} {count}" for code, count in sorted(ended.items()))
    refused = sum(count for code, count in ended.items() if code.startswith("LF"))
    return "\n".join([f"{len(CASES)} bad inventories, each one of the examples with one mistake: {refused} refused "
                      f"with their own finding, {len(CASES) - refused} not ({summary}). `{{d}}` is a scratch folder "
                      "holding the files a case names (a proxy's certificate and key).", "",
                      "| class | inventory | how it ended |", "|---|---|---|", *rows])


def cli_section() -> str:
    rows = [f"| {_cell(c.name)} | `llamafleet {_cell(' '.join(c.argv))}` | {c.code} | {_cell(c.says)} |" for c in CALLS]
    codes = Counter(c.code for c in CALLS)
    return "\n".join([f"{len(CALLS)} bad command lines over every subcommand: {codes[1]} end in exit 1 (bad input) "
                      f"and {codes[2]} in exit 2 (usage), each with one line that says why; none prints a traceback. "
                      "`{d}` is a scratch folder holding the files named; `{local}` is `inventory/examples/local.yaml`.",
                      "", "| case | command | exit | the line says |", "|---|---|---|---|", *rows])


SECTIONS = {"bad-inventories": inventories_section, "bad-command-lines": cli_section}


def rendered(doc: str) -> str:
    for name, make in SECTIONS.items():
        begin, end = f"<!-- generated: {name} -->\n", f"<!-- end: {name} -->"
        head, rest = doc.split(begin, 1)
        _, tail = rest.split(end, 1)
        doc = head + begin + make() + "\n" + end + tail
    return doc


if __name__ == "__main__":
    DOC.write_text(rendered(DOC.read_text()))
    print(f"wrote {DOC}")
