"""``llamafleet demo``'s inventory: the local example, pinned to the mirror's real archives.

(The demo's deploy path itself is the one the end-to-end test drives over ssh; ``make demo`` runs it
against this machine.)"""

import pytest
import yaml

from llamafleet.rig.example import example_inventory
from llamafleet.config import load_inventory
from llamafleet.rig import mirror


@pytest.fixture(scope="module")
def content(tmp_path_factory, llama_build, smollm2):
    return mirror.prepare_mirror(llama_build, smollm2, tmp_path_factory.mktemp("mirror"))


def test_demo_inventory_is_the_local_example_with_real_hashes(tmp_path, content):
    data = example_inventory(content, "http://127.0.0.1:9999", str(tmp_path / "opt"), free_ports=True)
    path = tmp_path / "cluster.yaml"
    path.write_text(yaml.safe_dump(data))
    inventory = load_inventory(path)  # validates: the placeholders are gone
    assert inventory.llama_cpp.mirror == "http://127.0.0.1:9999"
    assert inventory.llama_cpp.releases[0].sha256 == content.release.sha256
    assert inventory.models["smollm2"].files[0].sha256 == content.model.sha256
    host = inventory.hosts["local"]
    assert (host.install_dir, host.models_dir) == (str(tmp_path / "opt"), str(tmp_path / "opt" / "models"))
    assert inventory.services["proxy"].auth.token_file == str(tmp_path / "opt" / "proxy.token")
    assert len({s.port for s in inventory.services.values()}) == len(inventory.services)


def test_release_style_archive_is_packed_like_upstream(tmp_path, content, llama_build, smollm2):
    import tarfile

    with tarfile.open(content.root / content.release.name) as tar:
        names = tar.getnames()
    assert content.release.name == "llama-b11434-bin-ubuntu-x64.tar.gz"
    assert "llama-b11434/llama-server" in names and "llama-b11434/ggml-rpc-server" in names
    again = mirror.prepare_mirror(llama_build, smollm2, tmp_path / "again")
    assert again.release.sha256 == content.release.sha256  # deterministic: stable pins across runs
