"""Per-install secrets for the embedded default (`rlhb up` without configured secrets).

Why: a deployment started with no admin token must not leave /admin open, and impression ids
must not be signed with a key everyone can read in the source. So the first start generates
both (``secrets.token_urlsafe``), keeps them in the data folder (``RLHB_STATE_DIR``) readable by
the owner only (0600), and every later start on that folder reuses them: the admin token stays
the one the user was shown, and ids signed before a restart still verify after it. Configured
values (``RLHB_API_ADMIN_TOKEN``, ``RLHB_API_IMPRESSION_SECRET``) always win over these files.
"""

from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

ADMIN_TOKEN_FILE = "admin-token"
IMPRESSION_SECRET_FILE = "impression-secret"


def load_or_create_secret(path: Path) -> tuple[str, bool]:
    """(the secret in ``path``, whether this call created it). Created atomically with mode
    0600 (a temp file linked into place: two processes starting at once get the same secret);
    an existing file readable by others is narrowed to 0600."""
    path = Path(path)
    try:
        return _read(path), False
    except FileNotFoundError:
        pass
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # fails if another process got there first: use theirs
            created = True
        except FileExistsError:
            created = False
    finally:
        tmp.unlink(missing_ok=True)
    return _read(path), created


def _read(path: Path) -> str:
    if stat.S_IMODE(path.stat().st_mode) & 0o077:
        path.chmod(0o600)
    value = path.read_text().strip()
    if len(value) < 16:
        raise ValueError(f"{path} holds no usable secret (under 16 characters); delete it to get a new one")
    return value


def dev_admin_token(state_dir: Path) -> tuple[str, Path, bool]:
    """(token, its file, created now) for `rlhb up` without RLHB_API_ADMIN_TOKEN."""
    path = Path(state_dir) / ADMIN_TOKEN_FILE
    token, created = load_or_create_secret(path)
    return token, path, created


def dev_impression_secret(state_dir: Path) -> str:
    """The per-install key that signs impression ids when RLHB_API_IMPRESSION_SECRET is empty."""
    return load_or_create_secret(Path(state_dir) / IMPRESSION_SECRET_FILE)[0]


def fill_deployment_secrets(env: dict[str, str], state_dir: Path) -> list[str]:
    """For `rlhb up`: put the per-install admin token and impression secret into ``env`` (the
    children's environment) where the variables are unset or empty, so the API runs with both
    and needs no dev mode, and the aggregator checks ids with the same key. Returns the lines to
    print once at start (the token: like Jupyter's, the user needs it to call /admin)."""
    lines = []
    if not env.get("RLHB_API_ADMIN_TOKEN"):
        token, path, created = dev_admin_token(state_dir)
        env["RLHB_API_ADMIN_TOKEN"] = token
        how = "generated, kept in" if created else "from"
        lines.append(f"rlhb up: admin token ({how} {path}, mode 0600): {token}")
        lines.append("rlhb up: call /admin/* with the header 'Authorization: Bearer <that token>'")
    if not env.get("RLHB_API_IMPRESSION_SECRET"):
        env["RLHB_API_IMPRESSION_SECRET"] = dev_impression_secret(state_dir)
    return lines
