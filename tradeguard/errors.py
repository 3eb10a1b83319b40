"""The one exception family of TradeGuard: every error it raises on purpose."""

from __future__ import annotations


class TradeGuardError(Exception):
    """Base of every error TradeGuard raises on purpose."""


class ConfigError(TradeGuardError):
    """The configuration is invalid; carries every problem found."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class ResolverError(TradeGuardError):
    """No resolver on the ladder produced an address for a host."""


class FeedError(TradeGuardError):
    """The price feed could not be reached or spoke nonsense."""


class TokenRejected(FeedError):
    """The feed refused the credentials at the WebSocket handshake (401/403), not a network error.

    The same token only gets the same refusal (and a venue that counts them may
    block the address: openalgo#788, #1371), so the feed waits for a new token
    instead of reconnecting as it does after a network error.
    """


class BrokerError(TradeGuardError):
    """The broker refused, failed or could not be reached for an order."""


class BrokerUnavailable(BrokerError):
    """No answer, or one that says nothing final (timeout, reset, 5xx, DNS): a retry may work.

    The order may have reached the broker, so a retry reuses its client order id.
    """


class BrokerRefused(BrokerError):
    """The broker said no (rejected, cancelled, 4xx): that attempt is over.

    Sending the same client order id again gets the same refusal back, so what
    is still open goes out under a new id, in a later round.
    """


class NotifyError(TradeGuardError):
    """A notification was not delivered; `permanent` when retrying cannot help."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class StoreError(TradeGuardError):
    """The SQLite store could not be opened or written."""


class PositionError(TradeGuardError):
    """A request about a position cannot be carried out as asked.

    `code` is the HTTP status an operator should see: 400 bad input,
    404 no such position, 409 conflicting state, 502 broker failure.
    """

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.code = code
