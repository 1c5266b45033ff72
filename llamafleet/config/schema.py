"""Generate the inventory's JSON schema from the pydantic models, in one stable text form, so the
committed ``schemas/inventory.schema.json`` can be compared byte for byte."""

from __future__ import annotations

import json
from pathlib import Path

from llamafleet.config.models import Inventory

SCHEMA_ID = "https://llamafleet.invalid/schemas/inventory.schema.json"


def _names_as_property_names(node):
    """pydantic writes ``dict[Name, X]`` as patternProperties, which silently accepts a key that does
    not match; say it as propertyNames + additionalProperties so a bad name is an error."""
    if isinstance(node, dict):
        patterns = node.get("patternProperties")
        if isinstance(patterns, dict) and len(patterns) == 1 and "propertyNames" in node:
            (pattern, value), = patterns.items()
            del node["patternProperties"]
            node["propertyNames"]["pattern"] = pattern
            node["additionalProperties"] = value
        for child in node.values():
            _names_as_property_names(child)
    elif isinstance(node, list):
        for child in node:
            _names_as_property_names(child)


def generate_schema_text() -> str:
    schema = Inventory.model_json_schema(mode="validation")
    _names_as_property_names(schema)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = SCHEMA_ID
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def committed_schema_path() -> Path:
    """The schema file in the source tree (the ``schemas/`` folder next to ``llamafleet/``)."""
    import llamafleet.schemas

    return Path(llamafleet.schemas.__file__).with_name("inventory.schema.json")
