"""The store's tables, their version, and the migration from each older version.

A file written by an older TradeGuard opens: `_MIGRATIONS[N]` takes it from
version N to N + 1 inside the transaction that opens the store.
"""

from __future__ import annotations

import sqlite3

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


def _stored_version(db: sqlite3.Connection) -> int | None:
    """The schema version a file was written with; None for a new, empty file."""
    has_meta = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'meta'").fetchone()
    row = has_meta and db.execute(
        "SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    return int(row["value"]) if row else None

