"""Owned text files (units, configs, the helper script): upload only what differs from the state."""

from __future__ import annotations

from llamafleet.deploys.operations.common import deploy_operation, file_matches, upload_posix, upload_windows


@deploy_operation
def text_files(files: dict, state_files: dict, windows: bool = False):
    """``files`` maps path -> [content, mode]; ``state_files`` is the HostState ``files`` section."""
    for path, (content, mode) in sorted(files.items()):
        if file_matches(state_files, path, content, None if windows else mode):
            continue
        yield from (upload_windows(path, content) if windows else upload_posix(path, content, mode))
