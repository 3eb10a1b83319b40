"""The generated API token file (tradeguard/web/token.py): reused, private, never via symlinks."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from tradeguard.web.token import api_token


def test_c12_a_saved_token_is_reused(tmp_path: Path) -> None:
    """C12: the second start finds the first start's token."""
    first = api_token("", tmp_path / "tg.db")
    assert first.path == tmp_path / "api-token"
    assert api_token("", tmp_path / "tg.db") == first


def test_a_configured_token_writes_no_file(tmp_path: Path) -> None:
    assert api_token("configured-token-0123456789", tmp_path / "tg.db").path is None
    assert not (tmp_path / "api-token").exists()


def test_d3_the_log_names_the_file_never_the_token(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    token = api_token("", tmp_path / "tg.db")
    api_token("", tmp_path / "tg.db")
    assert token.value not in caplog.text
    assert str(tmp_path / "api-token") in caplog.text


def test_d8_a_planted_symlink_is_neither_read_nor_written_through(tmp_path: Path) -> None:
    """D8: whoever can write the state folder cannot redirect the token or supply one."""
    victim = tmp_path / "elsewhere.txt"
    victim.write_text("attacker-chosen-token-0123456789\n")
    (tmp_path / "api-token").symlink_to(victim)
    token = api_token("", tmp_path / "tg.db")
    assert token.value != "attacker-chosen-token-0123456789"
    assert victim.read_text() == "attacker-chosen-token-0123456789\n"  # not written through
    saved = tmp_path / "api-token"
    assert not saved.is_symlink()
    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert saved.read_text().strip() == token.value


def test_d8_a_file_others_could_read_is_not_reused(tmp_path: Path) -> None:
    first = api_token("", tmp_path / "tg.db")
    os.chmod(tmp_path / "api-token", 0o644)
    second = api_token("", tmp_path / "tg.db")
    assert second.value != first.value
    assert stat.S_IMODE((tmp_path / "api-token").stat().st_mode) == 0o600


def test_no_temporary_file_is_left_behind(tmp_path: Path) -> None:
    api_token("", tmp_path / "tg.db")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api-token"]
