"""The user's config folder: `$XDG_CONFIG_HOME/mm` (default `~/.config/mm`), read by every command wherever it
runs, unlike the recipes folder, which is relative to where a command runs."""

from __future__ import annotations

from pathlib import Path

from pipeline.base.constants import CONFIG_HOME_ENV, env_value


def config_dir() -> Path:
    """Where mm keeps what the user set up once for every folder (saved hardware classes); a relative
    XDG_CONFIG_HOME is ignored, as the XDG base directory specification says."""
    configured = env_value(CONFIG_HOME_ENV)
    base = Path(configured) if configured and Path(configured).is_absolute() else Path.home() / ".config"
    return base / "mm"
