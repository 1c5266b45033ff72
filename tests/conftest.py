"""Shared fixtures: the real llama.cpp build and SmolLM2 from the cache (built on first use),
and real llama-server / ggml-rpc-server processes on free loopback ports."""

from __future__ import annotations

from pathlib import Path

import pytest

from llamafleet.rig import cache, servers


@pytest.fixture(scope="session")
def llama_build() -> cache.LlamaCpp:
    return cache.ensure_llama_cpp()


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
