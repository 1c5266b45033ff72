"""Real llama.cpp servers and a proxy in front of them, shared by the proxy tests of a session.

Two pairs: "agreeing" (a padded target, made like the 230-block slow target but with 10 zero-output
blocks so the suite stays short on 2 cores; SmolLM2 drafting: identical greedy outputs) and
"partial" (SmolLM2 plus one perturbing block, SmolLM2 drafting: rejections really happen). Each pair
also has a native-speculation target that runs the draft on its own ggml-rpc-server.
"""

from __future__ import annotations

import pytest
from proxy_testlib import DRAFT_MAX, TOKEN, Rig, proxy_config

from llamafleet.proxy.background import BackgroundProxy
from llamafleet.rig import models, servers

def _native_server(llama_build, model, draft, rpc, log_dir, name):
    args = ["-c", "1024", "-np", "2", "-nr", *models.native_target_args(draft, f"127.0.0.1:{rpc.port}", DRAFT_MAX)]
    return servers.start_llama_server(llama_build, model, log_dir=log_dir, args=args, name=name)


@pytest.fixture(scope="session")
def agreeing_native_server(llama_build, rig_agreeing_target, smollm2, rpc_worker, log_dir):
    with servers.running(_native_server(llama_build, rig_agreeing_target, smollm2, rpc_worker, log_dir,
                                        "agreeing-native")) as s:
        yield s


@pytest.fixture(scope="session")
def partial_native_server(llama_build, rig_partial_target, smollm2, log_dir):
    with servers.running(servers.start_rpc_server(llama_build, log_dir=log_dir)) as rpc:
        with servers.running(_native_server(llama_build, rig_partial_target, smollm2, rpc, log_dir, "partial-native")) as s:
            yield s


def _rig(name, target, native, drafter):
    with BackgroundProxy(proxy_config(target, [drafter], native), token=TOKEN) as proxy:
        yield Rig(name, target, native, drafter, proxy)


@pytest.fixture(scope="session")
def agreeing_rig(agreeing_target_server, agreeing_native_server, smollm2_server):
    yield from _rig("agreeing", agreeing_target_server, agreeing_native_server, smollm2_server)


@pytest.fixture(scope="session")
def partial_rig(partial_target_server, partial_native_server, smollm2_server):
    yield from _rig("partial", partial_target_server, partial_native_server, smollm2_server)


@pytest.fixture(scope="session", params=["agreeing", "partial"])
def rig(request) -> Rig:
    return request.getfixturevalue(f"{request.param}_rig")
