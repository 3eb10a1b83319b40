"""The alert outbox: queued before the notifier is woken, bounded once sent or refused.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from tradeguard.alerts import OutboxEntry
from tradeguard.store._database import Database

KEEP_SENT_ALERTS = 200


KEEP_FAILED_ALERTS = 200


class OutboxRows(Database):
    """The outbox and outbox_failed tables."""


    # Alert outbox ----------------------------------------------------------

    def enqueue_alert(self, kind: str, severity: str, text: str, now: float) -> int:
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO outbox (created_at, kind, severity, text) VALUES (?, ?, ?, ?)",
                (now, kind, severity, text),
            )
            return int(cur.lastrowid or 0)


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
