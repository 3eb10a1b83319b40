"""What TradeGuard remembers between runs: good DNS answers, last prices, instruments.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable

from tradeguard.errors import StoreError
from tradeguard.prices import Tick
from tradeguard.store._database import Database


class MemoryRows(Database):
    """The dns_addresses, prices and instruments tables."""


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
