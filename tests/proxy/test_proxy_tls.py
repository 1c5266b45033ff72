"""The proxy over HTTPS, with real parts: a real llama-server (SmolLM2) behind the proxy, certificates
made with ``cryptography`` like the deploy's self-signed pair, and the real ``openai`` client, which
must trust the proxy's certificate (httpx ``verify=`` a default context with the certificate as its CA
file, so the address is checked against the certificate's subjectAltName too) and refuse it otherwise."""

from __future__ import annotations

import json
import ssl
import urllib.request
from pathlib import Path

import httpx
import openai
import pytest

from llamafleet import tls
from llamafleet.bench import conditions
from llamafleet.cli import main
from llamafleet.config import load_inventory
from llamafleet.doctor import Doctor, expectation
from llamafleet.rig.servers import free_port
from llamafleet.llama_client import LlamaClient, LlamaServerError
from llamafleet.proxy.background import BackgroundProxy
from llamafleet.proxy.config import ProxyConfig
from llamafleet.errors import UserError

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
TOKEN = "tls-test-token-0123456789"


def make_pair(folder, names=("127.0.0.1",)) -> tls.LocalPair:
    pair = tls.LocalPair(folder / "cert.pem", folder / "key.pem")
    tls.generate_self_signed(pair, list(names), "llamafleet test")
    return pair


def config(target_url: str, pair: tls.LocalPair | None, **extra) -> ProxyConfig:
    return ProxyConfig.model_validate({
        "listen": {"host": "127.0.0.1", "port": 0}, "model_name": "smollm2",
        "target": {"name": "target", "url": target_url},
        **({"tls": {"cert_file": str(pair.cert), "key_file": str(pair.key)}} if pair else {}), **extra})


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    base = tmp_path_factory.mktemp("tls")
    return {name: make_pair(base / name) for name in ("served", "other")}


@pytest.fixture(scope="module")
def tls_proxy(smollm2_server, pairs):
    with BackgroundProxy(config(smollm2_server.url, pairs["served"]), token=TOKEN) as proxy:
        yield proxy


def trusting(cert) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert))


def client(proxy, **http) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{proxy.url}/v1", api_key=TOKEN, max_retries=0, timeout=120,
                         http_client=httpx.Client(**http))


def test_the_proxy_serves_https_with_the_configured_certificate(tls_proxy, pairs):
    assert tls_proxy.url.startswith("https://127.0.0.1:")
    served = tls.served_certificate("127.0.0.1", tls_proxy.port, 10)
    assert tls.fingerprint(served) == tls.file_fingerprint(pairs["served"].cert)
    assert tls.fingerprint(served) != tls.file_fingerprint(pairs["other"].cert)


def test_openai_client_trusting_the_certificate_completes(tls_proxy, pairs, smollm2_server):
    reply = client(tls_proxy, verify=trusting(pairs["served"].cert)).completions.create(
        model="smollm2", prompt="The capital of France is", max_tokens=8, temperature=0)
    direct = LlamaClient(120).json(f"{smollm2_server.url}/v1/completions", data={
        "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0})
    assert reply.choices[0].text == direct["choices"][0]["text"]
    chat = client(tls_proxy, verify=trusting(pairs["served"].cert)).chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": "Say hi"}], max_tokens=4, temperature=0)
    assert chat.choices[0].message.content is not None


@pytest.mark.parametrize("verify", ["system CAs", "another certificate"])
def test_openai_client_refuses_the_proxy_without_its_certificate(tls_proxy, pairs, verify):
    http = {} if verify == "system CAs" else {"verify": trusting(pairs["other"].cert)}
    with pytest.raises(openai.APIConnectionError) as caught:
        client(tls_proxy, **http).completions.create(model="smollm2", prompt="x", max_tokens=1)
    chain, err = [], caught.value
    while err is not None:
        chain.append(err)
        err = err.__cause__ or err.__context__
    assert any(isinstance(e, ssl.SSLCertVerificationError) for e in chain), chain


def test_plain_http_to_the_tls_port_gets_no_answer(tls_proxy):
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{tls_proxy.port}/health", timeout=10).read()


def test_llama_client_pinned_to_the_certificate(tls_proxy, pairs):
    pinned = LlamaClient(30, token=TOKEN, context=tls.pinned_context(pairs["served"].cert))
    assert pinned.json(f"{tls_proxy.url}/v1/models")["data"][0]["id"] == "smollm2"
    wrong = LlamaClient(30, token=TOKEN, context=tls.pinned_context(pairs["other"].cert))
    with pytest.raises(LlamaServerError, match="CERTIFICATE_VERIFY_FAILED"):
        wrong.json(f"{tls_proxy.url}/v1/models")


def test_bench_condition_trusts_only_the_proxy_certificate(tls_proxy, pairs):
    """bench's requests to a TLS proxy (and the demo's comparison, which runs bench) pin its certificate."""
    good = conditions.llamafleet_path("direct", tls_proxy.url, TOKEN, str(pairs["served"].cert))
    outcome = good.complete("The capital of France is", 4)
    assert outcome.text and outcome.spec["path"] == "direct"
    wrong = conditions.llamafleet_path("direct", tls_proxy.url, TOKEN, str(pairs["other"].cert))
    with pytest.raises(LlamaServerError, match="CERTIFICATE_VERIFY_FAILED"):
        wrong.complete("The capital of France is", 4)


def tls_inventory(tmp_path, port: int, pair: tls.LocalPair):
    """The example inventory with its proxy on ``port`` of this machine, serving ``pair``."""
    text = (REPO / "inventory" / "examples" / "local.yaml").read_text()
    auth = "    auth: {token_file: /opt/llamafleet/proxy.token}\n"
    text = text.replace("    port: 8080\n", f"    port: {port}\n").replace(
        auth, auth + f"    tls: {{cert_file: {pair.cert}, key_file: {pair.key}}}\n")
    path = tmp_path / "cluster.yaml"
    path.write_text(text)
    return load_inventory(path)


def test_doctor_compares_the_served_certificate(tls_proxy, smollm2_server, pairs, tmp_path):
    """doctor's TLS check against a proxy serving the expected pair, one serving another pair, one serving
    plain HTTP where TLS is configured, and a port where nothing listens."""
    def check(port: int, pair: tls.LocalPair):
        inventory = tls_inventory(tmp_path, port, pair)
        doctor = Doctor(inventory, http=LlamaClient(10), expect=expectation(inventory, None), proxy_token=TOKEN)
        return doctor.check_tls("proxy", inventory.services["proxy"])

    ok = check(tls_proxy.port, pairs["served"])
    assert ok.severity.value == "ok" and tls.file_fingerprint(pairs["served"].cert) in ok.actual
    other = check(tls_proxy.port, pairs["other"])
    assert other.severity.value == "fail"
    assert tls.file_fingerprint(pairs["other"].cert) in other.expected
    assert tls.file_fingerprint(pairs["served"].cert) in other.actual
    with BackgroundProxy(config(smollm2_server.url, None), token=TOKEN) as plain:
        finding = check(plain.port, pairs["served"])
    assert finding.severity.value == "fail" and finding.actual == "plain HTTP", finding
    nothing = check(free_port(), pairs["served"])
    assert nothing.severity.value == "error" and "no answer" in nothing.actual


def test_served_certificate_says_plain_http(smollm2_server):
    port = int(smollm2_server.url.rsplit(":", 1)[1])
    with pytest.raises(tls.PlainHttp):
        tls.served_certificate("127.0.0.1", port, 10)


def test_bad_pairs_are_one_clear_error(tmp_path, pairs):
    swapped = tls.LocalPair(pairs["served"].cert, pairs["other"].key)
    with pytest.raises(UserError, match=r"^tls: certificate .* and key .* cannot be served"):
        config("http://127.0.0.1:9", swapped).tls.server_context()
    missing = tls.LocalPair(pairs["served"].cert, tmp_path / "nope.pem")
    with pytest.raises(UserError, match=r"^tls: key file .*nope.pem does not exist"):
        config("http://127.0.0.1:9", missing).tls.server_context()


def test_cli_check_reads_the_tls_files(tmp_path, pairs, capsys):
    good = tmp_path / "good.json"
    good.write_text(json.dumps(config("http://127.0.0.1:9", pairs["served"]).model_dump(mode="json", exclude_none=True)))
    assert main(["proxy", "--config", str(good), "--check"]) == 0
    bad = tmp_path / "bad.json"
    data = json.loads(good.read_text())
    data["tls"]["key_file"] = str(pairs["other"].key)
    bad.write_text(json.dumps(data))
    assert main(["proxy", "--config", str(bad), "--check"]) == 1
    err = capsys.readouterr().err
    assert "tls: certificate" in err and "Traceback" not in err
