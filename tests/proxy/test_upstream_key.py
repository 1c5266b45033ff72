"""The proxy in front of llama-servers that require an API key, as deployed ones do: real llama-server
processes started with ``--api-key-file``, the proxy given the same file (``server_key_file``). Every
path works through the proxy, the servers refuse a request without the key, and a proxy without the
key (or with a key file others can read) fails clearly."""

from __future__ import annotations

import httpx
import pytest
from proxy_testlib import TOKEN

from llamafleet.errors import UserError
from llamafleet.proxy.background import BackgroundProxy
from llamafleet.proxy.config import ProxyConfig
from llamafleet.rig import servers

pytestmark = pytest.mark.slow
KEY = "upstream-key-0123456789abcdef"


@pytest.fixture(scope="module")
def keyed(llama_build, smollm2, log_dir, tmp_path_factory):
    """A target (2 slots, so the proxy path can verify) and a drafter, both on SmolLM2, both keyed."""
    key_file = tmp_path_factory.mktemp("key") / "llama-server.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    args = ["-c", "1024", "--api-key-file", str(key_file)]
    target = servers.start_llama_server(llama_build, smollm2, log_dir=log_dir, name="keyed-target",
                                        args=[*args, "-np", "2"])
    try:
        drafter = servers.start_llama_server(llama_build, smollm2, log_dir=log_dir, name="keyed-drafter",
                                             args=[*args, "-np", "1"])
    except BaseException:
        target.stop()
        raise
    try:
        yield target, drafter, key_file
    finally:
        drafter.stop()
        target.stop()


def _config(target, drafter, key_file) -> ProxyConfig:
    return ProxyConfig.model_validate({
        "listen": {"host": "127.0.0.1", "port": 0}, "model_name": "smollm2",
        "target": {"name": "target", "url": target.url, "slots": 2},
        "drafters": [{"name": "drafter", "url": drafter.url}], "draft_max": 1,
        "auth": None, **({"server_key_file": str(key_file)} if key_file else {})})


def _complete(url: str, mode: str, token: str | None = TOKEN) -> httpx.Response:
    headers = {"X-Llamafleet-Mode": mode, **({"Authorization": f"Bearer {token}"} if token else {})}
    return httpx.post(url + "/v1/completions", headers=headers, timeout=120,
                      json={"prompt": "The capital of France is", "max_tokens": 8, "temperature": 0})


def test_the_servers_refuse_a_request_without_the_key(keyed):
    target, drafter, _ = keyed
    for server in (target, drafter):
        body = {"prompt": "a", "n_predict": 1}
        assert httpx.post(server.url + "/completion", json=body, timeout=60).status_code == 401
        wrong = {"Authorization": "Bearer not-the-key-0123456789"}
        assert httpx.post(server.url + "/completion", json=body, headers=wrong, timeout=60).status_code == 401
        right = {"Authorization": f"Bearer {KEY}"}
        assert httpx.post(server.url + "/completion", json=body, headers=right, timeout=60).status_code == 200
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200  # public in llama-server


def test_every_path_through_the_proxy_carries_the_key(keyed):
    """direct (the target alone) and proxy (drafter drafts, target verifies) give the target's text:
    every upstream call, drafting, verification, tokenising and detokenising, carried the key."""
    target, drafter, key_file = keyed
    plain = httpx.post(target.url + "/completion", headers={"Authorization": f"Bearer {KEY}"}, timeout=120,
                       json={"prompt": "The capital of France is", "n_predict": 8, "temperature": 0}).json()
    with BackgroundProxy(_config(target, drafter, key_file), token=TOKEN) as proxy:
        for mode in ("direct", "proxy"):
            reply = _complete(proxy.url, mode)
            assert reply.status_code == 200, reply.text
            body = reply.json()
            assert body["llamafleet"]["path"] == mode
            assert body["choices"][0]["text"] == plain["content"]
        assert _complete(proxy.url, "direct", token=None).status_code == 401  # the proxy's own auth still holds


def test_a_proxy_without_the_key_gets_the_servers_refusal(keyed):
    target, drafter, _ = keyed
    with BackgroundProxy(_config(target, drafter, None), token=TOKEN) as proxy:
        reply = _complete(proxy.url, "direct")
    assert reply.status_code >= 400
    assert "401" in reply.text or "API key" in reply.text or "Invalid" in reply.text, reply.text


@pytest.mark.parametrize("mode", [0o644, 0o640])
def test_a_key_file_others_can_read_stops_the_proxy(keyed, tmp_path, mode):
    target, drafter, _ = keyed
    loose = tmp_path / "llama-server.key"
    loose.write_text(KEY + "\n")
    loose.chmod(mode)
    with pytest.raises(UserError, match=f"server_key_file {loose}: mode {mode:04o} lets other users read"):
        BackgroundProxy(_config(target, drafter, loose), token=TOKEN)
