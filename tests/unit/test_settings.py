"""Server settings: flag > SLSERVE_* environment > config file > default."""

from __future__ import annotations

from pathlib import Path

import pytest

from slserve.errors import SpecError
from slserve.settings import load_settings


def test_precedence_flag_env_file_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "slserve.toml"
    config.write_text('port = 9001\nhost = "127.0.0.2"\nmax_body_mb = 8\n')
    monkeypatch.setenv("SLSERVE_CONFIG", str(config))
    for key in ("SLSERVE_PORT", "SLSERVE_HOST", "SLSERVE_MAX_BODY_MB", "SLSERVE_DRAIN_SECONDS"):
        monkeypatch.delenv(key, raising=False)
    assert load_settings().port == 9001  # file over default
    assert load_settings().drain_seconds == 30.0  # default
    monkeypatch.setenv("SLSERVE_PORT", "9002")
    assert load_settings().port == 9002  # environment over file
    assert load_settings(port=9003).port == 9003  # flag over environment
    assert load_settings(port=None).port == 9002  # a flag not given does not count
    settings = load_settings()
    assert settings.host == "127.0.0.2" and settings.max_body_bytes == 8 * 1024 * 1024


def test_bad_settings_are_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "slserve.toml"
    config.write_text("prot = 1\n")
    monkeypatch.setenv("SLSERVE_CONFIG", str(config))
    with pytest.raises(SpecError, match="prot: Extra inputs are not permitted"):
        load_settings()
    monkeypatch.setenv("SLSERVE_CONFIG", str(tmp_path / "none.toml"))
    monkeypatch.setenv("SLSERVE_PORT", "99999")
    with pytest.raises(SpecError, match="port: Input should be less than or equal to 65535"):
        load_settings()
