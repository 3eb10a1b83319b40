"""Tools that run the whole system: the demo, the benchmark, the chaos run.

Besides `tradeguard.cli`, these are the only modules of `tradeguard` that may
import `actors` (SPEC §1): the domain and the edges never depend on the actors.
"""
