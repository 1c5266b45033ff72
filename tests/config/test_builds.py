"""Build capabilities (llamafleet/config/builds.py) and the checks that use them.

The shipped data is what the two real builds the rig compiles (b11434, b8942) print, and the real
binaries agree with it: they take the flags it says they take and refuse the ones it says they lack.
Validate checks extra_args and the inventory's features against the pinned build; for a build not
known here it splits "no known build has this flag" (error) from "only some do" (warning).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

import pytest
from inventory_testlib import EXAMPLES, REPO, edit, line_of, run_cli

from llamafleet.config import builds, check_inventory, load_inventory
from llamafleet.deploys.plan import plan_host
from llamafleet.findings import Severity, dotted
from llamafleet.errors import UserError

SHIPPED = REPO / "llamafleet" / "config" / "builds"
SEED = (EXAMPLES / "seed-cluster.yaml").read_text()
TARGET_ARGS = '    extra_args: ["--jinja"]\n'


@pytest.fixture(params=["b11434", "b8942"])
def real_build(request, llama_build, b8942_build):
    """Each of the rig's real builds, with its shipped capabilities."""
    cached = {"b11434": llama_build, "b8942": b8942_build}[request.param]
    assert cached.build == request.param
    return cached, builds.caps_for(request.param)


def _run(binary, *args: str) -> subprocess.CompletedProcess:
    # In the temp folder: an option whose value names a file must not leave one in the checkout.
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60, cwd=tempfile.gettempdir(),
                          env={**os.environ, "LD_LIBRARY_PATH": str(binary.parent)})


# --- the shipped data is the real builds' own ----------------------------------------------------


def test_regenerating_from_the_real_build_reproduces_the_shipped_data(real_build, tmp_path, smollm2):
    """--help, --version, the source tree and a probe run of the real server (SmolLM2 drafting for itself)."""
    cached, _ = real_build
    result = subprocess.run([sys.executable, "-m", "llamafleet.config.builds", "--bin-dir", str(cached.bin_dir),
                             "--build", cached.build, "--source", str(cached.src), "--probe-model", str(smollm2),
                             "--out-dir", str(tmp_path)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / f"{cached.build}.json").read_text() == (SHIPPED / f"{cached.build}.json").read_text()


# What each build is known to do (its CMake files, arg.cpp, server sources and --version). Both rig
# builds are compiled from sdists without git metadata, so their build_info says commit "unknown"
# (llama.cpp's own b8942 release archive reports "b8942-f535774").
KNOWN = {
    "b11434": dict(rpc_binary="ggml-rpc-server", per_request_speculative=False, props_build_info="b11434-unknown",
                   speculation_keeps_length=True,
                   draft_args=["--spec-type", "draft-simple", "--spec-draft-n-max", "8", "--spec-draft-n-min", "2"],
                   has_spec_types={"none", "draft-simple", "ngram-mod"}),
    "b8942": dict(rpc_binary="rpc-server", per_request_speculative=True, props_build_info="b8942-unknown",
                  speculation_keeps_length=False,
                  draft_args=["--draft-max", "8", "--draft-min", "2"],
                  has_spec_types={"none", "ngram-cache", "ngram-simple", "ngram-map-k", "ngram-map-k4v", "ngram-mod"}),
}


@pytest.mark.parametrize("build", sorted(KNOWN))
def test_shipped_capabilities(build):
    caps, facts = builds.caps_for(build), KNOWN[build]
    assert caps.origin == "shipped" and caps.server_binary == "llama-server"
    assert caps.rpc_binary == facts["rpc_binary"]
    assert caps.per_request_speculative is facts["per_request_speculative"]
    assert caps.speculation_keeps_length is facts["speculation_keeps_length"]
    assert caps.props_build_info == facts["props_build_info"]
    assert caps.draft_args(8, 2) == facts["draft_args"]
    assert facts["has_spec_types"] <= set(caps.spec_types)
    assert set(caps.deploy_flags) == set(builds.DEPLOY_PURPOSES)  # both builds can render everything
    assert caps.table("server").usable("-np").flags == ("-np", "--parallel")
    assert {"-H", "-p", "-d", "-c"} <= set(caps.rpc.by_flag)


def test_spec_types_differ_where_the_builds_do():
    assert "draft-simple" in builds.caps_for("b11434").spec_types
    assert "draft-simple" not in builds.caps_for("b8942").spec_types


def test_the_real_build_reports_what_the_data_says(real_build):
    cached, caps = real_build
    assert cached.rpc_server.name == caps.rpc_binary and cached.rpc_server.is_file()
    version = _run(cached.server, "--version")
    assert caps.version in version.stdout + version.stderr


def test_the_real_server_takes_the_rendered_flags(real_build):
    """Everything a deploy renders for a natively speculating target parses (``--version`` ends the
    parse), and the other build's draft flags do not."""
    cached, caps = real_build
    f = caps.deploy_flags
    argv = [f["model"], "x.gguf", f["host"], "127.0.0.1", f["port"], "8080", f["ctx_size"], "512", f["slots"], "2",
            f["gpu_layers"], "0", f["no_repack"], f["no_webui"], f["draft_model"], "d.gguf", f["draft_gpu_layers"], "99",
            *caps.draft_args(8, 2)]
    result = _run(cached.server, *argv, "--version")
    assert result.returncode == 0, result.stdout + result.stderr
    other = builds.caps_for("b8942" if caps.build == "b11434" else "b11434")
    refused = _run(cached.server, *other.draft_args(8, 2), "--version")
    assert refused.returncode != 0


def test_the_real_server_agrees_on_choices_and_removed_options(real_build):
    cached, caps = real_build
    with_choices = [o for o in caps.server.options if o.choices]
    assert any("--spec-type" in o.flags for o in with_choices)
    for option in with_choices:
        for choice in option.choices:
            result = _run(cached.server, option.flags[0], choice, "--version")
            assert result.returncode == 0, (option.flags, choice, result.stdout + result.stderr)
        assert _run(cached.server, option.flags[0], "no-such-value", "--version").returncode != 0, option.flags
    for option in (o for o in caps.server.options if o.removed):
        assert _run(cached.server, option.flags[0], "1", "--version").returncode != 0, option.flags
    bad = _run(cached.server, "--np", "1", "--version")
    assert bad.returncode != 0 and "--np" in bad.stdout + bad.stderr
    assert builds.nearest_flags(caps, "server", "--np") == ["-np", "--parallel"]


# --- help parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("-t,    --threads N                      number of CPU threads\n", [builds.Option(("-t", "--threads"), 1)]),
    ("-ot,   --override-tensor <tensor name pattern>=<buffer type>,...\n        override tensor buffer type\n",
     [builds.Option(("-ot", "--override-tensor"), 1)]),
    ("--mmap, --no-mmap                       whether to memory-map model\n",
     [builds.Option(("--mmap",), 0), builds.Option(("--no-mmap",), 0)]),
    ("--control-vector-layer-range START END\n                                        layer range\n",
     [builds.Option(("--control-vector-layer-range",), 2)]),
    ("  -c, --cache                      enable local file cache\n", [builds.Option(("-c", "--cache"), 0)]),
    ("--spec-type [none|ngram-cache|ngram-mod]  type of speculative decoding\n",
     [builds.Option(("--spec-type",), 1, ("none", "ngram-cache", "ngram-mod"))]),
    ("--spec-type none,draft-simple,ngram-mod\n                                        comma-separated list\n",
     [builds.Option(("--spec-type",), 1, ("none", "draft-simple", "ngram-mod"))]),
    ("--rope-scaling {none,linear,yarn}      RoPE frequency scaling method\n",
     [builds.Option(("--rope-scaling",), 1, ("none", "linear", "yarn"))]),
    ("-ts,   --tensor-split N0,N1,N2,...      fraction of the model\n", [builds.Option(("-ts", "--tensor-split"), 1)]),
    ("--draft, --draft-n, --draft-max N       the argument has been removed. use --spec-draft-n-max or\n"
     "                                        --spec-ngram-mod-n-max\n-np,   --parallel N                     slots\n",
     [builds.Option(("--draft", "--draft-n", "--draft-max"), 1, (), True), builds.Option(("-np", "--parallel"), 1)]),
], ids=["plain", "multi-word hint", "negation", "two values", "rpc column", "bracket choices", "comma choices",
        "brace choices", "not a fixed set", "removed"])
def test_help_parser(text, expected):
    assert builds.parse_help("----- common params -----\n\n" + text) == expected


# --- validate against the pinned build -----------------------------------------------------------


def _seed(build: str, extra_args: str, more=()) -> str:
    text = edit(SEED, "  build: b8111\n", f"  build: {build}\n")
    text = edit(text, TARGET_ARGS, f"    extra_args: {extra_args}\n")
    for old, new in more:
        text = edit(text, old, new)
    return text


def _findings(write, text):
    _, findings = check_inventory(write(text))
    return [f for f in findings if f.code.startswith("LF10")]


# (build, extra_args, expected [(code, severity, arg index, text in message or hint)])
FLAG_CASES = [
    ("b11434", '["--np", "1", "--jinja"]', [("LF102", "error", 0, "did you mean -np or --parallel?")]),
    ("b8942", '["--np", "1", "--jinja"]', [("LF102", "error", 0, "did you mean -np or --parallel?")]),
    ("b11434", '["--draft-max", "4"]', [("LF102", "error", 0, "lists only as removed")]),
    ("b8942", '["--draft-max", "4"]', [("LF105", "error", 0, "native_draft")]),
    ("b11434", '["--spec-draft-n-max", "4"]', [("LF105", "error", 0, "native_draft")]),
    ("b8942", '["--spec-draft-n-max", "4"]', [("LF102", "error", 0, "has no flag '--spec-draft-n-max'")]),
    ("b8942", '["--spec-type", "draft-simple"]', [("LF108", "error", 1, "does not accept 'draft-simple'")]),
    ("b11434", '["--spec-type", "draft-simple"]', []),
    ("b8942", '["--spec-type", "ngram-mod", "-fa", "on"]', []),
    ("b11434", '["-fa", "sometimes"]', [("LF108", "error", 1, "one of: on, off, auto")]),
    ("b11434", '["--threads=2"]', [("LF102", "error", 0, "no --flag=value form")]),
    ("b8942", '["--jinja", "--threads"]', [("LF106", "error", 1, "needs 1 value")]),
    # a build not known here: an error when no known build has the flag, a warning naming those that do
    ("b8111", '["--np", "1", "--jinja"]', [("LF103", "warning", None, "b8111 is not known here"),
                                          ("LF102", "error", 0, "did you mean -np or --parallel?")]),
    ("b8111", '["--spec-ngram-mod-n-max", "4"]', [("LF103", "warning", None, ""),
                                                 ("LF102", "warning", 0, "only in b11434 of the known builds")]),
    ("b8111", '["--spec-draft-sampling", "greedy", "--jinja"]', [("LF103", "warning", None, ""),
                                                                 ("LF102", "warning", 0, "only in b11434")]),
    ("b8111", '["--jinja", "-fa", "on"]', [("LF103", "warning", None, "")]),
]


@pytest.mark.parametrize("build,args,expected", FLAG_CASES,
                         ids=[f"{c[0]} {c[1]}" for c in FLAG_CASES])
def test_extra_args_against_the_pinned_build(write, tmp_path, monkeypatch, build, args, expected):
    monkeypatch.setenv("LLAMAFLEET_CACHE", str(tmp_path / "empty-cache"))  # nothing learned
    text = _seed(build, args)
    found = _findings(write, text)
    assert [(f.code, f.severity.value) for f in found] == [(c, s) for c, s, _, _ in expected], "\n".join(map(str, found))
    args_line = line_of(text, "    extra_args: [")
    for finding, (_, _, index, snippet) in zip(found, expected):
        assert snippet in finding.message + " (hint: " + finding.hint
        if index is not None:
            assert dotted(finding.path) == f"services.target.extra_args[{index}]"
            assert finding.line == args_line
        else:
            assert finding.line == line_of(text, f"  build: {build}\n")


def test_seed_example_with_double_dash_np_fails_at_its_line(write, tmp_path):
    """The issue's case: the example as committed (pinning b8111), with --np on the target."""
    text = edit(SEED, TARGET_ARGS, '    extra_args: ["--np", "1", "--jinja"]\n')
    path = write(text)
    result = run_cli("validate", str(path), env={"LLAMAFLEET_CACHE": str(tmp_path / "empty-cache")})
    assert result.returncode == 1, result.stdout + result.stderr
    line = line_of(text, '    extra_args: ["--np"')
    col = text.splitlines()[line - 1].index('"--np"') + 1
    assert f"{path}:{line}:{col} LF102 services.target.extra_args[0]:" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr


# --- features the pinned build cannot express (LF107), with a learned build ----------------------


def _without(help_text: str, *flags: str) -> str:
    """A recorded --help with the lines of some options taken out (an older or trimmed build)."""
    return "\n".join(line for line in help_text.splitlines()
                     if not any(line.lstrip().startswith((f"{f},", f"{f} ")) for f in flags))


@pytest.fixture
def b8942_help(b8942_build):
    """(server --help, RPC worker --help, server --version) as the real b8942 binaries print them."""
    outputs = [_run(binary, arg) for binary, arg in ((b8942_build.server, "--help"),
                                                     (b8942_build.rpc_server, "--help"),
                                                     (b8942_build.server, "--version"))]
    return tuple(r.stdout + r.stderr for r in outputs)


def test_learned_store_round_trip_and_offline_validate(b8942_help, write, tmp_path, monkeypatch):
    server_help, rpc_help, version = b8942_help
    monkeypatch.setenv("LLAMAFLEET_CACHE", str(tmp_path / "cache"))
    assert builds.caps_for("b8111") is None and "b8111" not in builds.known_builds()
    learned = builds.caps_from_help("b8111", server_help, rpc_help, version, "rpc-server")
    assert learned.origin == "learned" and learned.per_request_speculative is None
    assert learned.deploy_flags == builds.caps_for("b8942").deploy_flags
    path = builds.save_learned(learned)
    assert path == tmp_path / "cache" / "builds" / "b8111.json"
    assert [p.name for p in path.parent.iterdir()] == ["b8111.json"]  # no temporary file left behind
    assert builds.caps_for("b8111") == learned
    assert "b8111" in builds.known_builds() and "b8111" in builds.builds_with_flag("server", "--draft-max")
    # validate, offline, now checks the four-machine example (b8111) against what was learned
    text = edit(SEED, TARGET_ARGS, '    extra_args: ["--np", "1", "--spec-type", "draft-simple"]\n')
    result = run_cli("validate", str(write(text)), env={"LLAMAFLEET_CACHE": str(tmp_path / "cache")})
    assert result.returncode == 1
    assert "LF103" not in result.stdout
    assert "LF102 services.target.extra_args[0]: llama-server b8111 has no flag '--np'" in result.stdout
    assert "LF108 services.target.extra_args[3]: llama-server b8111 does not accept 'draft-simple'" in result.stdout


def test_a_corrupt_learned_file_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMAFLEET_CACHE", str(tmp_path))
    (tmp_path / "builds").mkdir()
    (tmp_path / "builds" / "b8111.json").write_text("{not json")
    with pytest.raises(UserError, match=r"b8111.json: not a readable llama.cpp capability file"):
        builds.caps_for("b8111")


@pytest.mark.parametrize("removed,inventory_edit,purpose,field", [
    (("--rpc",), (), "rpc", "native_draft.rpc_worker"),
    (("--draft", "--draft-min"), (), "draft_max", "native_draft.n_max"),
    (("-devd",), (), "draft_device", "native_draft.rpc_worker"),
    (("-c",), ("    device: CUDA0\n", "    device: CUDA0\n    cache: true\n"), "rpc_cache", "cache"),
], ids=["no --rpc", "no draft length", "no draft device", "rpc worker without cache"])
def test_a_feature_the_build_cannot_express(b8942_help, write, tmp_path, monkeypatch, removed, inventory_edit,
                                            purpose, field):
    server_help, rpc_help, version = b8942_help
    rpc_removed = purpose.startswith("rpc_")
    caps = builds.caps_from_help("b8111", server_help if rpc_removed else _without(server_help, *removed),
                                 _without(rpc_help, *removed) if rpc_removed else rpc_help,
                                 version, "rpc-server")
    assert caps.flag(purpose) is None
    monkeypatch.setenv("LLAMAFLEET_CACHE", str(tmp_path))
    builds.save_learned(caps)
    text = edit(SEED, *inventory_edit) if inventory_edit else SEED
    found = [f for f in _findings(write, text) if f.code == "LF107"]
    assert len(found) >= 1, found
    service = "desktop-rpc" if rpc_removed else "target"
    assert any(dotted(f.path) == f"services.{service}.{field}" and f.severity is Severity.error
               and purpose.replace("_", " ") in f.message for f in found), "\n".join(map(str, found))
    with pytest.raises(UserError, match=f"llama.cpp b8111: .* has no option for {purpose.replace('_', ' ')}"):
        caps.require(purpose, "the test")
    if purpose == "rpc_cache":  # by default (and with cache: false) such a build runs its workers without it
        assert [f for f in _findings(write, SEED) if f.code == "LF107"] == []
        text = edit(SEED, "    device: CUDA0\n", "    device: CUDA0\n    cache: false\n")
        assert [f for f in _findings(write, text) if f.code == "LF107"] == []
        inventory = load_inventory(write(SEED))
        workers = [s for name in inventory.hosts for s in plan_host(inventory, name, caps).services
                   if s.role == "rpc-worker"]
        assert workers and all("-c" not in s.argv and "LLAMA_CACHE" not in dict(s.env) for s in workers)


def test_shipped_files_record_their_origin():
    for path in SHIPPED.glob("*.json"):
        data = json.loads(path.read_text())
        assert data["build"] == path.stem
        assert data["generated_by"].startswith("python -m llamafleet.config.builds")
    assert builds.shipped_builds() == ("b8942", "b11434")
