"""The cluster's file cache (``cache:``) in the inventory: each way to get it wrong is one finding with
its code, the dotted path and the line of the field; a right one adds no finding. Variants of the
committed seed cluster (linux akiva, windows desktop, macos mac-mini with the proxy on port 8000)."""

from __future__ import annotations

import pytest
from inventory_testlib import EXAMPLES, line_of

from llamafleet.config import check_inventory
from llamafleet.findings import Severity, dotted

SEED = (EXAMPLES / "seed-cluster.yaml").read_text()

# (id, cache block, code, dotted path, snippet whose line the finding names, words of the message)
BAD = [
    ("no such host", "cache:\n  host: akivaa\n", "LF160", "cache.host", "  host: akivaa", "no host named 'akivaa'"),
    ("windows host", "cache:\n  host: desktop\n", "LF210", "cache.host", "  host: desktop\n", "Windows host"),
    ("port of a service", "cache:\n  host: mac-mini\n  port: 8000\n", "LF130", "cache.port", "  port: 8000\n",
     "already used by 'proxy'"),
    ("foreign address", "cache:\n  host: akiva\n  bind: 10.9.9.9\n", "LF211", "cache.bind", "  bind: 10.9.9.9",
     "not an address of host 'akiva'"),
    ("default bind not declared", "cache:\n  host: akiva\n  bind: 192.168.86.36\n", "LF211", "cache.bind",
     "  bind: 192.168.86.36", "192.168.86.36"),
    ("loopback", "cache:\n  host: akiva\n  bind: 127.0.0.1\n", "LF212", "cache.bind", "  bind: 127.0.0.1",
     "desktop, m2-air, mac-mini cannot reach it"),
    ("wildcard", "cache:\n  host: akiva\n  bind: '::'\n", "LF014", "cache.bind", "  bind: '::'", "wildcard"),
    ("relative folder", "cache:\n  host: akiva\n  folder: cache\n", "LF013", "cache.folder", "  folder: cache",
     "not an absolute POSIX path"),
    ("deployer without an address", "cache:\n  host: deployer\n", "LF214", "cache.host", "  host: deployer",
     "needs the address it listens on"),
    ("deployer on loopback for a LAN", "cache:\n  host: deployer\n  bind: 127.0.0.1\n", "LF212", "cache.bind",
     "  bind: 127.0.0.1", "akiva, desktop, m2-air, mac-mini cannot reach it"),
    ("unknown key", "cache:\n  host: akiva\n  peer: true\n", "LF010", "cache.peer", "  peer: true", "'peer'"),
]


@pytest.mark.parametrize("block,code,path,snippet,words", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_a_bad_cache_is_one_finding_at_its_line(write, block, code, path, snippet, words):
    text = SEED + "\n" + block
    inventory, findings = check_inventory(write(text))
    assert inventory is None
    hits = [f for f in findings if dotted(f.path) == path]
    assert [f.code for f in hits] == [code], "\n".join(map(str, findings))
    assert hits[0].severity is Severity.error and hits[0].hint and words in hits[0].message, str(hits[0])
    start = len(SEED) + 1  # the block's own line of ``snippet`` (the seed has lines like it)
    assert hits[0].line == line_of(text[start:], snippet) + text[:start].count("\n"), str(hits[0])
    assert [f for f in findings if f.severity is Severity.error] == hits  # nothing else is reported


@pytest.mark.parametrize("block", [
    "cache:\n  host: akiva\n",  # ssh address, default port and folder
    "cache:\n  host: mac-mini\n  port: 8001\n  folder: /Users/Shared/llamafleet-cache\n",
    "cache:\n  host: m2-air\n  bind: 192.168.86.41\n",
    "cache:\n  host: deployer\n  bind: 192.168.86.10\n  peers: true\n",  # this machine's LAN address
])
def test_a_right_cache_adds_no_finding(write, block):
    inventory, findings = check_inventory(write(SEED + "\n" + block))
    assert inventory is not None and inventory.cache is not None, "\n".join(map(str, findings))
    assert not [f for f in findings if f.path[:1] == ("cache",)]


def test_with_peers_every_peer_must_have_the_port_free(write):
    """m2-air's drafter listens on 8081: with peers, m2-air would serve there too."""
    text = SEED + "\ncache:\n  host: akiva\n  port: 8081\n  peers: true\n"
    inventory, findings = check_inventory(write(text))
    assert inventory is None
    (clash,) = [f for f in findings if f.path == ("cache", "port")]
    assert clash.code == "LF130" and "host 'm2-air' is already used by 'm2-drafter'" in clash.message
    assert "every peer serves on cache.port" in clash.message
    # Without peers the port is akiva's alone, and free there.
    inventory, findings = check_inventory(write(SEED + "\ncache:\n  host: akiva\n  port: 8081\n"))
    assert inventory is not None, "\n".join(map(str, findings))


def test_a_host_named_deployer_is_refused_when_the_deployer_is_the_cache(write):
    text = SEED.replace("\n  mac-mini:\n", "\n  deployer:\n").replace("host: mac-mini", "host: deployer")
    text += "\ncache:\n  host: deployer\n  bind: 192.168.86.10\n"
    inventory, findings = check_inventory(write(text))
    assert inventory is None
    (clash,) = [f for f in findings if f.path[:1] == ("cache",)]
    assert clash.code == "LF213" and clash.line == text.count("\n") - 1, str(clash)


def test_the_deployer_on_loopback_is_fine_for_hosts_on_this_machine(write):
    """The loopback test rig: hosts at 127.0.0.2-4 reach the deploying machine at 127.0.0.1."""
    text = (EXAMPLES / "local.yaml").read_text() + "\ncache:\n  host: deployer\n  bind: 127.0.0.1\n"
    inventory, findings = check_inventory(write(text))
    assert inventory is not None, "\n".join(map(str, findings))
