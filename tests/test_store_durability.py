"""kill -9 at any moment never leaves the store inconsistent or loses a returned transition.

tests/support/store_writer.py opens, claims and closes positions in a loop; the
test kills it with SIGKILL at seeded random moments, reopens the store after
each kill and holds every row to the state invariants, and holds the store to
every line the writer printed (a line is printed only after its transition
returned). Each new writer first finishes what its killed predecessor left live.
"""

from __future__ import annotations

import os
import random
import select
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tradeguard.store import Store

WRITER = Path(__file__).parent / "support" / "store_writer.py"
RUNS = 15
SEED = 1_767_779_056
MAX_DELAY = 0.4  # seconds the writer runs past "ready" before the kill


@dataclass
class Promises:
    """What the writers said had happened, across all runs."""

    claimed: dict[int, str] = field(default_factory=dict)  # id -> client order id
    closed: set[int] = field(default_factory=set)
    recovered: int = 0

    def read(self, lines: list[str]) -> None:
        for line in lines:
            word, *rest = line.split()
            if word in ("claimed", "recovered", "closed"):
                position_id, client_order_id = int(rest[0]), rest[1]
                # the id a position was claimed with is the one it keeps
                assert self.claimed.setdefault(position_id, client_order_id) == client_order_id
                if word == "closed":
                    self.closed.add(position_id)
                if word == "recovered":
                    self.recovered += 1


def start_writer(db: Path, stderr: Path, count: int | None = None) -> subprocess.Popen[bytes]:
    args = [sys.executable, str(WRITER), str(db)] + ([str(count)] if count is not None else [])
    with stderr.open("ab") as err:
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err)


def read_until_ready(proc: subprocess.Popen[bytes], stderr: Path) -> bytes:
    """What the writer printed up to and including "ready" (raw reads: no hidden buffer)."""
    assert proc.stdout is not None
    fd, data = proc.stdout.fileno(), b""
    deadline = time.monotonic() + 15.0
    while b"\nready\n" not in b"\n" + data:
        readable, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        assert readable, f"the writer was not ready in time: {stderr.read_text()}"
        chunk = os.read(fd, 65536)
        assert chunk, f"the writer ended early: {stderr.read_text()}"
        data += chunk
    return data


def run_and_kill(db: Path, stderr: Path, delay: float) -> list[str]:
    """Start a writer, let it run `delay` seconds past "ready", SIGKILL it, return its lines."""
    proc = start_writer(db, stderr)
    assert proc.stdout is not None
    try:
        data = read_until_ready(proc, stderr)
        time.sleep(delay)  # the point of the test: a kill at an arbitrary moment
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    data += proc.stdout.read()
    proc.stdout.close()
    assert proc.returncode == -signal.SIGKILL, stderr.read_text()
    return data.decode().splitlines()


def check_invariants(db: Path, promises: Promises) -> None:
    Store(db).close()  # reopening must work, whatever the kill interrupted
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        assert conn.execute("PRAGMA integrity_check").fetchall()[0][0] == "ok"
        rows = {r["id"]: r for r in conn.execute("SELECT * FROM positions")}
        alerts = [r[0] for r in conn.execute("SELECT text FROM outbox ORDER BY id")]
    finally:
        conn.close()
    live: list[str] = []
    for row in rows.values():
        if row["state"] == "closed":
            for column in ("exit_price", "pnl", "order_id", "client_order_id", "closed_at"):
                assert row[column] is not None, (column, dict(row))
            assert row["order_id"] == f"paper-{row['client_order_id']}", dict(row)
        elif row["state"] in ("closing", "close_failed"):
            assert row["client_order_id"] is not None, dict(row)
        else:
            assert row["state"] == "open", dict(row)
            assert row["client_order_id"] is None, dict(row)
        if row["state"] != "closed":
            live.append(row["symbol"])
    assert len(live) == len(set(live)), f"two live rows for one symbol: {live}"
    assert len(live) <= 1, f"the writer works one position at a time: {live}"
    # B1: a close and its alert are one transaction: each closed row has its alert, once.
    closed_ids = sorted(i for i, r in rows.items() if r["state"] == "closed")
    assert sorted(alerts) == sorted(f"closed {i}" for i in closed_ids)
    order_ids = [r["client_order_id"] for r in rows.values() if r["client_order_id"]]
    assert len(order_ids) == len(set(order_ids))
    for position_id, client_order_id in promises.claimed.items():
        assert rows[position_id]["client_order_id"] == client_order_id
        assert rows[position_id]["state"] != "open"
    for position_id in promises.closed:
        assert rows[position_id]["state"] == "closed"


def test_kill_9_at_random_moments_never_breaks_the_store(tmp_path: Path) -> None:
    """B1 too: no kill falls between a close and its alert."""
    rng = random.Random(SEED)
    db, stderr = tmp_path / "tradeguard.db", tmp_path / "writer.err"
    promises = Promises()
    for _ in range(RUNS):
        promises.read(run_and_kill(db, stderr, rng.uniform(0.0, MAX_DELAY)))
        check_invariants(db, promises)
    # The kills landed mid-close at least once, and the writers made real progress.
    assert promises.recovered >= 1
    assert len(promises.closed) > RUNS

    # A last writer, left to finish, closes whatever was left; nothing is left live.
    proc = start_writer(db, stderr, count=0)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr.read_text()
    promises.read(out.decode().splitlines())
    check_invariants(db, promises)
    store = Store(db)
    try:
        assert store.live_positions() == []
        assert {p.id for p in store.positions(limit=10**6)} == set(promises.claimed)
    finally:
        store.close()
