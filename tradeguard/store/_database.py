"""The one SQLite connection: opened WAL and `synchronous=FULL`, migrated, one lock.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tradeguard.errors import StoreError
from tradeguard.store._schema import (
    _MIGRATIONS,
    _OUTBOX_EXTRAS,
    _SCHEMA,
    SCHEMA_VERSION,
    _stored_version,
)


class Database:
    """The file, its lock and its transactions; the row classes build on it."""


    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
            os.chmod(self.path, 0o600)  # an older, looser file is tightened too
            self._db = sqlite3.connect(
                self.path, check_same_thread=False, isolation_level=None, timeout=10.0
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute("PRAGMA foreign_keys=ON")
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(f"cannot open store {self.path}: {exc}") from exc
        self._lock = threading.RLock()
        # id -> (opened_mono, levels_mono) of positions opened in this process:
        # never stored, since the monotonic clock means nothing to the next one.
        self._mono: dict[int, tuple[float | None, float | None]] = {}
        self._migrate()
        self._prepare_outbox()


    def close(self) -> None:
        with self._lock:
            self._db.close()


    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StoreError(f"store {self.path}: {exc}") from exc


    def _query(self, sql: str, args: Iterable[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self._db.execute(sql, tuple(args)).fetchall()
            except sqlite3.Error as exc:
                raise StoreError(f"store {self.path}: {exc}") from exc


    def _migrate(self) -> None:
        """Create the schema, or bring an older file's up to SCHEMA_VERSION, in one transaction."""
        with self._tx() as db:
            version = _stored_version(db)
            if version is not None and version > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema {version}, newer than this TradeGuard "
                    f"({SCHEMA_VERSION}); upgrade TradeGuard or use another store.path"
                )
            for step in range(version or SCHEMA_VERSION, SCHEMA_VERSION):
                _MIGRATIONS[step](db)
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('schema_version', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (str(SCHEMA_VERSION),),
            )


    def schema_version(self) -> int:
        return int(self._query("SELECT value FROM meta WHERE key='schema_version'")[0][0])


    def _prepare_outbox(self) -> None:
        with self._tx() as db:
            for statement in _OUTBOX_EXTRAS:
                db.execute(statement)
