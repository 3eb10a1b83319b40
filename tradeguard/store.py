"""The SQLite store: positions and their close transitions, DNS memory, prices, outbox.

One file, WAL mode, `synchronous=FULL`: a transition that returns has reached
the disk, so a close recorded as `closing` before the order goes out survives
a `kill -9` or a power cut. Every transition is a single conditional UPDATE,
which is what makes a close happen exactly once: of any number of racing
callers, one sees its row change and the others see nothing to do.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tradeguard.alerts import OutboxEntry
from tradeguard.errors import PositionError, StoreError
from tradeguard.positions import Position, Side, State
from tradeguard.prices import Tick

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS positions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    symbol TEXT NOT NULL,
    side TEXT NOT NULL CHECK (side IN ('long', 'short')),
    quantity REAL NOT NULL CHECK (quantity > 0),
    entry_price REAL NOT NULL CHECK (entry_price > 0),
    stop_loss REAL,
    take_profit REAL,
    state TEXT NOT NULL CHECK (state IN ('open', 'closing', 'closed', 'close_failed')),
    client_order_id TEXT UNIQUE,
    order_id TEXT,
    exit_price REAL,
    pnl REAL,
    reason TEXT,
    opened_at REAL NOT NULL,
    closed_at REAL,
    close_attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    CHECK (state != 'closed' OR (exit_price IS NOT NULL AND client_order_id IS NOT NULL)),
    CHECK (state = 'open' OR client_order_id IS NOT NULL)
);
CREATE UNIQUE INDEX IF NOT EXISTS one_live_position_per_symbol
    ON positions (symbol) WHERE state != 'closed';
CREATE TABLE IF NOT EXISTS dns_addresses (
    host TEXT PRIMARY KEY, addresses TEXT NOT NULL, updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS prices (
    symbol TEXT PRIMARY KEY, price REAL NOT NULL, received_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created_at REAL NOT NULL,
    kind TEXT NOT NULL,
    severity TEXT NOT NULL,
    text TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    sent_at REAL
);
"""

KEEP_SENT_ALERTS = 200



def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def _position(row: sqlite3.Row) -> Position:
    return Position(
        symbol=row["symbol"],
        side=Side(row["side"]),
        quantity=float(row["quantity"]),
        entry_price=float(row["entry_price"]),
        stop_loss=_float(row["stop_loss"]),
        take_profit=_float(row["take_profit"]),
        state=State(row["state"]),
        id=row["id"],
        client_order_id=row["client_order_id"],
        order_id=row["order_id"],
        exit_price=_float(row["exit_price"]),
        pnl=_float(row["pnl"]),
        reason=row["reason"],
        opened_at=row["opened_at"],
        closed_at=row["closed_at"],
        close_attempts=row["close_attempts"],
        last_error=row["last_error"],
    )


class Store:
    """Thread-safe access to the one SQLite file; every method is one transaction."""

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
        self._migrate()

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
        with self._lock:
            try:
                self._db.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
            except sqlite3.Error as exc:
                raise StoreError(f"cannot create schema in {self.path}: {exc}") from exc
        with self._tx() as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            if row is None:
                db.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            elif int(row["value"]) > SCHEMA_VERSION:
                raise StoreError(
                    f"{self.path} has schema {row['value']}, newer than this TradeGuard "
                    f"({SCHEMA_VERSION}); upgrade TradeGuard or use another store.path"
                )

    def schema_version(self) -> int:
        return int(self._query("SELECT value FROM meta WHERE key='schema_version'")[0][0])

    # Positions ----------------------------------------------------------

    def add_position(self, position: Position) -> Position:
        """Insert an open position; 409 if the symbol already has a live one."""
        try:
            with self._tx() as db:
                cur = db.execute(
                    "INSERT INTO positions (symbol, side, quantity, entry_price, stop_loss,"
                    " take_profit, state, opened_at) VALUES (?, ?, ?, ?, ?, ?, 'open', ?)",
                    (position.symbol, position.side.value, position.quantity,
                     position.entry_price, position.stop_loss, position.take_profit,
                     position.opened_at),
                )
                row = db.execute("SELECT * FROM positions WHERE id = ?", (cur.lastrowid,))
                return _position(row.fetchone())
        except StoreError as exc:
            # Only the one-live-position index means "already open"; a failed
            # CHECK or NOT NULL is a caller's bug and must not look like a 409.
            cause = exc.__cause__
            if (
                isinstance(cause, sqlite3.IntegrityError)
                and cause.sqlite_errorname == "SQLITE_CONSTRAINT_UNIQUE"
            ):
                raise PositionError(
                    f"{position.symbol}: a position is already open", 409
                ) from exc
            raise

    def update_levels(self, position: Position) -> Position:
        """Store new stop-loss / take-profit levels of an open position."""
        with self._tx() as db:
            row = db.execute(
                "UPDATE positions SET stop_loss = ?, take_profit = ? WHERE symbol = ?"
                " AND state IN ('open', 'close_failed') RETURNING *",
                (position.stop_loss, position.take_profit, position.symbol),
            ).fetchone()
        if row is None:
            raise PositionError(f"{position.symbol}: no open position", 404)
        return _position(row)

    def live_position(self, symbol: str) -> Position | None:
        rows = self._query(
            "SELECT * FROM positions WHERE symbol = ? AND state != 'closed'", (symbol,)
        )
        return _position(rows[0]) if rows else None

    def position(self, position_id: int) -> Position | None:
        rows = self._query("SELECT * FROM positions WHERE id = ?", (position_id,))
        return _position(rows[0]) if rows else None

    def live_positions(self) -> list[Position]:
        """Open, closing and close_failed positions, oldest first."""
        rows = self._query("SELECT * FROM positions WHERE state != 'closed' ORDER BY id")
        return [_position(r) for r in rows]

    def positions(self, limit: int = 200) -> list[Position]:
        """Live positions and the most recently closed ones."""
        rows = self._query(
            "SELECT * FROM positions WHERE state != 'closed' UNION ALL"
            " SELECT * FROM (SELECT * FROM positions WHERE state = 'closed'"
            " ORDER BY closed_at DESC LIMIT ?)",
            (limit,),
        )
        return sorted((_position(r) for r in rows), key=lambda p: p.id or 0)

    def claim_close(self, symbol: str, reason: str) -> Position:
        """Mark a position `closing` and give it its client order id, atomically.

        Exactly one caller wins; the others get PositionError 409 (a close is
        under way) or 404 (nothing live to close). The client order id is made
        once per position and kept across retries, so the broker sees one order.
        """
        new_id = f"tg-{uuid.uuid4().hex[:20]}"
        with self._tx() as db:
            row = db.execute(
                "UPDATE positions SET state = 'closing', reason = ?,"
                " client_order_id = COALESCE(client_order_id, ?)"
                " WHERE symbol = ? AND state IN ('open', 'close_failed') RETURNING *",
                (reason, new_id, symbol),
            ).fetchone()
            if row is not None:
                return _position(row)
            busy = db.execute(
                "SELECT 1 FROM positions WHERE symbol = ? AND state = 'closing'", (symbol,)
            ).fetchone()
        if busy:
            raise PositionError(f"{symbol}: a close is already under way", 409)
        raise PositionError(f"{symbol}: no open position", 404)

    def record_attempt(self, position_id: int, error: str | None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE positions SET close_attempts = close_attempts + 1, last_error = ?"
                " WHERE id = ?",
                (error, position_id),
            )

    def finish_close(
        self, position_id: int, order_id: str, exit_price: float, pnl: float, closed_at: float
    ) -> Position | None:
        """`closing` -> `closed` with the broker's fill; None if it was not closing."""
        with self._tx() as db:
            row = db.execute(
                "UPDATE positions SET state = 'closed', order_id = ?, exit_price = ?, pnl = ?,"
                " closed_at = ?, last_error = NULL WHERE id = ? AND state = 'closing'"
                " RETURNING *",
                (order_id, exit_price, pnl, closed_at, position_id),
            ).fetchone()
        return _position(row) if row is not None else None

    def fail_close(self, position_id: int, error: str) -> Position | None:
        """`closing` -> `close_failed`; the sweep will claim it again."""
        with self._tx() as db:
            row = db.execute(
                "UPDATE positions SET state = 'close_failed', last_error = ?"
                " WHERE id = ? AND state = 'closing' RETURNING *",
                (error, position_id),
            ).fetchone()
        return _position(row) if row is not None else None

    # DNS memory (serve-stale) --------------------------------------------

    def save_addresses(self, host: str, addresses: list[str], now: float | None = None) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO dns_addresses (host, addresses, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (host) DO UPDATE SET addresses = excluded.addresses,"
                " updated_at = excluded.updated_at",
                (host.lower(), json.dumps(addresses), time.time() if now is None else now),
            )

    def load_addresses(self, host: str) -> list[str]:
        rows = self._query("SELECT addresses FROM dns_addresses WHERE host = ?", (host.lower(),))
        if not rows:
            return []
        value = json.loads(rows[0][0])
        return [str(a) for a in value] if isinstance(value, list) else []

    # Price snapshot --------------------------------------------------------

    def save_prices(self, ticks: Iterable[Tick]) -> None:
        with self._tx() as db:
            db.executemany(
                "INSERT INTO prices (symbol, price, received_at) VALUES (?, ?, ?)"
                " ON CONFLICT (symbol) DO UPDATE SET price = excluded.price,"
                " received_at = excluded.received_at WHERE excluded.received_at >= received_at",
                [(t.symbol, t.price, t.received_at) for t in ticks],
            )

    def load_prices(self) -> list[Tick]:
        rows = self._query("SELECT symbol, price, received_at FROM prices")
        return [Tick(r["symbol"], r["price"], r["received_at"]) for r in rows]

    # Alert outbox ----------------------------------------------------------

    def enqueue_alert(self, kind: str, severity: str, text: str, now: float) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO outbox (created_at, kind, severity, text) VALUES (?, ?, ?, ?)",
                (now, kind, severity, text),
            )
            return int(cur.lastrowid or 0)

    def pending_alerts(self, limit: int = 100) -> list[OutboxEntry]:
        # Every pending critical, however long the backlog of lesser alerts ahead of it.
        rows = self._query(
            "SELECT * FROM outbox WHERE sent_at IS NULL AND (severity = 'critical' OR id IN"
            " (SELECT id FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT ?)) ORDER BY id",
            (limit,),
        )
        return [OutboxEntry(**dict(r)) for r in rows]

    def pending_count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")[0][0])

    def mark_sent(self, ids: Iterable[int], now: float) -> None:
        """Alerts the transport accepted; old sent ones are pruned."""
        with self._tx() as db:
            db.executemany(
                "UPDATE outbox SET sent_at = ? WHERE id = ? AND sent_at IS NULL",
                [(now, i) for i in ids],
            )
            db.execute(
                "DELETE FROM outbox WHERE sent_at IS NOT NULL AND id NOT IN"
                " (SELECT id FROM outbox WHERE sent_at IS NOT NULL ORDER BY id DESC LIMIT ?)",
                (KEEP_SENT_ALERTS,),
            )

    def count_attempt(self, ids: Iterable[int]) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE outbox SET attempts = attempts + 1 WHERE id = ?", [(i,) for i in ids]
            )

    def recent_alerts(self, limit: int = 20) -> list[OutboxEntry]:
        rows = self._query("SELECT * FROM outbox ORDER BY id DESC LIMIT ?", (limit,))
        return [OutboxEntry(**dict(r)) for r in rows]
