"""The network edge: the resolver ladder and the HTTP client that uses it."""
