"""The SQLite store: positions and their close transitions, DNS memory, prices, outbox.

One file, WAL mode, `synchronous=FULL`: a transition that returns has reached
the disk, so a close recorded as `closing` before the order goes out survives
a `kill -9` or a power cut. Every transition is a single conditional UPDATE,
which is what makes a close happen exactly once: of any number of racing
callers, one sees its row change and the others see nothing to do.

The rows are kept by what they hold: `_positions` (positions and their close
transitions), `_outbox` (alerts), `_memory` (DNS answers, prices, instruments),
on one `_database` connection with the `_schema` and its migrations.
"""

from __future__ import annotations

from tradeguard.store._database import Database
from tradeguard.store._memory import MemoryRows
from tradeguard.store._outbox import KEEP_FAILED_ALERTS, KEEP_SENT_ALERTS, OutboxRows
from tradeguard.store._positions import PositionRows, new_client_order_id
from tradeguard.store._schema import SCHEMA_VERSION


class Store(PositionRows, OutboxRows, MemoryRows, Database):
    """Thread-safe access to the one SQLite file; every method is one transaction."""


__all__ = ["KEEP_FAILED_ALERTS", "KEEP_SENT_ALERTS", "SCHEMA_VERSION", "Store",
           "new_client_order_id"]
