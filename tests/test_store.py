"""The SQLite store, on a real file: permissions, schema, close transitions, memories."""

from __future__ import annotations

import sqlite3
import stat
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from tradeguard.alerts import Alert, Severity
from tradeguard.errors import PositionError, StoreError
from tradeguard.positions import Position, Side, State
from tradeguard.prices import Tick
from tradeguard.store import KEEP_SENT_ALERTS, SCHEMA_VERSION, Store


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "tradeguard.db"


@pytest.fixture
def store(db_path: Path) -> Iterator[Store]:
    opened = Store(db_path)
    yield opened
    opened.close()


def long_position(symbol: str = "BOSCHLTD", opened_at: float = 1000.0) -> Position:
    return Position(symbol, Side.LONG, 10, 575.0, stop_loss=560.0, take_profit=600.0,
                    opened_at=opened_at)


def raw_rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    """Read the file with a connection of its own, as another process would."""
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# The file --------------------------------------------------------------------


def test_the_file_and_its_wal_companions_are_private(store: Store, db_path: Path) -> None:
    store.add_position(long_position())  # a write, so the -wal and -shm files exist
    assert mode(db_path) == 0o600
    companions = [db_path.with_name(db_path.name + s) for s in ("-wal", "-shm")]
    assert any(p.exists() for p in companions)
    for path in companions:
        if path.exists():
            assert mode(path) == 0o600, path


def test_the_store_uses_wal_and_records_its_schema(store: Store, db_path: Path) -> None:
    assert raw_rows(db_path, "PRAGMA journal_mode") == [("wal",)]
    assert store.schema_version() == SCHEMA_VERSION
    assert raw_rows(db_path, "SELECT value FROM meta WHERE key = 'schema_version'") == [
        (str(SCHEMA_VERSION),)
    ]


def test_a_reopened_store_keeps_everything(db_path: Path) -> None:
    first = Store(db_path)
    added = first.add_position(long_position())
    first.save_addresses("feed.example.com", ["203.0.113.7"], now=1.0)
    first.close()
    second = Store(db_path)
    try:
        # The monotonic open time belongs to the process that opened it.
        assert second.live_position("BOSCHLTD") == replace(added, opened_mono=None)
        assert second.load_addresses("feed.example.com") == ["203.0.113.7"]
        assert second.schema_version() == SCHEMA_VERSION
    finally:
        second.close()


def test_a_store_from_a_newer_tradeguard_is_refused(db_path: Path) -> None:
    Store(db_path).close()
    db = sqlite3.connect(db_path)
    with db:
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'",
                   (str(SCHEMA_VERSION + 1),))
    db.close()
    with pytest.raises(StoreError, match="newer"):
        Store(db_path)


def test_a_path_that_cannot_be_a_store_is_a_store_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError):
        Store(tmp_path)  # a directory
    not_sqlite = tmp_path / "junk.db"
    not_sqlite.write_bytes(b"this is not an SQLite file at all" * 100)
    with pytest.raises(StoreError):
        Store(not_sqlite)


# Opening positions ----------------------------------------------------------------


def test_add_returns_the_stored_open_position(store: Store) -> None:
    added = store.add_position(long_position())
    assert added.id is not None
    assert added.state is State.OPEN
    assert added.client_order_id is None
    assert (added.symbol, added.side, added.quantity, added.entry_price) == (
        "BOSCHLTD", Side.LONG, 10.0, 575.0)
    assert (added.stop_loss, added.take_profit, added.opened_at) == (560.0, 600.0, 1000.0)
    assert store.position(added.id) == added
    assert store.live_positions() == [added]


def test_a_second_live_position_for_a_symbol_is_a_409(store: Store) -> None:
    store.add_position(long_position())
    with pytest.raises(PositionError) as info:
        store.add_position(long_position())
    assert info.value.code == 409
    assert len(store.live_positions()) == 1


def test_a_bad_row_is_a_store_error_not_a_409(store: Store) -> None:
    with pytest.raises(StoreError):
        store.add_position(long_position(opened_at=None))  # type: ignore[arg-type]


def test_a_closed_symbol_can_be_opened_again(store: Store) -> None:
    first = store.add_position(long_position())
    assert first.id is not None
    store.claim_close("BOSCHLTD", "take_profit")
    store.finish_close(first.id, "ord-1", 600.0, 250.0, closed_at=1100.0)
    second = store.add_position(long_position(opened_at=1200.0))
    assert second.id != first.id
    assert store.live_position("BOSCHLTD") == second


def test_update_levels_of_a_live_position(store: Store) -> None:
    added = store.add_position(long_position())
    moved = Position("BOSCHLTD", Side.LONG, 10, 575.0, stop_loss=570.0, take_profit=None)
    updated = store.update_levels(moved)
    assert (updated.id, updated.stop_loss, updated.take_profit) == (added.id, 570.0, None)
    with pytest.raises(PositionError) as info:
        store.update_levels(long_position("NOPE"))
    assert info.value.code == 404


# Closing ----------------------------------------------------------------------------


def test_claim_close_marks_closing_with_a_client_order_id(store: Store) -> None:
    added = store.add_position(long_position())
    claimed = store.claim_close("BOSCHLTD", "stop_loss")
    assert claimed.id == added.id
    assert claimed.state is State.CLOSING
    assert claimed.reason == "stop_loss"
    assert claimed.client_order_id
    assert store.live_position("BOSCHLTD") == claimed


def test_claim_close_with_nothing_live_is_a_404(store: Store) -> None:
    with pytest.raises(PositionError) as info:
        store.claim_close("BOSCHLTD", "emergency")
    assert info.value.code == 404
    added = store.add_position(long_position())
    assert added.id is not None
    store.claim_close("BOSCHLTD", "emergency")
    store.finish_close(added.id, "ord-1", 570.0, -50.0, 1100.0)
    with pytest.raises(PositionError) as info:
        store.claim_close("BOSCHLTD", "emergency")
    assert info.value.code == 404


def test_a_second_claim_is_a_409(store: Store) -> None:
    store.add_position(long_position())
    store.claim_close("BOSCHLTD", "stop_loss")
    with pytest.raises(PositionError) as info:
        store.claim_close("BOSCHLTD", "emergency")
    assert info.value.code == 409
    assert store.live_position("BOSCHLTD").reason == "stop_loss"  # type: ignore[union-attr]


def race_claims(stores: list[Store], symbol: str) -> tuple[list[Position], list[int]]:
    """Every store claims the same symbol at the same moment, each from its own thread."""
    barrier = threading.Barrier(len(stores))
    winners: list[Position] = []
    codes: list[int] = []
    lock = threading.Lock()

    def claim(store: Store) -> None:
        barrier.wait(timeout=10)
        try:
            won = store.claim_close(symbol, "stop_loss")
        except PositionError as exc:
            with lock:
                codes.append(exc.code)
        else:
            with lock:
                winners.append(won)

    threads = [threading.Thread(target=claim, args=(s,)) for s in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    return winners, codes


def test_twenty_threads_racing_one_close_make_one_winner(store: Store) -> None:
    store.add_position(long_position())
    winners, codes = race_claims([store] * 20, "BOSCHLTD")
    assert len(winners) == 1
    assert codes == [409] * 19


def test_twenty_connections_racing_one_close_make_one_winner(
    store: Store, db_path: Path
) -> None:
    """As above, but each racer has its own SQLite connection, like separate processes."""
    store.add_position(long_position())
    others = [Store(db_path) for _ in range(20)]
    try:
        winners, codes = race_claims(others, "BOSCHLTD")
    finally:
        for other in others:
            other.close()
    assert len(winners) == 1
    assert codes == [409] * 19
    live = store.live_position("BOSCHLTD")
    assert live is not None and replace(live, opened_mono=None) == winners[0]


def test_the_client_order_id_survives_failed_attempts(store: Store) -> None:
    added = store.add_position(long_position())
    assert added.id is not None
    first = store.claim_close("BOSCHLTD", "stop_loss")
    store.record_attempt(added.id, "broker timed out")
    outcome = store.fail_close(added.id, "broker timed out")
    assert outcome is not None
    failed, _ = outcome
    assert failed.state is State.CLOSE_FAILED
    assert failed.last_error == "broker timed out"
    assert failed.close_attempts == 1
    assert failed.client_order_id == first.client_order_id
    again = store.claim_close("BOSCHLTD", "stop_loss")
    assert again.state is State.CLOSING
    assert again.client_order_id == first.client_order_id
    closed = store.finish_close(added.id, "ord-9", 559.0, -160.0, closed_at=1100.0)
    assert closed is not None
    assert closed.client_order_id == first.client_order_id
    assert closed.last_error is None


def test_each_position_gets_its_own_client_order_id(store: Store) -> None:
    ids = set()
    for symbol in ("A", "B", "C"):
        store.add_position(long_position(symbol))
        ids.add(store.claim_close(symbol, "emergency").client_order_id)
    assert len(ids) == 3


def test_finish_close_records_the_fill(store: Store) -> None:
    added = store.add_position(long_position())
    assert added.id is not None
    claimed = store.claim_close("BOSCHLTD", "take_profit")
    closed = store.finish_close(added.id, "ord-1", 600.0, 250.0, closed_at=1100.0)
    assert closed is not None
    assert closed.state is State.CLOSED
    assert (closed.order_id, closed.exit_price, closed.pnl, closed.closed_at) == (
        "ord-1", 600.0, 250.0, 1100.0)
    assert (closed.reason, closed.client_order_id) == ("take_profit", claimed.client_order_id)
    assert store.live_position("BOSCHLTD") is None
    assert store.live_positions() == []


def test_finish_and_fail_only_move_a_closing_position(store: Store) -> None:
    added = store.add_position(long_position())
    assert added.id is not None
    assert store.finish_close(added.id, "ord-1", 600.0, 250.0, 1100.0) is None  # open
    assert store.fail_close(added.id, "x") is None
    assert store.position(added.id).state is State.OPEN  # type: ignore[union-attr]
    store.claim_close("BOSCHLTD", "emergency")
    assert store.fail_close(added.id, "broker down") is not None
    assert store.fail_close(added.id, "again") is None  # close_failed, not closing
    store.claim_close("BOSCHLTD", "emergency")
    assert store.finish_close(added.id, "ord-1", 600.0, 250.0, 1100.0) is not None
    assert store.finish_close(added.id, "ord-2", 1.0, 1.0, 1200.0) is None  # closed once
    assert store.fail_close(added.id, "late") is None
    closed = store.position(added.id)
    assert closed is not None
    assert (closed.state, closed.order_id, closed.exit_price) == (State.CLOSED, "ord-1", 600.0)
    assert store.finish_close(9999, "ord-1", 600.0, 250.0, 1100.0) is None


def test_positions_lists_live_and_recently_closed(store: Store) -> None:
    for n in range(5):
        symbol = f"S{n}"
        added = store.add_position(long_position(symbol))
        assert added.id is not None
        store.claim_close(symbol, "emergency")
        store.finish_close(added.id, f"ord-{n}", 570.0, -50.0, closed_at=2000.0 + n)
    store.add_position(long_position("OPEN1"))
    store.add_position(long_position("CLOSING1"))
    store.claim_close("CLOSING1", "stop_loss")
    listed = store.positions(limit=2)
    assert [p.symbol for p in listed] == ["S3", "S4", "OPEN1", "CLOSING1"]
    assert [p.state for p in listed] == [State.CLOSED, State.CLOSED, State.OPEN, State.CLOSING]
    assert len(store.positions()) == 7


# DNS memory, prices, outbox ---------------------------------------------------------


def test_dns_addresses_round_trip(store: Store) -> None:
    assert store.load_addresses("feed.example.com") == []
    store.save_addresses("Feed.Example.COM", ["203.0.113.7", "2001:db8::7"], now=1.0)
    assert store.load_addresses("feed.example.com") == ["203.0.113.7", "2001:db8::7"]
    store.save_addresses("feed.example.com", ["203.0.113.8"])
    assert store.load_addresses("FEED.example.com") == ["203.0.113.8"]


def test_A4_a_price_snapshot_round_trips_and_the_last_save_wins(store: Store) -> None:
    """A4: a save after the wall clock stepped back has smaller stamps, and still wins."""
    store.save_prices([Tick("A", 575.0, 1000.0), Tick("B", 10.5, 1001.0)])
    store.save_prices([Tick("A", 500.0, 900.0), Tick("B", 11.0, 1002.0)])
    loaded = sorted(store.load_prices(), key=lambda t: t.symbol)
    assert loaded == [Tick("A", 500.0, 900.0), Tick("B", 11.0, 1002.0)]
    store.save_prices([])
    assert len(store.load_prices()) == 2


def test_C14_forgotten_prices_leave_the_snapshot(store: Store) -> None:
    """C14: the prices table kept every symbol the feed ever sent."""
    store.save_prices([Tick("A", 1.0, 1000.0), Tick("B", 2.0, 1000.0)])
    store.save_prices([Tick("C", 3.0, 1001.0)], forget=["A"])
    assert sorted(t.symbol for t in store.load_prices()) == ["B", "C"]


def test_alerts_come_out_in_order_until_sent(store: Store) -> None:
    ids = [store.enqueue_alert("feed", "warning", f"alert {n}", now=float(n)) for n in range(5)]
    assert ids == sorted(ids)
    assert [a.text for a in store.pending_alerts()] == [f"alert {n}" for n in range(5)]
    assert [a.id for a in store.pending_alerts(limit=2)] == ids[:2]
    store.count_attempt(ids[:2])
    assert [a.attempts for a in store.pending_alerts()] == [1, 1, 0, 0, 0]
    store.mark_sent([ids[0], ids[2]], now=10.0)
    assert [a.id for a in store.pending_alerts()] == [ids[1], ids[3], ids[4]]
    assert store.pending_count() == 3
    store.mark_sent([ids[0]], now=20.0)  # marking again keeps the first send time
    recent = store.recent_alerts(limit=5)
    assert [a.id for a in recent] == list(reversed(ids))
    assert {a.id: a.sent_at for a in recent}[ids[0]] == 10.0
    assert (recent[-1].kind, recent[-1].severity) == ("feed", "warning")


def test_sent_alerts_are_pruned_to_the_newest_ones(store: Store) -> None:
    total = KEEP_SENT_ALERTS + 50
    ids = [store.enqueue_alert("k", "info", f"a{n}", now=float(n)) for n in range(total + 3)]
    store.mark_sent(ids[:total], now=1.0)
    sent = [a for a in store.recent_alerts(limit=1000) if a.sent_at is not None]
    assert len(sent) == KEEP_SENT_ALERTS
    assert sorted(a.id for a in sent) == ids[total - KEEP_SENT_ALERTS : total]
    assert [a.id for a in store.pending_alerts()] == ids[total:]  # unsent ones never pruned


def test_pending_alerts_include_every_critical_behind_a_long_backlog(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    for i in range(150):
        store.enqueue_alert("price_stale", "warning", f"warn {i}", float(i))
    store.enqueue_alert("position_blind", "critical", "blind!", 200.0)
    pending = store.pending_alerts(100)
    assert [e.text for e in pending][-1] == "blind!"
    assert len(pending) == 101 and [e.id for e in pending] == sorted(e.id for e in pending)


# Schema 2: release, attempts, a fill after a failed round, alerts in the transition ----


def test_a_version_1_store_opens_and_keeps_its_rows(db_path: Path) -> None:
    """A2/A1 schema: a store written by schema 1 is migrated in place, nothing lost."""
    db_path.parent.mkdir(parents=True)
    db = sqlite3.connect(db_path)
    with db:
        db.executescript(V1_SCHEMA)
        db.execute("INSERT INTO meta VALUES ('schema_version', '1')")
        db.execute("INSERT INTO positions (symbol, side, quantity, entry_price, stop_loss,"
                   " state, client_order_id, close_attempts, opened_at)"
                   " VALUES ('AAA', 'long', 10, 100, 90, 'close_failed', 'tg-old', 4, 1.0)")
        db.execute("INSERT INTO positions (symbol, side, quantity, entry_price, stop_loss,"
                   " state, opened_at) VALUES ('BBB', 'short', 5, 50, 55, 'open', 2.0)")
    db.close()
    store = Store(db_path)
    try:
        assert store.schema_version() == SCHEMA_VERSION == 4
        failed, opened = store.live_positions()
        assert (failed.symbol, failed.state, failed.client_order_id, failed.close_attempts) == (
            "AAA", State.CLOSE_FAILED, "tg-old", 4)
        assert (opened.symbol, opened.side, opened.filled_quantity) == ("BBB", Side.SHORT, 0.0)
        # Its failure was alerted under schema 1: a failed round now raises no second alert.
        store.claim_close("AAA", "stop_loss")
        assert failed.id is not None
        assert store.fail_close(failed.id, "down", alert=an_alert()) == (
            store.position(failed.id), False)
        assert store.release_position("BBB", now=3.0).state is State.RELEASED
    finally:
        store.close()


def an_alert(text: str = "closed!") -> Alert:
    return Alert("position_closed", Severity.WARNING, text)


def test_release_stops_guarding_without_closing(store: Store) -> None:
    """A1: release takes an open or close_failed position out of guard; 409 while closing."""
    with pytest.raises(PositionError) as info:
        store.release_position("BOSCHLTD", now=1.0)
    assert info.value.code == 404
    store.add_position(long_position())
    store.claim_close("BOSCHLTD", "stop_loss")
    with pytest.raises(PositionError) as info:
        store.release_position("BOSCHLTD", now=1.0)
    assert info.value.code == 409
    claimed = store.live_position("BOSCHLTD")
    assert claimed is not None and claimed.id is not None
    store.fail_close(claimed.id, "broker down")
    released = store.release_position("BOSCHLTD", now=1100.0)
    assert (released.state, released.closed_at, released.exit_price) == (
        State.RELEASED, 1100.0, None)
    assert store.live_positions() == []
    with pytest.raises(PositionError) as info:
        store.claim_close("BOSCHLTD", "stop_loss")  # nothing to retry any more
    assert info.value.code == 404
    assert [p.state for p in store.positions()] == [State.RELEASED]
    store.add_position(long_position(opened_at=1200.0))  # the symbol may be guarded again


def test_a_refused_attempt_gets_a_new_client_order_id(store: Store) -> None:
    """A2: a refused or partly filled attempt is over; the rest goes out under a new id."""
    store.add_position(long_position())
    claimed = store.claim_close("BOSCHLTD", "stop_loss")
    first = claimed.client_order_id
    assert first is not None and first.isalnum() and len(first) <= 20
    part = store.end_attempt(claimed, "partly filled", filled=4.0, price=550.0)
    assert part is not None
    assert part.client_order_id not in (None, first) and part.client_order_id.isalnum()
    assert (part.filled_quantity, part.filled_value, part.remaining) == (4.0, 2200.0, 6.0)
    assert part.close_attempts == 1
    assert store.end_attempt(claimed, "stale id") is None  # that attempt was already ended
    refused = store.end_attempt(part, "rejected")
    assert refused is not None and refused.client_order_id != part.client_order_id
    assert refused.filled_quantity == 4.0


def test_a_fill_is_recorded_even_after_a_loser_failed_the_round(store: Store) -> None:
    """A3: a fill recorded by the winner is not lost to a loser's close_failed."""
    added = store.add_position(long_position())
    assert added.id is not None
    store.claim_close("BOSCHLTD", "stop_loss")
    store.fail_close(added.id, "second round failed")
    closed = store.finish_close(added.id, "ord-1", 559.0, -160.0, 1100.0)
    assert closed is not None and closed.state is State.CLOSED


def test_a_close_and_its_alert_are_one_transaction(store: Store) -> None:
    """B1: the outbox row is written with the transition, or not at all."""
    added = store.add_position(long_position())
    assert added.id is not None
    store.claim_close("BOSCHLTD", "stop_loss")
    outcome = store.fail_close(added.id, "down", alert=an_alert("failed!"), now=5.0)
    assert outcome is not None and outcome[1] is True
    store.claim_close("BOSCHLTD", "stop_loss")
    outcome = store.fail_close(added.id, "down", alert=an_alert("failed again!"), now=6.0)
    assert outcome is not None and outcome[1] is False  # one failure alert per position
    store.claim_close("BOSCHLTD", "stop_loss")
    store.finish_close(added.id, "ord-1", 559.0, -160.0, 1100.0, alert=an_alert())
    assert [a.text for a in store.pending_alerts()] == ["failed!", "closed!"]
    # A transition that does not happen writes no alert.
    assert store.finish_close(added.id, "ord-2", 1.0, 1.0, 1200.0, alert=an_alert("x")) is None
    assert store.pending_count() == 2


def test_a_close_at_the_broker_has_no_exit_price(store: Store) -> None:
    """A1: closed_at_broker is closed with the exit price honestly unknown."""
    added = store.add_position(long_position())
    assert added.id is not None
    store.claim_close("BOSCHLTD", "stop_loss")
    closed = store.finish_close(added.id, None, None, None, 1100.0, reason="closed_at_broker")
    assert closed is not None
    assert (closed.state, closed.reason, closed.exit_price, closed.pnl) == (
        State.CLOSED, "closed_at_broker", None, None)


V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE positions (
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
CREATE UNIQUE INDEX one_live_position_per_symbol ON positions (symbol) WHERE state != 'closed';
CREATE TABLE dns_addresses (host TEXT PRIMARY KEY, addresses TEXT NOT NULL,
                            updated_at REAL NOT NULL);
CREATE TABLE prices (symbol TEXT PRIMARY KEY, price REAL NOT NULL, received_at REAL NOT NULL);
CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, created_at REAL NOT NULL,
    kind TEXT NOT NULL, severity TEXT NOT NULL, text TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, sent_at REAL);
"""
