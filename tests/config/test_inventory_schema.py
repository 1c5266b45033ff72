"""The committed JSON schema is generated from the pydantic models and usable on its own."""

from __future__ import annotations

import json
from argparse import Namespace

import jsonschema
import pytest
from inventory_testlib import EXAMPLES, REPO, run_cli
from ruamel.yaml import YAML

from llamafleet.commands import schema as schema_command
from llamafleet.config.schema import committed_schema_path, generate_schema_text
from llamafleet.errors import UserError


def test_committed_schema_matches_the_models():
    assert committed_schema_path() == REPO / "schemas" / "inventory.schema.json"
    assert committed_schema_path().read_text() == generate_schema_text(), \
        "schemas/inventory.schema.json is stale: run `llamafleet schema --write`"


def test_schema_check_command_passes_on_the_committed_file():
    result = run_cli("schema", "--check")
    assert result.returncode == 0, result.stderr
    assert "up to date" in result.stdout


def test_schema_check_command_fails_on_a_stale_file(tmp_path, monkeypatch):
    stale = tmp_path / "inventory.schema.json"
    stale.write_text(generate_schema_text().replace('"minProperties": 1', '"minProperties": 2'))
    monkeypatch.setattr(schema_command, "committed_schema_path", lambda: stale)
    with pytest.raises(UserError, match="out of date"):
        schema_command.run(Namespace(write=False, check=True))


def test_schema_alone_validates_the_examples_and_rejects_typos():
    schema = json.loads(committed_schema_path().read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for example in ("seed-cluster.yaml", "local.yaml"):
        data = json.loads(json.dumps(YAML(typ="safe").load((EXAMPLES / example).read_text())))
        assert not list(validator.iter_errors(data)), example
        data["hosts"]["Bad_Name"] = data["hosts"].pop(next(iter(data["hosts"])))
        assert list(validator.iter_errors(data)), "a host name that breaks the naming rule must fail"
