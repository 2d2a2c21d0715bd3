"""docs/configuration.md: its settings table is the one the declarations generate."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailman.config import SETTINGS, env_only
from mailman.config.__main__ import main as config_main
from mailman.config.docs import BEGIN, END, REGENERATE, table, with_table

PAGE = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_the_docs_table_is_the_one_the_declarations_make() -> None:
    """The page's settings table is exactly what mailman/config/settings.py generates."""
    page = PAGE.read_text(encoding="utf-8")
    assert with_table(page) == page, (
        f"{PAGE.name}'s settings table differs from the declarations; regenerate it: {REGENERATE}"
    )


def test_the_table_has_a_row_for_every_setting() -> None:
    """One row per visible setting; every env variable and every flag is in one."""
    rows = table().splitlines()[2:]
    visible = [s for s in SETTINGS.values() if not s.hidden]
    assert len(rows) == len(visible)
    for s, row in zip(visible, rows, strict=True):
        assert row.startswith(f"| `{s.path}` | ")
        if s.env is not None:
            assert f"`{s.env}`" in row
        if s.flag is not None:
            assert f"`{s.flag}`" in row
    assert set(env_only()) <= {s.env for s in visible}


def test_defaults_show_their_value_and_note() -> None:
    """A default shows as code, with its note; none as a dash."""
    rows = {row.split(" | ")[0][3:-1]: row.split(" | ") for row in table().splitlines()[2:]}
    assert rows["max_body_bytes"][3] == "`16777216` (16 MiB)"
    assert rows["retry.base_seconds"][3] == "`5`"
    assert rows["sendgrid.api_key"][3] == "\u2014"
    assert rows["mailgun_webhook_signing_key"][3] == "\u2014 (off)"


def test_regenerating_replaces_a_stale_table_and_keeps_the_rest() -> None:
    """``with_table`` swaps what stands between the markers, and nothing else."""
    stale = f"# Title\n\nprose\n\n{BEGIN}\n| old |\n{END}\n\nmore prose\n"
    fresh = with_table(stale)
    assert fresh == f"# Title\n\nprose\n\n{BEGIN}\n{table()}\n{END}\n\nmore prose\n"
    assert with_table(fresh) == fresh
    with pytest.raises(ValueError, match="markers"):
        with_table("# no table here\n")


def test_python_m_mailman_config_writes_the_table(tmp_path: Path) -> None:
    """``python -m mailman.config --markdown FILE`` rewrites FILE's table in place."""
    page = tmp_path / "configuration.md"
    page.write_text(f"intro\n{BEGIN}\nstale\n{END}\n", encoding="utf-8")
    assert config_main(["--markdown", str(page)]) == 0
    assert page.read_text(encoding="utf-8") == f"intro\n{BEGIN}\n{table()}\n{END}\n"
