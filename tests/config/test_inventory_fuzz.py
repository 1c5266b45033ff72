"""Whatever a user writes, validation ends in findings, never in an exception: random values are put
at random places of the examples and the whole pipeline (YAML, schema, models, checks) runs."""

from __future__ import annotations

import io

from inventory_testlib import EXAMPLES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from llamafleet.config import check_inventory
from llamafleet.findings import Severity

_yaml = YAML(typ="safe")
BASES = {name: _yaml.load((EXAMPLES / name).read_text()) for name in ("local.yaml", "seed-cluster.yaml")}

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=False),
                    st.text(max_size=12), st.sampled_from(["all", "none", "127.0.0.1", "0.0.0.0", "CUDA9", "-np",
                                                           "--np", "smollm2", "target", "rpc", "local", "metal"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                           max_size=3), max_leaves=6)


def _paths(node, prefix=()):
    yield prefix
    children = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, child in children:
        yield from _paths(child, prefix + (key,))


def _replaced(data, path, value):
    if not path:
        return value
    copy = dict(data) if isinstance(data, dict) else list(data)
    copy[path[0]] = _replaced(data[path[0]], path[1:], value)
    return copy


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.sampled_from(sorted(BASES)), data=st.data(), value=values)
def test_random_value_anywhere_gives_findings_not_exceptions(tmp_path, base, data, value):
    paths = list(_paths(BASES[base]))
    path = data.draw(st.sampled_from(paths[1:]))
    out = io.StringIO()
    _yaml.dump(_replaced(BASES[base], path, value), out)
    target = tmp_path / "cluster.yaml"
    target.write_text(out.getvalue())
    inventory, findings = check_inventory(target)
    errors = [f for f in findings if f.severity is Severity.error]
    assert (inventory is None) == bool(errors)
    for finding in findings:
        assert finding.line is not None and finding.line >= 1, finding
        assert finding.code.startswith("LF") and finding.message, finding


TEXTS = {name: (EXAMPLES / name).read_text() for name in ("local.yaml", "seed-cluster.yaml")}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(base=st.sampled_from(sorted(TEXTS)), data=st.data(),
       insert=st.text(alphabet=st.sampled_from(list(" \n\t:-[]{}&*!|>'\"#,?%@`\\0aZ9")), max_size=4))
def test_random_text_edit_gives_findings_not_exceptions(tmp_path, base, data, insert):
    text = TEXTS[base]
    start = data.draw(st.integers(0, len(text)))
    end = data.draw(st.integers(start, min(len(text), start + 8)))
    target = tmp_path / "cluster.yaml"
    target.write_text(text[:start] + insert + text[end:])
    inventory, findings = check_inventory(target)
    assert (inventory is None) == any(f.severity is Severity.error for f in findings)
