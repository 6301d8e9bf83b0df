"""Ray token authentication for a client of a running cluster (Jobs API or --ray-address).

Kept out of every module that imports Ray: Ray reads RAY_AUTH_MODE when it is imported.
"""
from __future__ import annotations

import os
from pathlib import Path


def enable_token_auth() -> None:
    """Turn token mode on when a token is at hand (RAY_AUTH_TOKEN, or the head's ~/.ray/auth_token
    copied here); the token itself is never read into a message or a log."""
    token_file = Path(os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token"))
    if "RAY_AUTH_MODE" not in os.environ and (os.environ.get("RAY_AUTH_TOKEN") or token_file.is_file()):
        os.environ["RAY_AUTH_MODE"] = "token"
