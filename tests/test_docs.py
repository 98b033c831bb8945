"""The README matches the code: every setting is documented, every make target it names exists."""

from __future__ import annotations

import re

from avatar_server.settings import Settings
from conftest import REPO

README = (REPO / "README.md").read_text(encoding="utf-8")


def test_every_setting_is_in_the_configuration_table() -> None:
    missing = [name for name in Settings.model_fields if f"`AVATAR_{name.upper()}`" not in README]
    assert not missing, f"settings missing from README's configuration table: {missing}"


def test_every_make_target_named_in_the_readme_exists() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    targets = set(re.findall(r"^([a-z][a-z0-9-]*):", makefile, flags=re.M))
    named = set(re.findall(r"`make ([a-z][a-z0-9-]*)", README))
    assert named and named <= targets, f"README names unknown make targets: {named - targets}"
