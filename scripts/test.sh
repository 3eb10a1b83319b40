#!/usr/bin/env bash
# The whole test suite on a fresh machine: system packages the tests drive,
# a virtual environment with the test extras, the quality gates, then pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    # chromium + chromedriver: the status-page browser test; prometheus: promtool for the rules;
    # systemd: systemd-analyze for the unit file.
    need=""
    command -v chromium >/dev/null 2>&1 || need="$need chromium"
    command -v chromedriver >/dev/null 2>&1 || need="$need chromium-driver"
    command -v promtool >/dev/null 2>&1 || need="$need prometheus"
    if [ -n "$need" ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $need
    fi
fi

python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e '.[test]'

ruff check tradeguard actors tests
mypy
python -m pytest "$@"
