"""The README matches the code: every setting is documented, every make target it names exists."""

from __future__ import annotations

import re

from avatar_server.settings import FLAT_NAMES, TABLE_BEGIN, TABLE_END, settings_markdown
from conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_the_settings_table_is_generated_from_the_settings_model() -> None:
    doc = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    table = doc[doc.index(TABLE_BEGIN) + len(TABLE_BEGIN) : doc.index(TABLE_END)]
    assert table == settings_markdown() + "\n", "docs/configuration.md is stale: run `make settings-doc`"
    missing = [entry.env for entry in FLAT_NAMES.values() if f"`{entry.env}`" not in table]
    assert not missing


def test_every_make_target_named_in_the_readme_exists() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, flags=re.M))
    named = set(re.findall(r"`make ([a-z][a-z0-9-]*)", README))
    assert named and named <= targets, f"README names unknown make targets: {named - targets}"
