"""The price feed: the WebSocket connection and the wire formats spoken over it."""
