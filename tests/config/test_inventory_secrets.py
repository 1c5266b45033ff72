"""LF196: `validate` warns when a secret is written into the inventory (and so into a unit file, and for
arguments into every `ps` listing). Variants are edits of the committed examples: each warned case names
the dotted path and the line; each quiet case is a lookalike that names where a secret is, or is no secret.
(llama-server's own API key options are errors, LF109: tests/config/bad_inventories.py.)"""

from __future__ import annotations

import pytest
from inventory_testlib import EXAMPLES, edit, line_of

from llamafleet.config import check_inventory
from llamafleet.findings import Severity, dotted

LOCAL = "local.yaml"  # pins b11434 (capability data shipped)
SEED = "seed-cluster.yaml"  # pins b8111 (no capability data: every known build's options are consulted)
DRAFTER_ARGS = '    ctx_size: 2048\n    extra_args: ["--threads", "1"]'
PROXY_AUTH = "    auth: {token_file: /opt/llamafleet/proxy.token}\n"
SEED_ARGS = '    extra_args: ["--jinja"]'
MODEL_FILE = "      - name: SmolLM2-135M-Instruct.Q4_1.gguf\n"
RELEASE_FILE = "    - file: llama-b11434-bin-ubuntu-x64.tar.gz\n"


def _args(*items: str) -> list[tuple[str, str]]:
    quoted = ", ".join(f'"{i}"' for i in items)
    return [(DRAFTER_ARGS, f"    ctx_size: 2048\n    extra_args: [{quoted}]")]


def _proxy_env(body: str) -> list[tuple[str, str]]:
    return [(PROXY_AUTH, PROXY_AUTH + f"    env: {body}\n")]


# (id, example, edits, dotted path of the warning, snippet whose line it names)
WARNED = [
    ("hf token argument", LOCAL, _args("--hf-token", "s3cr3t"), "services.drafter.extra_args[0]",
     '    extra_args: ["--hf-token"'),
    ("hf token after another flag", LOCAL, _args("--threads", "1", "--hf-token", "hf_x"),
     "services.drafter.extra_args[2]", '    extra_args: ["--threads", "1", "--hf-token"'),
    ("short spelling of a secret flag", LOCAL, _args("-hft", "hf_x"), "services.drafter.extra_args[0]",
     '    extra_args: ["-hft"'),
    ("secret flag on a build without capability data", SEED, [(SEED_ARGS, '    extra_args: ["--jinja", "--hf-token", "k"]')],
     "services.target.extra_args[1]", '    extra_args: ["--jinja", "--hf-token"'),
    ("secret-looking env name", LOCAL, _proxy_env("{HF_TOKEN: hf_abc}"), "services.proxy.env.HF_TOKEN", "    env: {HF_TOKEN"),
    ("api key env on a drafter", LOCAL, [(DRAFTER_ARGS, DRAFTER_ARGS + "\n    env: {OPENAI_API_KEY: sk-1}")],
     "services.drafter.env.OPENAI_API_KEY", "    env: {OPENAI_API_KEY"),
    ("password env, lower case", LOCAL, _proxy_env("{db_password: hunter2}"), "services.proxy.env.db_password",
     "    env: {db_password"),
    ("token env in camel case", LOCAL, _proxy_env("{GithubToken: ghp_x}"), "services.proxy.env.GithubToken",
     "    env: {GithubToken"),
    ("token run into its prefix", LOCAL, _proxy_env("{HFTOKEN: hf_x}"), "services.proxy.env.HFTOKEN", "    env: {HFTOKEN"),
    ("secret env, mixed case", LOCAL, _proxy_env("{Client_Secret: s3cr3t}"), "services.proxy.env.Client_Secret",
     "    env: {Client_Secret"),
    ("key env, lower case", LOCAL, _proxy_env("{anthropic_api_key: sk-1}"), "services.proxy.env.anthropic_api_key",
     "    env: {anthropic_api_key"),
    ("the proxy's token_env given a value", LOCAL,
     [(PROXY_AUTH, "    auth: {token_env: LF_BEARER}\n    env: {LF_BEARER: abc}\n")], "services.proxy.env.LF_BEARER",
     "    env: {LF_BEARER"),
    ("credentials in an env URL", LOCAL, _proxy_env('{HTTPS_PROXY: "http://me:pw@10.0.0.1:3128"}'),
     "services.proxy.env.HTTPS_PROXY", "    env: {HTTPS_PROXY"),
    ("credentials in an argument URL", LOCAL, _args("--alias", "https://me:pw@example.org/x"),
     "services.drafter.extra_args[1]", '    extra_args: ["--alias"'),
    ("token in a model URL's query", LOCAL, [(MODEL_FILE, MODEL_FILE + '        url: "https://example.org/m.gguf?token=hf_x"\n')],
     "models.smollm2.files[0].url", "        url:"),
    ("a signed release URL", LOCAL, [(RELEASE_FILE, RELEASE_FILE + '      url: "https://b.s3.example.org/l.tar.gz?'
                                      'X-Amz-Credential=AK&X-Amz-Signature=f00"\n')],
     "llama_cpp.releases[0].url", "      url:"),
]

# lookalikes that must not warn
QUIET = [
    ("a switch named like a secret", LOCAL, _args("--cors-credentials")),
    ("token counts are no tokens", LOCAL, _proxy_env("{TOKENIZERS_PARALLELISM: 'false', MAX_TOKENS: '8'}")),
    ("a key's id is no key", LOCAL, _proxy_env("{AWS_ACCESS_KEY_ID: AKIA1}")),
    ("env naming where the secret is", LOCAL, _proxy_env("{HF_TOKEN_PATH: /etc/hf, SSL_KEY_FILE: /etc/k}")),
    ("empty secret-looking value", LOCAL, _proxy_env("{HF_TOKEN: ''}")),
    ("token_env names a variable", LOCAL, [(PROXY_AUTH, "    auth: {token_env: LF_BEARER}\n")]),
    ("URL without credentials", LOCAL, _proxy_env('{HTTPS_PROXY: "http://10.0.0.1:3128/a@b"}')),
    ("a download URL's harmless query", LOCAL,
     [(MODEL_FILE, MODEL_FILE + '        url: "https://example.org/m.gguf?download=true&max_tokens=8"\n')]),
]


def _variant(example: str, edits: list[tuple[str, str]]) -> str:
    text = (EXAMPLES / example).read_text()
    for old, new in edits:
        text = edit(text, old, new)
    return text


@pytest.mark.parametrize("example,edits,path,snippet", [c[1:] for c in WARNED], ids=[c[0] for c in WARNED])
def test_a_secret_in_the_inventory_is_a_warning(write, example, edits, path, snippet):
    text = _variant(example, edits)
    inventory, findings = check_inventory(write(text))
    assert inventory is not None, "\n".join(map(str, findings))  # a warning, the inventory still loads
    hits = [f for f in findings if f.code == "LF196"]
    assert [dotted(f.path) for f in hits] == [path], "\n".join(map(str, findings))
    (finding,) = hits
    assert finding.severity is Severity.warning and finding.hint
    assert finding.line == line_of(text, snippet), str(finding)
    assert "s3cr3t" not in str(finding) and "hunter2" not in str(finding) and ":pw@" not in str(finding)


@pytest.mark.parametrize("example,edits", [c[1:] for c in QUIET], ids=[c[0] for c in QUIET])
def test_lookalikes_are_not_secrets(write, example, edits):
    inventory, findings = check_inventory(write(_variant(example, edits)))
    assert inventory is not None, "\n".join(map(str, findings))
    assert [f for f in findings if f.code == "LF196"] == []


@pytest.mark.parametrize("example", [LOCAL, SEED])
def test_the_committed_examples_hold_no_secret(example, write):
    _, findings = check_inventory(write(_variant(example, [])))
    assert [f for f in findings if f.code == "LF196"] == []
