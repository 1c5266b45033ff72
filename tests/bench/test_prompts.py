"""The built-in prompt set and --prompts files, good and bad."""

import pytest

from llamafleet.bench.prompts import CATEGORIES, built_in_prompts, load_prompts
from llamafleet.errors import UserError


def test_built_in_set_covers_the_seed_categories_with_several_prompts_each():
    prompts = built_in_prompts()
    for category in CATEGORIES:
        assert len([p for p in prompts if p.category == category]) >= 3
    assert len({p.key for p in prompts}) == len(prompts)


def test_built_in_set_can_be_cut_per_category():
    prompts = built_in_prompts(per_category=1)
    assert [p.category for p in prompts] == list(CATEGORIES)


def test_yaml_mapping_file(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("factual:\n  - What is 2+2?\n  - Name a colour.\ncode:\n  - Write hello world.\n")
    prompts = load_prompts(path)
    assert [(p.key, p.text) for p in prompts] == [
        ("factual-0", "What is 2+2?"), ("factual-1", "Name a colour."), ("code-0", "Write hello world.")
    ]


def test_json_list_file(tmp_path):
    path = tmp_path / "p.json"
    path.write_text('[{"category": "maths", "prompt": "1+1?"}, {"category": "maths", "prompt": "2+2?"}]')
    assert [p.key for p in load_prompts(path)] == ["maths-0", "maths-1"]


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("p.json", '{"factual": ["a",', r"p.json:1:\d+: invalid JSON"),
        ("p.yaml", "factual: [a, b\n", r"p.yaml:\d+:\d+: invalid YAML"),
        ("p.yaml", "factual: just one string\n", "category 'factual': expected a list of prompt strings"),
        ("p.yaml", "factual:\n  - ''\n", "category 'factual' item 0: prompt must be a non-empty string"),
        ("p.json", '[{"category": "x"}]', "item 0: expected exactly the keys 'category' and 'prompt'"),
        ("p.json", '[{"category": 3, "prompt": "hi"}]', "item 0: category must be a non-empty string"),
        ("p.json", '"hello"', "expected a mapping"),
        ("p.yaml", "{}\n", "no prompts found"),
    ],
)
def test_bad_files_get_a_clear_error_naming_file_and_item(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_prompts(path)


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="cannot read prompt file .*nope.yaml"):
        load_prompts(tmp_path / "nope.yaml")
