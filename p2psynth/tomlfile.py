"""Reading the project's TOML files with errors that name the file and the fix."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from p2psynth.errors import ConfigError, P2PSynthError


def read_toml(
    path: Path, *, what: str, missing_hint: str, error: type[P2PSynthError] = ConfigError
) -> dict[str, Any]:
    """Parse the TOML file at ``path``; raise ``error`` naming ``what`` the file is."""
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise error(f"{what} {path} not found; {missing_hint}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise error(f"cannot read {what} {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise error(f"{what} {path} is not valid TOML: {exc}") from exc
