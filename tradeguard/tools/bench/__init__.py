"""`tradeguard bench`: throughput, latency and memory against a bare baseline (`run`)."""
