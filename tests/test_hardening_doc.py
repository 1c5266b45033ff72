"""docs/hardening.md's tables are the tests' tables: regenerated here, they must equal the committed page
(``python tests/hardening_doc.py`` rewrites them)."""

from __future__ import annotations

from hardening_doc import DOC, rendered


def test_hardening_page_matches_the_test_tables():
    committed = DOC.read_text()
    assert rendered(committed) == committed, "docs/hardening.md is stale: run python tests/hardening_doc.py"
    assert "ACCEPTED" not in committed and "no matching finding" not in committed
