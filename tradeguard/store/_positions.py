"""Positions and their close transitions: each one conditional UPDATE.

Of any number of racing callers, one sees its row change and the others
see nothing to do: that is what makes a close happen exactly once. A
transition's alert is written in the transition's own transaction.
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

from tradeguard.alerts import Alert
from tradeguard.errors import PositionError, StoreError
from tradeguard.positions import Position, Side, State
from tradeguard.store._database import Database

# ?1 best, ?2 stop, ?3 id, ?4 trailing_stop_pct (see Store.move_stops)
_MOVE_STOP = """UPDATE positions SET
    best = CASE WHEN side = 'long' THEN MAX(best, ?1) ELSE MIN(best, ?1) END,
    stop_loss = CASE WHEN stop_loss IS NULL OR (side = 'long' AND stop_loss < ?2)
        OR (side = 'short' AND stop_loss > ?2) THEN ?2 ELSE stop_loss END
    WHERE id = ?3 AND trailing_stop_pct = ?4"""


def new_client_order_id() -> str:
    """A fresh id for one close attempt: 20 letters and digits, as Kite and Upstox tags allow."""
    return "tg" + secrets.token_hex(9)


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


def _enqueue(db: sqlite3.Connection, alert: Alert | None, now: float) -> None:
    """The alert of a transition, in the transition's own transaction (SPEC §4)."""
    if alert is not None:
        db.execute(
            "INSERT INTO outbox (created_at, kind, severity, text) VALUES (?, ?, ?, ?)",
            (now, alert.kind, alert.severity.value, alert.text),
        )


class PositionRows(Database):
    """The positions table."""


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
