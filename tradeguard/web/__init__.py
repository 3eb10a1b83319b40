"""The HTTP API, metrics endpoint and status page (Flask, served by waitress)."""
