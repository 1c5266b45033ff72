"""The shipped flag list is what the real b11434 binaries print, and the real llama-server agrees
with the verdicts the check gives (``--np`` rejected, ``-np`` accepted)."""

from __future__ import annotations

import json
import subprocess
import sys

from inventory_testlib import REPO

from llamafleet.config import builds as flags

SHIPPED = REPO / "llamafleet" / "config" / "builds" / "b11434.json"


def test_regenerating_from_the_real_build_reproduces_the_shipped_data(llama_build, tmp_path):
    result = subprocess.run([sys.executable, "-m", "llamafleet.config.builds", "--bin-dir", str(llama_build.bin_dir),
                             "--build", "b11434", "--source", str(llama_build.src), "--out-dir", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "b11434.json").read_text() == SHIPPED.read_text()


def test_shipped_table_knows_the_slot_flag_and_not_the_typo():
    table = flags.caps_for("b11434").server
    assert table.lookup("-np") == flags.Option(("-np", "--parallel"), 1)
    assert table.lookup("--np") is None
    assert table.lookup("--jinja").values == 0
    rpc = flags.caps_for("b11434").rpc
    assert {"-H", "--host", "-p", "--port", "-d", "--device", "-c", "--cache"} <= set(rpc.by_flag)
    assert flags.caps_for("b8111") is None


def test_real_llama_server_rejects_double_dash_np(llama_build):
    env = {"LD_LIBRARY_PATH": str(llama_build.bin_dir)}
    bad = subprocess.run([str(llama_build.server), "--np", "1", "--version"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert bad.returncode != 0 and "invalid argument: --np" in bad.stdout + bad.stderr
    good = subprocess.run([str(llama_build.server), "-np", "1", "--version"], capture_output=True, text=True,
                          env=env, timeout=60)
    assert good.returncode == 0, good.stdout + good.stderr


def test_help_parser_on_wrapped_and_multi_value_lines():
    text = ("----- common params -----\n\n"
            "-t,    --threads N                      number of CPU threads\n"
            "-ot,   --override-tensor <tensor name pattern>=<buffer type>,...\n"
            "                                        override tensor buffer type\n"
            "--mmap, --no-mmap                       whether to memory-map model\n"
            "--control-vector-layer-range START END\n"
            "                                        layer range\n"
            "  -c, --cache                      enable local file cache\n")
    assert flags.parse_help(text) == [
        flags.Option(("-t", "--threads"), 1), flags.Option(("-ot", "--override-tensor"), 1),
        flags.Option(("--mmap",), 0), flags.Option(("--no-mmap",), 0),
        flags.Option(("--control-vector-layer-range",), 2), flags.Option(("-c", "--cache"), 0)]


def test_shipped_file_records_its_origin():
    data = json.loads(SHIPPED.read_text())
    assert data["build"] == "b11434"
    assert data["generated_by"].startswith("python -m llamafleet.config.builds")
