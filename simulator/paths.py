"""Where the shipped profiles live: inside the wheel when installed, at the repo root in a checkout."""

from __future__ import annotations

from pathlib import Path


def profiles_dir() -> Path:
    installed = Path(__file__).parent / "_profiles"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parent.parent / "profiles"
