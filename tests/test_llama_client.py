"""The one synchronous llama-server client, against a real llama-server over real HTTP.

Answers a healthy llama-server does not give (a hung listener, a refused port, a server that has
exited) come from real sockets and a real process on loopback."""

import socket
import subprocess
import sys
import threading
import time

import pytest

from llamafleet.errors import UserError
from llamafleet.llama_client import LlamaClient, LlamaServerError
from llamafleet.rig import servers


def test_json_answers_and_error_statuses_of_a_real_server(smollm2_server):
    client = LlamaClient(60.0)
    assert "build_info" in client.json(f"{smollm2_server.url}/props")
    tokens = client.json(f"{smollm2_server.url}/tokenize", data={"content": "Hello world", "add_special": False})
    assert tokens["tokens"] and all(isinstance(t, int) for t in tokens["tokens"])
    missing = client.request(f"{smollm2_server.url}/no-such-endpoint")  # any answer is a Reply
    assert missing.status == 404
    with pytest.raises(LlamaServerError) as caught:
        client.json(f"{smollm2_server.url}/no-such-endpoint")
    err = caught.value
    assert isinstance(err, UserError) and err.status == 404
    assert str(err).startswith(f"GET {smollm2_server.url}/no-such-endpoint answered HTTP 404: ")
    assert err.reason.startswith("answered HTTP 404: ")
    bad = client.request(f"{smollm2_server.url}/completion", data={"n_predict": 1})  # no prompt: refused
    assert 400 <= bad.status < 500 and isinstance(bad.body, dict) and "error" in bad.body
    with pytest.raises(LlamaServerError, match=rf"^POST {smollm2_server.url}/completion answered HTTP {bad.status}: "):
        client.json(f"{smollm2_server.url}/completion", data={"n_predict": 1})


def test_nothing_answering_is_one_error_naming_the_request():
    port = servers.free_port()  # nothing listens there
    with pytest.raises(LlamaServerError) as caught:
        LlamaClient(2.0).request(f"http://127.0.0.1:{port}/health")
    assert caught.value.status is None
    assert str(caught.value).startswith(f"GET http://127.0.0.1:{port}/health failed: ")
    assert "refused" in caught.value.reason.lower() and "failed" not in caught.value.reason


def test_a_hung_listener_costs_the_timeout_not_more():
    with socket.socket() as listener:  # accepts connections (the kernel's backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/health"
        started = time.monotonic()
        with pytest.raises(LlamaServerError, match="timed out"):
            LlamaClient(0.5).json(url)
        assert time.monotonic() - started < 5


def test_wait_json_waits_for_a_server_that_starts_late(llama_build, smollm2, tmp_path):
    port = servers.free_port()
    result = {}

    def start_late():
        time.sleep(1.0)
        result["server"] = servers.start_llama_server(llama_build, smollm2, log_dir=tmp_path, port=port,
                                                      args=["-c", "512"])

    thread = threading.Thread(target=start_late)
    thread.start()
    try:
        body = LlamaClient(2.0).wait_json(f"http://127.0.0.1:{port}/health", within=120, poll=0.2,
                                          ready=lambda b: isinstance(b, dict) and b.get("status") == "ok")
        assert body["status"] == "ok"
    finally:
        thread.join()
        result["server"].stop()


def test_wait_json_gives_up_with_the_last_error_or_when_the_server_is_gone(tmp_path):
    port = servers.free_port()
    started = time.monotonic()
    with pytest.raises(LlamaServerError, match="failed: "):
        LlamaClient(1.0).wait_json(f"http://127.0.0.1:{port}/health", within=0.6, poll=0.1)
    assert time.monotonic() - started < 5
    exited = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    exited.wait()
    gone = servers.RunningProcess(name="gone", process=exited, port=port, log_path=tmp_path / "none.log")
    with pytest.raises(RuntimeError, match="gone exited with 3"):
        LlamaClient(1.0).wait_json(f"http://127.0.0.1:{port}/health", within=60, alive=gone.check_running)
