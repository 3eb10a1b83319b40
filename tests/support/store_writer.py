"""Open, claim and close positions in a loop until killed (for test_store_durability).

Usage: python store_writer.py DB_PATH [COUNT]

First it finishes whatever a killed predecessor left live, as TradeGuard does on
start, then it cycles through a few symbols: add, claim_close, finish_close (which
queues the alert "closed ID" in its own transaction).
Each line it prints is printed only after the transition it names returned, so
the test may hold the store to every line it read:

    recovered ID CLIENT_ORDER_ID
    ready
    added ID SYMBOL
    claimed ID CLIENT_ORDER_ID
    closed ID CLIENT_ORDER_ID
    done
"""

from __future__ import annotations

import sys
import time

from tradeguard.alerts import Alert, Severity
from tradeguard.positions import Position, Side, State, pnl
from tradeguard.store import Store

SYMBOLS = ("BOSCHLTD", "INFY", "TCS", "RELIANCE", "M&M")


def say(*words: object) -> None:
    # One write per line: print() writes word by word when PYTHONUNBUFFERED is set,
    # and a kill between two words would leave half a line.
    sys.stdout.write(" ".join(map(str, words)) + "\n")
    sys.stdout.flush()


def finish(store: Store, claimed: Position) -> None:
    assert claimed.id is not None
    exit_price = claimed.entry_price * 0.97  # a stop-loss fill
    alert = Alert("position_closed", Severity.WARNING, f"closed {claimed.id}")
    closed = store.finish_close(claimed.id, f"paper-{claimed.client_order_id}", exit_price,
                                pnl(claimed, exit_price), closed_at=time.time(), alert=alert)
    if closed is None:
        raise SystemExit(f"position {claimed.id} was not closing")
    say("closed", closed.id, closed.client_order_id)


def recover(store: Store) -> None:
    for position in store.live_positions():
        claimed = (store.claim_close(position.symbol, "stop_loss")
                   if position.state is not State.CLOSING else position)
        say("recovered", claimed.id, claimed.client_order_id)
        finish(store, claimed)


def main(path: str, count: int) -> int:
    store = Store(path)
    recover(store)
    say("ready")
    for n in range(count):
        symbol = SYMBOLS[n % len(SYMBOLS)]
        entry = 100.0 + n
        added = store.add_position(Position(symbol, Side.LONG, 1 + n % 7, entry,
                                            stop_loss=entry * 0.98, take_profit=None,
                                            opened_at=time.time()))
        say("added", added.id, symbol)
        claimed = store.claim_close(symbol, "stop_loss")
        say("claimed", claimed.id, claimed.client_order_id)
        finish(store, claimed)
    store.close()
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 1_000_000))
