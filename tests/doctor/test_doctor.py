"""``llamafleet doctor`` against real llama-server and ggml-rpc-server processes on loopback.

The servers are the pinned llama.cpp build on SmolLM2; the "other build" is a copy of the same
llama-server whose compiled-in build number was changed (what a different build reports), and the
"other tokenizer" draft is SmolLM2 with two vocabulary entries swapped (see conftest.py).
"""

from __future__ import annotations

import json
import subprocess
import xml.etree.ElementTree as ET

import pytest

from llamafleet.cli import main
from llamafleet.config import load_inventory
from llamafleet.rig import servers
from llamafleet.server_key import key_source

from .conftest import write_inventory

pytestmark = pytest.mark.slow


def version_build_info(build) -> str:
    """What /props should say, from the binary's own --version ("build N, commit C" -> "bN-C")."""
    out = subprocess.run([str(build.server), "--version"], capture_output=True, text=True,
                         env={"LD_LIBRARY_PATH": str(build.bin_dir)}, timeout=30)
    line = next(l for l in (out.stdout + out.stderr).splitlines() if l.startswith("version:"))
    number = line.split("(build ")[1].split(",")[0]
    commit = line.split("commit ")[1].rstrip(")")
    return f"b{number}-{commit}"


@pytest.fixture(scope="module")
def server_key(tmp_path_factory):
    """The cluster's API key where doctor looks for it without security.server_key_file (the
    deploy's generated key, under $LLAMAFLEET_STATE), 0600; the servers below require it."""
    state = tmp_path_factory.mktemp("state")
    key_file = state / "clusters" / "doctor-test" / "server.key"
    key_file.parent.mkdir(parents=True, mode=0o700)
    key_file.write_text("doctor-test-key-0123456789abcdef\n")
    key_file.chmod(0o600)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("LLAMAFLEET_STATE", str(state))
        yield key_file


@pytest.fixture(scope="module")
def fleet(llama_build, smollm2, swapped_vocab, other_build, log_dir, server_key):
    """target (-np 2), a matching drafter, a drafter with a changed vocabulary, a server from
    another build, and an rpc worker on 127.0.0.1; every llama-server requires the cluster's key, as
    deployed ones do."""
    started = {}
    key = ["--api-key-file", str(server_key)]
    try:
        started["target"] = servers.start_llama_server(llama_build, smollm2, log_dir=log_dir, name="target",
                                                       args=["-c", "1024", "-np", "2", *key])
        started["drafter"] = servers.start_llama_server(llama_build, smollm2, log_dir=log_dir, name="drafter",
                                                        args=["-c", "512", "-np", "1", *key])
        started["odd-vocab"] = servers.start_llama_server(llama_build, swapped_vocab, log_dir=log_dir,
                                                          name="odd-vocab", args=["-c", "512", "-np", "1", *key])
        started["other-build"] = servers.start_llama_server(other_build, smollm2, log_dir=log_dir,
                                                            name="other-build", args=["-c", "512", "-np", "1", *key])
        started["rpc"] = servers.start_rpc_server(llama_build, log_dir=log_dir)
        yield started
    finally:
        for proc in started.values():
            proc.stop()


def services(fleet, *, drafter="drafter", target_parallel=2, rpc_bind="127.0.0.1", proxy_drafters=None):
    svc = {
        "target": {"role": "target", "host": "box", "model": "smollm2", "port": fleet["target"].port, "parallel": target_parallel},
        "draft": {"role": "drafter", "host": "box", "model": "smollm2", "port": fleet[drafter].port, "parallel": 1},
        "rpc": {"role": "rpc-worker", "host": "box", "port": fleet["rpc"].port, "bind": rpc_bind},
    }
    return svc


def doctor(tmp_path, capsys, inventory, *extra):
    report = tmp_path / "doctor.xml"
    code = main(["doctor", str(inventory), "--json", "--junit", str(report), *extra])
    captured = capsys.readouterr()
    assert captured.out, captured.err
    data = json.loads(captured.out)
    assert data["exit_code"] == code
    return code, {f["check"]: f for f in data["findings"]}, ET.parse(report).getroot()


def test_doctor_passes_against_correct_servers(fleet, llama_build, tmp_path, capsys):
    inventory = write_inventory(tmp_path, services(fleet))
    code, findings, junit = doctor(tmp_path, capsys, inventory, "--expect-build-info", version_build_info(llama_build))
    assert code == 0, findings
    assert {c: f["severity"] for c, f in findings.items()} == {
        "health target": "ok", "api key target": "ok", "build target": "ok", "slots target": "ok",
        "health draft": "ok", "api key draft": "ok", "build draft": "ok", "slots draft": "ok",
        "vocabulary draft vs target": "ok", "rpc listens rpc": "ok", "rpc exposure rpc": "ok",
    }
    assert findings["rpc exposure rpc"]["expected"] == "refused on 127.0.0.2"
    assert junit.get("tests") == "11" and junit.get("failures") == "0" and junit.get("errors") == "0"


def test_a_server_that_answers_without_the_key_is_a_finding(fleet, llama_build, smollm2, log_dir, tmp_path, capsys):
    """A llama-server started without --api-key-file answers anyone on the network: the proxy's auth
    can be bypassed through its port. The keyed target still refuses a completion without the key."""
    open_server = servers.start_llama_server(llama_build, smollm2, log_dir=log_dir, name="no-key",
                                             args=["-c", "512", "-np", "1"])
    try:
        inventory = write_inventory(tmp_path, {**services(fleet), "draft": {
            "role": "drafter", "host": "box", "model": "smollm2", "port": open_server.port, "parallel": 1}})
        code, findings, _ = doctor(tmp_path, capsys, inventory, "--expect-build-info", version_build_info(llama_build))
    finally:
        open_server.stop()
    assert code == 2
    bypass = findings["api key draft"]
    assert (bypass["severity"], bypass["expected"], bypass["actual"]) == (
        "fail", "401 to a completion without the key", "HTTP 200")
    assert "bypasses the proxy's auth" in bypass["hint"] and "--api-key-file" in bypass["hint"]
    assert (findings["api key target"]["severity"], findings["api key target"]["actual"]) == ("ok", "401")


def test_without_the_key_here_doctor_says_where_it_looked(fleet, llama_build, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("LLAMAFLEET_STATE", str(tmp_path / "empty"))
    inventory = write_inventory(tmp_path, services(fleet))
    code, findings, _ = doctor(tmp_path, capsys, inventory, "--expect-build-info", version_build_info(llama_build))
    assert code == 2
    props = findings["props target"]
    assert (props["severity"], props["actual"]) == ("fail", "HTTP 401")
    assert str(tmp_path / "empty" / "clusters" / "doctor-test" / "server.key") in props["hint"]
    assert findings["api key target"]["severity"] == "ok"  # the server itself is as it should be


def test_default_expectation_is_the_pinned_tag(fleet, llama_build, tmp_path, capsys):
    """Without --expect-build-info, doctor wants build_info to start with the pinned tag. A build
    stamped with its number (-DLLAMA_BUILD_NUMBER, as the rig and the deploy's source builds are)
    passes; one from a tree without git metadata reports b0-unknown, and the hint says why."""
    inventory = write_inventory(tmp_path, services(fleet))
    code, findings, _ = doctor(tmp_path, capsys, inventory)
    build = findings["build target"]
    assert build["expected"] == "b11434-* (pin b11434)"
    assert build["actual"] == version_build_info(llama_build)
    if build["actual"].startswith("b11434-"):
        assert (code, build["severity"]) == (0, "ok")
    else:
        assert (code, build["severity"]) == (2, "fail")
        assert "-DLLAMA_BUILD_NUMBER=11434" in build["hint"]


def test_doctor_catches_a_server_from_another_build(fleet, llama_build, other_build, tmp_path, capsys):
    inventory = write_inventory(tmp_path, services(fleet, drafter="other-build"))
    expected, other = version_build_info(llama_build), version_build_info(other_build)
    assert other != expected
    code, findings, junit = doctor(tmp_path, capsys, inventory, "--expect-build-info", expected)
    assert code == 2
    assert findings["build target"]["severity"] == "ok"
    build = findings["build draft"]
    assert build["severity"] == "fail" and build["actual"] == other
    assert build["expected"] == f"{expected} (--expect-build-info)"
    same = findings["same build draft"]
    assert same["actual"] == other and same["expected"].startswith(expected)
    failed = [c.get("name") for c in junit.iter("testcase") if c.find("failure") is not None]
    assert failed == ["build draft", "same build draft"]


def test_doctor_catches_a_draft_with_a_different_tokenizer(fleet, llama_build, tmp_path, capsys):
    inventory = write_inventory(tmp_path, services(fleet, drafter="odd-vocab"))
    code, findings, _ = doctor(tmp_path, capsys, inventory, "--expect-build-info", version_build_info(llama_build))
    assert code == 2
    vocab = findings["vocabulary draft vs target"]
    assert vocab["severity"] == "fail" and vocab["host"] == "box"
    # n_vocab is unchanged by the swap, so it is the /tokenize probes that catch it.
    assert "ids of 'The quick brown fox" in vocab["expected"]
    assert vocab["expected"] != vocab["actual"]
    assert "tokenizer" in vocab["hint"]


def test_doctor_catches_slots_and_rpc_exposure(fleet, llama_build, tmp_path, capsys):
    """Inventory says 3 slots and an rpc worker on 127.0.0.2; the target has 2 slots and the worker
    listens on 127.0.0.1."""
    inventory = write_inventory(tmp_path, services(fleet, target_parallel=3, rpc_bind="127.0.0.2"))
    code, findings, _ = doctor(tmp_path, capsys, inventory, "--expect-build-info", version_build_info(llama_build))
    assert code == 1  # the declared address does not answer at all: that is an error, above drift
    slots = findings["slots target"]
    assert (slots["severity"], slots["expected"], slots["actual"]) == ("fail", "3 (parallel)", "2")
    assert findings["rpc listens rpc"]["severity"] == "error"
    exposure = findings["rpc exposure rpc"]
    assert exposure["severity"] == "fail" and exposure["actual"] == "accepts on 127.0.0.1"
    assert "-H 127.0.0.2" in exposure["hint"]


def test_doctor_names_a_service_that_does_not_answer(fleet, tmp_path, capsys):
    svc = services(fleet)
    svc["target"]["port"] = servers.free_port()
    inventory = write_inventory(tmp_path, svc)
    code, findings, _ = doctor(tmp_path, capsys, inventory, "--expect-build-info", "b0-unknown")
    assert code == 1
    health = findings["health target"]
    assert health["severity"] == "error" and f"127.0.0.1:{svc['target']['port']}" in health["actual"]
    assert findings["vocabulary draft vs target"]["severity"] == "skipped"


def test_doctor_table_output_names_host_check_and_hint(fleet, llama_build, tmp_path, capsys):
    inventory = write_inventory(tmp_path, services(fleet, drafter="odd-vocab"))
    code = main(["doctor", str(inventory), "--expect-build-info", version_build_info(llama_build)])
    out = capsys.readouterr().out
    assert code == 2
    assert out.splitlines()[1].split()[:5] == ["box", "vocabulary", "draft", "vs", "target"]
    assert "hint: the draft must use the target's tokenizer" in out
    assert out.rstrip().endswith("1 fail)")


def proxy_services(fleet, port: int) -> dict:
    svc = services(fleet)
    svc["proxy"] = {"role": "proxy", "host": "box", "port": port, "target": "target", "drafters": ["draft"],
                    "auth": {"token_env": "LF_DOCTOR_TOKEN"}}
    return svc


@pytest.fixture
def proxy_inventory(fleet, tmp_path):
    return write_inventory(tmp_path, proxy_services(fleet, servers.free_port()))


def _serve_proxy(inventory_path, token):
    from llamafleet.config import load_inventory
    from llamafleet.proxy.background import BackgroundProxy
    from llamafleet.proxy.config import ProxyConfig

    inventory = load_inventory(inventory_path)
    config = ProxyConfig.from_inventory(inventory, "proxy")
    # the deploy copies the cluster's key beside the proxy; here it is the fleet's file itself
    config = config.model_copy(update={"server_key_file": str(key_source(inventory))})
    if token is None:
        config = config.model_copy(update={"auth": None})
    return BackgroundProxy(config, token=token)


@pytest.mark.parametrize(
    "served_token, doctor_token, verdicts",
    [
        ("s3cret", "s3cret", {"proxy rejects anonymous proxy": "ok", "proxy auth proxy": "ok"}),
        ("s3cret", "wrong", {"proxy rejects anonymous proxy": "ok", "proxy auth proxy": "fail"}),
        (None, "s3cret", {"proxy rejects anonymous proxy": "fail", "proxy auth proxy": "ok"}),
    ],
    ids=["token-accepted", "wrong-token", "proxy-without-auth"],
)
def test_doctor_checks_the_proxy_auth(proxy_inventory, llama_build, tmp_path, capsys, monkeypatch,
                                      served_token, doctor_token, verdicts):
    monkeypatch.setenv("LF_DOCTOR_TOKEN", doctor_token)
    with _serve_proxy(proxy_inventory, served_token):
        code, findings, _ = doctor(tmp_path, capsys, proxy_inventory, "--expect-build-info",
                                   version_build_info(llama_build))
    assert {c: findings[c]["severity"] for c in verdicts} == verdicts
    assert findings["health proxy"]["severity"] == "ok"
    assert code == (0 if set(verdicts.values()) == {"ok"} else 2)


def test_doctor_without_the_proxy_token_says_so(proxy_inventory, llama_build, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("LF_DOCTOR_TOKEN", raising=False)
    with _serve_proxy(proxy_inventory, "s3cret"):
        code, findings, junit = doctor(tmp_path, capsys, proxy_inventory, "--expect-build-info",
                                       version_build_info(llama_build))
    skipped = findings["proxy auth proxy"]
    assert skipped["severity"] == "skipped" and "LF_DOCTOR_TOKEN" in skipped["hint"]
    assert code == 0  # a skip is not a failure, but the JUnit report shows it as skipped, not passed
    assert [c.get("name") for c in junit.iter("testcase") if c.find("skipped") is not None] == [
        "proxy auth proxy", "speculation speed proxy"]
    assert "LF_DOCTOR_TOKEN" in findings["speculation speed proxy"]["hint"]


def _measure(controller, direct_s: float | None, round_s: float | None) -> None:
    """Feed the running proxy's controller what live traffic would: 100 plain tokens taking
    ``direct_s`` seconds, and proxy rounds taking ``round_s`` each. The target has 2 slots, so a round
    drafts 1 token; every draft is accepted, so a round yields 2 tokens."""
    if direct_s is not None:
        controller.observe_segment("direct", True, 100, direct_s)
    for _ in range(6 if round_s is not None else 0):
        controller.observe_round(True, 1, round_s, 1, False)


@pytest.mark.parametrize(
    "direct_s, round_s, severity, actual",
    [
        (None, None, "skipped", "not measured yet"),
        (1.0, None, "skipped", "not measured yet"),
        # Every draft token accepted, and still half the plain speed (20 ms a token against 10 ms).
        (1.0, 0.04, "warning", "proxy 0.50x of plain (greedy) at 100% acceptance"),
        (1.0, 0.01, "ok", "proxy 2.00x of plain (greedy)"),
    ],
    ids=["no-traffic", "plain-only", "proxy-slower-at-full-acceptance", "proxy-faster"],
)
def test_doctor_warns_when_speculation_is_slower_than_plain(proxy_inventory, llama_build, tmp_path, capsys,
                                                            monkeypatch, direct_s, round_s, severity, actual):
    """doctor reads the ratio over HTTP from the real proxy's /stats; what the proxy measured is
    given to its controller directly here (the measuring is tested in tests/proxy/test_proxy_signals.py)."""
    monkeypatch.setenv("LF_DOCTOR_TOKEN", "s3cret")
    with _serve_proxy(proxy_inventory, "s3cret") as proxy:
        _measure(proxy.state.engine.controller, direct_s, round_s)
        code, findings, junit = doctor(tmp_path, capsys, proxy_inventory, "--expect-build-info",
                                       version_build_info(llama_build))
    finding = findings["speculation speed proxy"]
    assert (finding["severity"], finding["actual"]) == (severity, actual)
    assert code == 0  # a warning is worth reading; it does not fail the run
    if severity == "warning":
        [case] = [c for c in junit.iter("testcase") if c.get("name") == "speculation speed proxy"]
        assert "0.50x of plain" in case.find("system-out").text


def test_doctor_warns_when_the_proxy_has_no_plain_path(proxy_inventory, llama_build, tmp_path, capsys, monkeypatch):
    """A proxy whose target also speculates natively on every request (the target *is* the native
    server and nothing turns drafting off): nothing plain to measure against, said as a warning."""
    from llamafleet.proxy.background import BackgroundProxy
    from llamafleet.proxy.config import NativeRef, ProxyConfig

    monkeypatch.setenv("LF_DOCTOR_TOKEN", "s3cret")
    inventory = load_inventory(proxy_inventory)
    config = ProxyConfig.from_inventory(inventory, "proxy")
    config = config.model_copy(update={"native": NativeRef(name="target", url=config.target.url),
                                       "server_key_file": str(key_source(inventory))})
    assert config.native_is_target
    with BackgroundProxy(config, token="s3cret"):
        code, findings, _ = doctor(tmp_path, capsys, proxy_inventory, "--expect-build-info",
                                   version_build_info(llama_build))
    finding = findings["speculation speed proxy"]
    assert (finding["severity"], finding["actual"]) == ("warning", "no plain path to compare with")
    assert "native_draft.plain" in finding["hint"] and code == 0


def test_doctor_speed_finding_agrees_with_the_proxys_stats_on_real_traffic(proxy_inventory, llama_build, tmp_path,
                                                                          capsys, monkeypatch):
    """Real requests on the plain and the proxy path (SmolLM2 drafting for itself): whichever way the
    measurement goes on this machine, doctor's verdict and ratio are the ones /stats serves."""
    import httpx

    monkeypatch.setenv("LF_DOCTOR_TOKEN", "s3cret")
    auth = {"Authorization": "Bearer s3cret"}
    with _serve_proxy(proxy_inventory, "s3cret") as proxy:
        for mode in ("direct", "proxy", "direct", "proxy"):
            r = httpx.post(proxy.url + "/v1/completions", json={"prompt": "Count: one, two,", "max_tokens": 24,
                           "temperature": 0}, headers={**auth, "X-Llamafleet-Mode": mode}, timeout=120)
            assert r.json()["llamafleet"]["path"] == mode
        code, findings, _ = doctor(tmp_path, capsys, proxy_inventory, "--expect-build-info",
                                   version_build_info(llama_build))
        stats = httpx.get(proxy.url + "/stats", headers=auth).json()["controller"]
    finding = findings["speculation speed proxy"]
    ratio = stats["speed_vs_plain"]["greedy"]["proxy"]
    assert finding["actual"].startswith(f"proxy {ratio:.2f}x of plain (greedy)")
    assert finding["severity"] == ("warning" if stats["slower_than_plain"] else "ok")
    assert (ratio < 1) == bool(stats["slower_than_plain"])


@pytest.fixture
def held_rpc_worker(fleet):
    """The rpc worker serving one client (as a target holds it), with its two-slot queue full too:
    ggml-rpc-server then accepts no new connection until the client lets go."""
    import socket

    held = [socket.create_connection(("127.0.0.1", fleet["rpc"].port)) for _ in range(3)]
    try:
        yield fleet["rpc"]
    finally:
        for s in held:
            s.close()


@pytest.mark.parametrize("declared_user, severity", [(True, "ok"), (False, "error")],
                         ids=["held-by-its-target", "held-by-nobody-declared"])
def test_a_busy_rpc_worker_is_fine_only_when_its_target_answers(fleet, held_rpc_worker, llama_build, tmp_path,
                                                                 capsys, declared_user, severity):
    svc = services(fleet)
    if declared_user:
        svc["target"]["rpc_workers"] = ["rpc"]
    inventory = write_inventory(tmp_path, svc)
    code, findings, _ = doctor(tmp_path, capsys, inventory, "--timeout", "1",
                               "--expect-build-info", version_build_info(llama_build))
    listens = findings["rpc listens rpc"]
    assert listens["severity"] == severity
    assert listens["actual"] == ("busy: held by target, which answers (one client at a time)" if declared_user
                                 else "no answer")
    assert findings["rpc exposure rpc"]["severity"] == "ok"  # 127.0.0.2 still refuses at once
    assert code == (0 if declared_user else 1)
