"""drift's two PowerShell facts (unit text for diffs, sha256 for --deep) on Windows hosts.

No Windows here: these check the commands drift sends and how it reads PowerShell's output, using
outputs in the shape Get-Content and Get-FileHash print (representative, not captured).
"""

from __future__ import annotations

from llamafleet.drift import WindowsFileText, WindowsSha256File

PATH = "C:\\llamafleet\\services\\llamafleet-rpc\\llamafleet-rpc.xml"


def test_file_text_command_quotes_the_path_the_powershell_way():
    command = WindowsFileText().command(path="C:\\it's\\unit.xml")
    assert command == ("if (Test-Path -LiteralPath 'C:\\it''s\\unit.xml') { Get-Content -LiteralPath 'C:\\it''s\\unit.xml' }"
                       " else { 'llamafleet-missing-file' }")
    assert WindowsFileText.shell_executable is None  # run by PowerShell itself, not wrapped in sh -c


def test_file_text_reads_lines_or_missing():
    fact = WindowsFileText()
    assert fact.process(["<service>", "  <id>llamafleet-rpc</id>", "</service>"]) == [
        "<service>", "  <id>llamafleet-rpc</id>", "</service>"]
    assert fact.process(["llamafleet-missing-file"]) is None


def test_sha256_reads_get_filehash_output_or_missing():
    fact = WindowsSha256File()
    assert "Get-FileHash -Algorithm SHA256 -LiteralPath 'C:\\models\\m.gguf'" in fact.command(path="C:\\models\\m.gguf")
    digest = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert fact.process([digest + "\r"]) == digest
    assert fact.process(["llamafleet-missing-file"]) is None
