"""Shared fixtures: the real llama.cpp build and SmolLM2 from the cache (built on first use),
and real llama-server / ggml-rpc-server processes on free loopback ports."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llamafleet.rig import cache, servers


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI a skip is a failure: `make test` installs every prerequisite there, so a skipped
    test would only hide something missing. Locally a skip still says why and moves on."""
    outcome = yield
    report = outcome.get_result()
    if os.environ.get("CI") and report.skipped and not hasattr(report, "wasxfail"):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = "failed"
        report.longrepr = f"skipped under CI (CI is set), which counts as a failure: {reason}"


@pytest.fixture(scope="session", autouse=True)
def private_state(tmp_path_factory):
    """Deploys, doctor and bench keep the clusters' generated API keys in a folder of this test session
    ($LLAMAFLEET_STATE, which pyinfra runs inherit), never in the user's ~/.local/state."""
    from llamafleet.server_key import STATE_ENV

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(STATE_ENV, str(tmp_path_factory.mktemp("llamafleet-state")))
        yield


@pytest.fixture(scope="session")
def llama_build() -> cache.LlamaCpp:
    return cache.ensure_llama_cpp()


@pytest.fixture(scope="session")
def b8942_build() -> cache.LlamaCpp:
    """The rig's second real build, b8942: an older llama.cpp whose RPC worker is ``rpc-server`` and whose
    draft flags are ``--draft-max``/``--draft-min`` (built once by ``make setup``, then cached)."""
    return cache.ensure_build("b8942")


@pytest.fixture(scope="session")
def smollm2() -> Path:
    return cache.ensure_smollm2()


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("llama-logs")


@pytest.fixture(scope="session")
def smollm2_server(llama_build, smollm2, log_dir):
    """One llama-server on SmolLM2, shared by every test that only reads from it."""
    with servers.running(servers.start_llama_server(llama_build, smollm2, log_dir=log_dir, args=["-c", "2048"])) as s:
        yield s


# --- the proxy rig (llamafleet/rig/models.py): derived models and their servers ------------------

RIG_TARGET_SLOTS = 5  # proxy-path verification of a 4-token draft needs 5 slots
# -nr (no weight repacking): batched and one-token evaluation then give bit-identical logits, which
# exact verification of draft tokens relies on (docs/proxy.md, "Exactness and weight repacking").
RIG_TARGET_ARGS = ["-c", str(512 * RIG_TARGET_SLOTS), "-np", str(RIG_TARGET_SLOTS), "-nr"]


@pytest.fixture(scope="session")
def rig_agreeing_target() -> Path:
    """SmolLM2 padded with zero-output blocks: SmolLM2's greedy outputs, slower (the benchmarks use
    the 230-block ``models.ensure_slow_target()``; tests a 40-block one to stay short on 2 cores)."""
    from llamafleet.rig import models

    return models.ensure_agreeing_target()


@pytest.fixture(scope="session")
def rig_partial_target() -> Path:
    """SmolLM2 plus one perturbing block: SmolLM2 drafts for it with partial acceptance."""
    from llamafleet.rig import models

    return models.ensure_partial_target()


@pytest.fixture(scope="session")
def agreeing_target_server(llama_build, rig_agreeing_target, log_dir):
    with servers.running(servers.start_llama_server(llama_build, rig_agreeing_target, log_dir=log_dir,
                                                    args=RIG_TARGET_ARGS, name="agreeing-target")) as s:
        yield s


@pytest.fixture(scope="session")
def partial_target_server(llama_build, rig_partial_target, log_dir):
    with servers.running(servers.start_llama_server(llama_build, rig_partial_target, log_dir=log_dir,
                                                    args=RIG_TARGET_ARGS, name="partial-target")) as s:
        yield s


@pytest.fixture(scope="session")
def rpc_worker(llama_build, log_dir):
    """A ggml-rpc-server on loopback (the drafter machine's device, for native speculation)."""
    with servers.running(servers.start_rpc_server(llama_build, log_dir=log_dir)) as s:
        yield s
