"""The API token when none is configured: generated once, kept in `<store dir>/api-token`.

Reused by every later start (finding C12): after a restart in the middle of an
incident, the operator's scripts and the status page's saved token still work.
The file is written 0600 under a temporary name opened with O_EXCL and renamed
into place, and read with O_NOFOLLOW, so a symlink planted in the state
directory neither receives the token nor supplies one (finding D8). A file
that others could read is not reused: its token may have leaked.
"""

from __future__ import annotations

import logging
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

FILE_NAME = "api-token"
MIN_LENGTH = 16  # as config.MIN_API_TOKEN: a shorter saved token is not one this wrote


@dataclass(frozen=True)
class ApiToken:
    value: str
    path: Path | None  # the file it came from or went to; None when configured


def api_token(configured: str, store_path: str | Path) -> ApiToken:
    """The configured token, else the saved one, else a new one saved beside the store."""
    if configured:
        return ApiToken(configured, None)
    path = Path(store_path).absolute().parent / FILE_NAME
    saved = read_saved(path)
    if saved is not None:
        logger.info("[API] token: reusing the one saved in %s", path)
        return ApiToken(saved, path)
    token = secrets.token_urlsafe(32)
    write_private(path, token + "\n")
    # The file, never the token: the log goes to the journal and to rotated files (D3).
    logger.warning("[API] token: generated one and saved it 0600 in %s; read it from there",
                   path)
    return ApiToken(token, path)


def read_saved(path: Path) -> str | None:
    """The token in `path`, or None if there is none this process should trust."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    except OSError as exc:  # ELOOP: a symlink
        logger.warning("[API] token: not reading %s (%s); generating a new one", path,
                       exc.strerror)
        return None
    with os.fdopen(fd, encoding="utf-8") as fh:
        info = os.fstat(fh.fileno())
        text = fh.read(4096).strip()
    if not stat.S_ISREG(info.st_mode) or info.st_mode & 0o077 or info.st_uid != os.getuid():
        logger.warning("[API] token: %s is not a private file of this user; generating a new "
                       "one", path)
        return None
    return text if len(text) >= MIN_LENGTH and text.isprintable() else None


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path` 0600, atomically, never through a symlink."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temporary, path)  # replaces a symlink itself, not what it points to
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
