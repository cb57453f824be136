"""docs/configuration.md lists every setting of ``Settings`` as an operator sets it, with its default."""

from __future__ import annotations

import re
from pathlib import Path

from pydantic.fields import FieldInfo

from app.config import Settings

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def env_name(field: str, info: FieldInfo) -> str:
    alias = info.validation_alias
    return alias if isinstance(alias, str) else f"GLIMPSE_{field.upper()}"


def documented_rows() -> dict[str, str]:
    """Variable → its default cell, from the page's settings table."""
    rows = {}
    for line in PAGE.read_text().splitlines():
        match = re.fullmatch(r"\| `([A-Z_]+)` \| ([^|]+) \|.*\|", line)
        if match:
            rows[match.group(1)] = match.group(2).strip()
    return rows


def shown_default(value: object) -> str | None:
    """How the table shows a plain default; None for defaults described in words (paths, lists, None)."""
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, int | float | str):
        return f"`{value}`"
    return None


def test_every_setting_is_documented_and_nothing_else() -> None:
    fields = {env_name(name, info): info for name, info in Settings.model_fields.items()}
    rows = documented_rows()
    missing = [
        f"| `{name}` | {shown_default(info.default) or '…'} | {info.description or '…'} |"
        for name, info in fields.items()
        if name not in rows
    ]
    assert not missing, "docs/configuration.md lacks these rows:\n" + "\n".join(missing)
    assert sorted(set(rows) - set(fields)) == [], "documented but not a setting"


def test_every_plain_default_is_the_real_one() -> None:
    rows = documented_rows()
    for name, info in Settings.model_fields.items():
        expected = shown_default(info.default)
        if expected is not None:
            assert rows[env_name(name, info)] == expected, name


# Variables of docker-compose.yml, not of the service.
COMPOSE_VARIABLES = {"GLIMPSE_PORT", "GLIMPSE_IMAGE", "GLIMPSE_MODEL_HOST_DIR"}


def test_the_readme_and_every_page_name_only_real_settings() -> None:
    known = {env_name(name, info) for name, info in Settings.model_fields.items()} | COMPOSE_VARIABLES
    root = PAGE.parents[1]
    for page in [root / "README.md", *sorted((root / "docs").rglob("*.md"))]:
        named = set(re.findall(r"\bGLIMPSE_[A-Z0-9_]*[A-Z0-9]\b", page.read_text()))
        assert named <= known, f"{page.relative_to(root)} names {sorted(named - known)}"
