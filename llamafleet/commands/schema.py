"""``llamafleet schema``: print, write or check ``schemas/inventory.schema.json``, which is generated
from the pydantic models (the single source of truth)."""

from __future__ import annotations

import sys

from llamafleet.config.schema import committed_schema_path, generate_schema_text
from llamafleet.errors import UserError


def register(subparsers) -> None:
    parser = subparsers.add_parser("schema", help="generate the inventory JSON schema from the models")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true", help="write schemas/inventory.schema.json")
    mode.add_argument("--check", action="store_true", help="exit 1 if the committed schema is out of date")
    parser.set_defaults(func=run)


def run(args) -> int:
    text = generate_schema_text()
    path = committed_schema_path()
    if args.write:
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
        return 0
    if args.check:
        current = path.read_text(encoding="utf-8") if path.exists() else ""
        if current != text:
            raise UserError(f"{path} is out of date with llamafleet/config/models.py (run: llamafleet schema --write)")
        print(f"{path} is up to date")
        return 0
    sys.stdout.write(text)
    return 0
