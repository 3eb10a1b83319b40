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
import secrets
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from tradeguard.alerts import Alert, OutboxEntry
from tradeguard.errors import PositionError, StoreError
from tradeguard.positions import Position, Side, State
from tradeguard.prices import Tick

SCHEMA_VERSION = 4

# Version 2: state `released`; a `closed_at_broker` close has no exit price;
# the filled part of a close (partial fills); whether its failure was alerted.
# Version 3: the trailing stop and its best price; the product; the source.
# Version 4: the kept instrument master of a broker (Kite).
_POSITIONS = """
CREATE TABLE IF NOT EXISTS positions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    symbol TEXT NOT NULL,
    side TEXT NOT NULL CHECK (side IN ('long', 'short')),
    quantity REAL NOT NULL CHECK (quantity > 0),
    entry_price REAL NOT NULL CHECK (entry_price > 0),
    stop_loss REAL,
    take_profit REAL,
    state TEXT NOT NULL
        CHECK (state IN ('open', 'closing', 'closed', 'close_failed', 'released')),
    client_order_id TEXT UNIQUE,
    order_id TEXT,
    exit_price REAL,
    pnl REAL,
    reason TEXT,
    opened_at REAL NOT NULL,
    closed_at REAL,
    close_attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    filled_quantity REAL NOT NULL DEFAULT 0 CHECK (filled_quantity >= 0),
    filled_value REAL NOT NULL DEFAULT 0,
    failure_alerted INTEGER NOT NULL DEFAULT 0,
    trailing_stop_pct REAL CHECK (trailing_stop_pct > 0 AND trailing_stop_pct < 100),
    best REAL CHECK (trailing_stop_pct IS NULL OR (best IS NOT NULL AND best > 0)),
    product TEXT,
    source TEXT NOT NULL DEFAULT 'api' CHECK (source IN ('api', 'broker')),
    CHECK (state != 'closed' OR client_order_id IS NOT NULL),
    CHECK (state != 'closed' OR exit_price IS NOT NULL OR reason = 'closed_at_broker'),
    CHECK (state IN ('open', 'released') OR client_order_id IS NOT NULL)
)"""

# A broker's instrument master (Kite): the last good list, used when a fetch fails.
_INSTRUMENTS = """CREATE TABLE IF NOT EXISTS instruments (
    symbol TEXT PRIMARY KEY, token INTEGER NOT NULL, tick_size REAL NOT NULL,
    lot_size INTEGER NOT NULL, segment TEXT NOT NULL) WITHOUT ROWID"""

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    _POSITIONS,
    """CREATE UNIQUE INDEX IF NOT EXISTS one_live_position_per_symbol
        ON positions (symbol) WHERE state IN ('open', 'closing', 'close_failed')""",
    """CREATE TABLE IF NOT EXISTS dns_addresses (
        host TEXT PRIMARY KEY, addresses TEXT NOT NULL, updated_at REAL NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS prices (
        symbol TEXT PRIMARY KEY, price REAL NOT NULL, received_at REAL NOT NULL)""",
    _INSTRUMENTS,
    """CREATE TABLE IF NOT EXISTS outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at REAL NOT NULL,
        kind TEXT NOT NULL,
        severity TEXT NOT NULL,
        text TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        sent_at REAL)""",
)

_V1_COLUMNS = ("id, symbol, side, quantity, entry_price, stop_loss, take_profit, state,"
               " client_order_id, order_id, exit_price, pnl, reason, opened_at, closed_at,"
               " close_attempts, last_error")
_V2_COLUMNS = _V1_COLUMNS + ", filled_quantity, filled_value, failure_alerted"


def _v1_to_v2(db: sqlite3.Connection) -> None:
    """Rebuild `positions` (SQLite cannot change a CHECK in place), keeping every row.

    A v1 `close_failed` position has had its critical alert.
    """
    db.execute("ALTER TABLE positions RENAME TO positions_v1")
    db.execute(_POSITIONS)
    db.execute(f"INSERT INTO positions ({_V1_COLUMNS}, failure_alerted)"  # noqa: S608 - constants
               f" SELECT {_V1_COLUMNS}, state = 'close_failed' FROM positions_v1")
    db.execute("DROP TABLE positions_v1")  # and its one-live index, made anew below


def _v2_to_v3(db: sqlite3.Connection) -> None:
    """Rebuild `positions` with the trailing stop, product and source columns.

    A rebuild, not ADD COLUMN, so a migrated file has the same CHECKs as a new
    one. Positions from before have no trailing stop and no known product (so
    none is squared off as intraday), and came through the API.
    """
    db.execute("ALTER TABLE positions RENAME TO positions_v2")
    db.execute(_POSITIONS)
    db.execute(f"INSERT INTO positions ({_V2_COLUMNS})"  # noqa: S608 - constants
               f" SELECT {_V2_COLUMNS} FROM positions_v2")
    db.execute("DROP TABLE positions_v2")


def _v3_to_v4(db: sqlite3.Connection) -> None:
    """The instrument master's table: an older TradeGuard kept no list."""
    db.execute(_INSTRUMENTS)


_MIGRATIONS = {1: _v1_to_v2, 2: _v2_to_v3, 3: _v3_to_v4}  # from version N to N + 1


# ?1 best, ?2 stop, ?3 id, ?4 trailing_stop_pct (see Store.move_stops)
_MOVE_STOP = """UPDATE positions SET
    best = CASE WHEN side = 'long' THEN MAX(best, ?1) ELSE MIN(best, ?1) END,
    stop_loss = CASE WHEN stop_loss IS NULL OR (side = 'long' AND stop_loss < ?2)
        OR (side = 'short' AND stop_loss > ?2) THEN ?2 ELSE stop_loss END
    WHERE id = ?3 AND trailing_stop_pct = ?4"""


def new_client_order_id() -> str:
    """A fresh id for one close attempt: 20 letters and digits, as Kite and Upstox tags allow."""
    return "tg" + secrets.token_hex(9)


KEEP_SENT_ALERTS = 200
KEEP_FAILED_ALERTS = 200

# Added beside the v2 schema, not in it: older TradeGuards ignore them, so the
# schema version need not move. Partial indexes keep every outbox query at the
# size of its LIMIT (or of the backlog, for the count), not of the history (C3).
_OUTBOX_EXTRAS = (
    "CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (id) WHERE sent_at IS NULL",
    """CREATE INDEX IF NOT EXISTS outbox_pending_critical ON outbox (id)
        WHERE sent_at IS NULL AND severity = 'critical'""",
    "CREATE INDEX IF NOT EXISTS outbox_sent ON outbox (id) WHERE sent_at IS NOT NULL",
    """CREATE TABLE IF NOT EXISTS outbox_failed (
        id INTEGER PRIMARY KEY,
        created_at REAL NOT NULL,
        kind TEXT NOT NULL,
        severity TEXT NOT NULL,
        text TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        failed_at REAL NOT NULL,
        error TEXT NOT NULL)""",
)


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
        filled_quantity=float(row["filled_quantity"]),
        filled_value=float(row["filled_value"]),
        trailing_stop_pct=_float(row["trailing_stop_pct"]),
        best=_float(row["best"]),
        product=row["product"],
        source=row["source"],
    )


def _stored_version(db: sqlite3.Connection) -> int | None:
    """The schema version a file was written with; None for a new, empty file."""
    has_meta = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
    row = has_meta and db.execute(
        "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row["value"]) if row else None


def _enqueue(db: sqlite3.Connection, alert: Alert | None, now: float) -> None:
    """The alert of a transition, in the transition's own transaction (SPEC §4)."""
    if alert is not None:
        db.execute(
            "INSERT INTO outbox (created_at, kind, severity, text) VALUES (?, ?, ?, ?)",
            (now, alert.kind, alert.severity.value, alert.text),
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

    # Positions ----------------------------------------------------------

    def add_position(self, position: Position) -> Position:
        """Insert an open position; 409 if the symbol already has a live one."""
        opened = time.monotonic()  # before the insert: a tick from then on may decide
        try:
            with self._tx() as db:
                cur = db.execute(
                    "INSERT INTO positions (symbol, side, quantity, entry_price, stop_loss,"
                    " take_profit, state, opened_at, trailing_stop_pct, best, product, source)"
                    " VALUES (?, ?, ?, ?, ?, ?, 'open', ?, ?, ?, ?, ?)",
                    (position.symbol, position.side.value, position.quantity,
                     position.entry_price, position.stop_loss, position.take_profit,
                     position.opened_at, position.trailing_stop_pct, position.best,
                     position.product, position.source),
                )
                row = db.execute("SELECT * FROM positions WHERE id = ?", (cur.lastrowid,))
                self._mono[int(cur.lastrowid or 0)] = (opened, None)
                return self._stamped(_position(row.fetchone()))
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
        """Store new levels (stop-loss, take-profit, trailing stop) of an open position."""
        return self.change_levels(position.symbol, lambda _: position)

    def change_levels(self, symbol: str, change: Callable[[Position], Position]) -> Position:
        """Read a live position, `change` its levels and store them, in one transaction.

        A PATCH goes through here: a trailing-stop move the monitor stores in the
        meantime waits for it, so a PATCH never writes back a stop it read before
        that move. `change` may raise (a PositionError: nothing is written); 404 if
        nothing is live.
        """
        changed = time.monotonic()
        with self._tx() as db:
            row = db.execute("SELECT * FROM positions WHERE symbol = ?"
                             " AND state IN ('open', 'closing', 'close_failed')",
                             (symbol,)).fetchone()
            if row is not None:
                new = change(self._stamped(_position(row)))
                row = db.execute(
                    "UPDATE positions SET stop_loss = ?, take_profit = ?, trailing_stop_pct = ?,"
                    " best = ? WHERE id = ? AND state IN ('open', 'close_failed') RETURNING *",
                    (new.stop_loss, new.take_profit, new.trailing_stop_pct, new.best,
                     row["id"]),
                ).fetchone()
        if row is None:
            raise PositionError(f"{symbol}: no open position", 404)
        self._mono[row["id"]] = (self._mono.get(row["id"], (None, None))[0], changed)
        return self._stamped(_position(row))

    def move_stops(self, moved: Iterable[Position]) -> int:
        """Store trailing-stop moves, one row each, in one transaction; how many were stored.

        Each row is found by its primary key, so a batch costs one commit. A move
        applies only on the same trailing stop, and it only ever tightens the stop
        and betters `best`: a PATCH that landed since (a new trail, or a stop
        already nearer the market) is never undone. It applies whatever the state:
        the close its batch decided may have been claimed, even finished, before
        the move is written, and the record shows the stop that closed it.
        """
        rows = [(p.best, p.stop_loss, p.id, p.trailing_stop_pct) for p in moved]
        with self._tx() as db:
            return int(db.executemany(_MOVE_STOP, rows).rowcount)

    def _stamped(self, position: Position) -> Position:
        """The position with this process's monotonic open and level-change times."""
        mono = self._mono.get(position.id or 0)
        if mono is None:
            return position
        return replace(position, opened_mono=mono[0], levels_mono=mono[1])

    def live_position(self, symbol: str) -> Position | None:
        rows = self._query(
            "SELECT * FROM positions WHERE symbol = ?"
            " AND state IN ('open', 'closing', 'close_failed')", (symbol,))
        return self._stamped(_position(rows[0])) if rows else None

    def position(self, position_id: int) -> Position | None:
        rows = self._query("SELECT * FROM positions WHERE id = ?", (position_id,))
        return self._stamped(_position(rows[0])) if rows else None

    def live_positions(self) -> list[Position]:
        """Open, closing and close_failed positions, oldest first."""
        rows = self._query("SELECT * FROM positions"
                           " WHERE state IN ('open', 'closing', 'close_failed') ORDER BY id")
        return [self._stamped(_position(r)) for r in rows]

    def positions(self, limit: int = 200) -> list[Position]:
        """Live positions and the most recently closed (or released) ones."""
        rows = self._query(
            "SELECT * FROM positions WHERE state IN ('open', 'closing', 'close_failed')"
            " UNION ALL SELECT * FROM (SELECT * FROM positions"
            " WHERE state IN ('closed', 'released')"
            " ORDER BY closed_at DESC LIMIT ?)",
            (limit,),
        )
        return sorted((self._stamped(_position(r)) for r in rows), key=lambda p: p.id or 0)

    def claim_close(self, symbol: str, reason: str) -> Position:
        """Mark a position `closing` and give it its client order id, atomically.

        Exactly one caller wins; the others get PositionError 409 (a close is
        under way) or 404 (nothing live to close). The client order id is kept
        across retries, so the broker sees one order, until `end_attempt`
        replaces it.
        """
        with self._tx() as db:
            row = db.execute(
                "UPDATE positions SET state = 'closing', reason = ?,"
                " client_order_id = COALESCE(client_order_id, ?)"
                " WHERE symbol = ? AND state IN ('open', 'close_failed') RETURNING *",
                (reason, new_client_order_id(), symbol),
            ).fetchone()
            if row is not None:
                return self._stamped(_position(row))
            busy = db.execute(
                "SELECT 1 FROM positions WHERE symbol = ? AND state = 'closing'", (symbol,)
            ).fetchone()
        if busy:
            raise PositionError(f"{symbol}: a close is already under way", 409)
        raise PositionError(f"{symbol}: no open position", 404)

    def release_position(self, symbol: str, now: float) -> Position:
        """`open` or `close_failed` -> `released`: no longer guarded, nothing sent (SPEC §6).

        404 if nothing live, 409 while a close is under way.
        """
        with self._tx() as db:
            row = db.execute(
                "UPDATE positions SET state = 'released', closed_at = ?"
                " WHERE symbol = ? AND state IN ('open', 'close_failed') RETURNING *",
                (now, symbol),
            ).fetchone()
            busy = row is None and db.execute(
                "SELECT 1 FROM positions WHERE symbol = ? AND state = 'closing'", (symbol,)
            ).fetchone()
        if row is not None:
            return self._stamped(_position(row))
        if busy:
            raise PositionError(f"{symbol}: a close is under way", 409)
        raise PositionError(f"{symbol}: no open position", 404)

    def record_attempt(self, position_id: int, error: str | None) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE positions SET close_attempts = close_attempts + 1, last_error = ?"
                " WHERE id = ?",
                (error, position_id),
            )

    def end_attempt(
        self, position: Position, error: str, filled: float = 0.0, price: float = 0.0
    ) -> Position | None:
        """A refused or partly filled attempt is over: count its fill, give the rest a new id.

        Only while `position` is closing under the id that attempt used; None otherwise.
        """
        with self._tx() as db:
            row = db.execute(
                "UPDATE positions SET client_order_id = ?, close_attempts = close_attempts + 1,"
                " last_error = ?, filled_quantity = filled_quantity + ?,"
                " filled_value = filled_value + ? WHERE id = ? AND state = 'closing'"
                " AND client_order_id = ? RETURNING *",
                (new_client_order_id(), error, filled, filled * price, position.id,
                 position.client_order_id),
            ).fetchone()
        return self._stamped(_position(row)) if row is not None else None

    def follow_holding(self, position_id: int, quantity: float) -> Position | None:
        """The broker holds less than guarded: the position's quantity follows it (SPEC §12)."""
        with self._tx() as db:
            row = db.execute(
                "UPDATE positions SET quantity = ? WHERE id = ? AND state = 'closing'"
                " RETURNING *",
                (quantity, position_id),
            ).fetchone()
        return self._stamped(_position(row)) if row is not None else None

    def finish_close(
        self,
        position_id: int,
        order_id: str | None,
        exit_price: float | None,
        pnl: float | None,
        closed_at: float,
        *,
        alert: Alert | None = None,
        reason: str | None = None,
        filled_quantity: float | None = None,
        filled_value: float | None = None,
    ) -> Position | None:
        """`closing` -> `closed` with the broker's fill, and its alert; None if not closing.

        A `close_failed` position is closed too: a fill is the broker's truth, even
        when a failed round (a loser of a race) has been recorded since.
        """
        with self._tx() as db:
            row = db.execute(
                "UPDATE positions SET state = 'closed', order_id = ?, exit_price = ?, pnl = ?,"
                " closed_at = ?, last_error = NULL, reason = COALESCE(?, reason),"
                " filled_quantity = COALESCE(?, filled_quantity),"
                " filled_value = COALESCE(?, filled_value)"
                " WHERE id = ? AND state IN ('closing', 'close_failed') RETURNING *",
                (order_id, exit_price, pnl, closed_at, reason, filled_quantity, filled_value,
                 position_id),
            ).fetchone()
            if row is not None:
                _enqueue(db, alert, closed_at)
        return self._stamped(_position(row)) if row is not None else None

    def fail_close(
        self, position_id: int, error: str, *, alert: Alert | None = None,
        now: float | None = None,
    ) -> tuple[Position, bool] | None:
        """`closing` -> `close_failed`; the sweep will claim it again. None if not closing.

        `alert` is queued in the same transaction, the first time only: one
        critical alert per position, whatever the rounds and restarts. The
        flag says whether it was queued now.
        """
        with self._tx() as db:
            before = db.execute(
                "SELECT failure_alerted FROM positions WHERE id = ? AND state = 'closing'",
                (position_id,),
            ).fetchone()
            if before is None:
                return None
            row = db.execute(
                "UPDATE positions SET state = 'close_failed', last_error = ?,"
                " failure_alerted = 1 WHERE id = ? RETURNING *",
                (error, position_id),
            ).fetchone()
            first = not before["failure_alerted"]
            if first:
                _enqueue(db, alert, time.time() if now is None else now)
        return self._stamped(_position(row)), first and alert is not None

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

    def save_prices(self, ticks: Iterable[Tick], forget: Iterable[str] = ()) -> None:
        """Upsert wall-clock stamped ticks, and drop the `forget` symbols, in one transaction.

        The newest save wins whatever its stamps: only the cache writes here, and
        a wall clock stepped back must not freeze the snapshot (finding A4).
        """
        with self._tx() as db:
            db.executemany(
                "INSERT INTO prices (symbol, price, received_at) VALUES (?, ?, ?)"
                " ON CONFLICT (symbol) DO UPDATE SET price = excluded.price,"
                " received_at = excluded.received_at",
                [(t.symbol, t.price, t.received_at) for t in ticks],
            )
            db.executemany("DELETE FROM prices WHERE symbol = ?", [(s,) for s in forget])

    def load_prices(self) -> list[Tick]:
        rows = self._query("SELECT symbol, price, received_at FROM prices")
        return [Tick(r["symbol"], r["price"], r["received_at"]) for r in rows]

    # Instrument master (Kite) ---------------------------------------------

    def save_instruments(
        self, rows: Iterable[tuple[str, int, float, int, str]], fetched_at: float
    ) -> None:
        """Replace the kept instrument list whole, with when it was fetched, in one transaction."""
        with self._tx() as db:
            db.execute("DELETE FROM instruments")
            db.executemany("INSERT OR REPLACE INTO instruments VALUES (?, ?, ?, ?, ?)", rows)
            db.execute(
                "INSERT INTO meta (key, value) VALUES ('instruments_fetched_at', ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (repr(fetched_at),))

    def load_instruments(self) -> tuple[list[tuple[str, int, float, int, str]], float | None]:
        """The kept instrument list and when it was fetched (wall time); ([], None) if none."""
        with self._lock:
            try:
                rows = self._db.execute(
                    "SELECT symbol, token, tick_size, lot_size, segment FROM instruments"
                ).fetchall()
                when = self._db.execute(
                    "SELECT value FROM meta WHERE key = 'instruments_fetched_at'").fetchone()
            except sqlite3.Error as exc:
                raise StoreError(f"store {self.path}: {exc}") from exc
        fetched = float(when[0]) if when else None
        return [tuple(r) for r in rows], fetched

    # Alert outbox ----------------------------------------------------------

    def enqueue_alert(self, kind: str, severity: str, text: str, now: float) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO outbox (created_at, kind, severity, text) VALUES (?, ?, ?, ?)",
                (now, kind, severity, text),
            )
            return int(cur.lastrowid or 0)

    def _prepare_outbox(self) -> None:
        with self._tx() as db:
            for statement in _OUTBOX_EXTRAS:
                db.execute(statement)

    def pending_alerts(self, limit: int = 100) -> list[OutboxEntry]:
        """The oldest `limit` pending alerts, and the oldest `limit` pending criticals.

        A critical behind a long backlog of lesser alerts is still seen; both
        halves are bounded, so a flush costs the same however large the outbox.
        """
        rows = self._query(
            "SELECT * FROM outbox WHERE id IN"
            " (SELECT id FROM outbox WHERE sent_at IS NULL ORDER BY id LIMIT ?) OR id IN"
            " (SELECT id FROM outbox WHERE sent_at IS NULL AND severity = 'critical'"
            " ORDER BY id LIMIT ?) ORDER BY id",
            (limit, limit),
        )
        return [OutboxEntry(**dict(r)) for r in rows]

    def pending_count(self) -> int:
        """The backlog, counted on its own partial index (the history is not read)."""
        return int(self._query("SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL")[0][0])

    def still_pending(self, ids: Iterable[int]) -> bool:
        """True if none of these alerts has been delivered (or failed) since it was read."""
        wanted = sorted(set(ids))
        rows = self._query(
            "SELECT COUNT(*) FROM outbox WHERE sent_at IS NULL AND id IN"
            " (SELECT value FROM json_each(?))",
            (json.dumps(wanted),),
        )
        return int(rows[0][0]) == len(wanted)

    def mark_sent(self, ids: Iterable[int], now: float) -> None:
        """Alerts the transport accepted; old sent ones are pruned."""
        with self._tx() as db:
            db.executemany(
                "UPDATE outbox SET sent_at = ? WHERE id = ? AND sent_at IS NULL",
                [(now, i) for i in ids],
            )
            db.execute(  # all but the newest KEEP_SENT_ALERTS, read off the index's end
                "DELETE FROM outbox WHERE sent_at IS NOT NULL AND id < (SELECT id FROM outbox"
                " WHERE sent_at IS NOT NULL ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (KEEP_SENT_ALERTS - 1,),
            )

    def mark_failed(self, ids: Iterable[int], error: str, now: float) -> int:
        """Alerts Telegram refused for good: out of the queue, kept a while for inspection.

        Returns how many were still pending (a refusal reported twice counts once).
        """
        wanted = [(i,) for i in ids]
        with self._tx() as db:
            db.executemany(
                "INSERT INTO outbox_failed (id, created_at, kind, severity, text, attempts,"
                " failed_at, error) SELECT id, created_at, kind, severity, text, attempts + 1,"
                " ?, ? FROM outbox WHERE id = ? AND sent_at IS NULL",
                [(now, error, i) for (i,) in wanted],
            )
            moved = db.executemany(
                "DELETE FROM outbox WHERE id = ? AND sent_at IS NULL", wanted).rowcount
            db.execute(
                "DELETE FROM outbox_failed WHERE id < (SELECT id FROM outbox_failed"
                " ORDER BY id DESC LIMIT 1 OFFSET ?)",
                (KEEP_FAILED_ALERTS - 1,),
            )
        return int(moved)

    def failed_alerts(self, limit: int = 20) -> list[tuple[OutboxEntry, str]]:
        """The newest alerts Telegram refused, each with its refusal."""
        rows = self._query("SELECT * FROM outbox_failed ORDER BY id DESC LIMIT ?", (limit,))
        return [(OutboxEntry(r["id"], r["created_at"], r["kind"], r["severity"], r["text"],
                             r["attempts"]), r["error"]) for r in rows]

    def count_attempt(self, ids: Iterable[int]) -> None:
        with self._tx() as db:
            db.executemany(
                "UPDATE outbox SET attempts = attempts + 1 WHERE id = ?", [(i,) for i in ids]
            )

    def recent_alerts(self, limit: int = 20) -> list[OutboxEntry]:
        rows = self._query("SELECT * FROM outbox ORDER BY id DESC LIMIT ?", (limit,))
        return [OutboxEntry(**dict(r)) for r in rows]
