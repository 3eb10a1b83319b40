"""The network edge: the resolver ladder, pinned connections, and the HTTP client on them.

`resolver` turns a hostname into checked addresses (cached for their TTL),
`pinned` connects to one of them with TLS on the hostname, `http` keeps such
connections alive for the broker and Telegram; `addresses` holds the pure
rules about addresses and names.
"""
