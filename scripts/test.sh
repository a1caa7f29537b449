#!/usr/bin/env bash
# Runs every test: Rust unit + integration tests (lapin), then the Python interop tests (pika,
# aio-pika, aiormq, kombu, Celery, py-amqp) and the Node ones (amqplib) against the real
# `ferrymq` binary. Installs what it needs (a venv and node_modules with pinned clients).
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 .venv/bin/python -m pip install --quiet --disable-pip-version-check -r tests/python/requirements.txt

# The web console's browser tests use Debian's chromium through Playwright (never a browser
# download of Playwright's own). Without root and without chromium they skip, saying why.
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ]; then
    apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

cargo build --bins
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
    # nextest does not run doctests.
    cargo test --workspace --doc --quiet
else
    cargo test --workspace
fi

# RabbitMQ's own management client, for the HTTP API tests (tests/python/test_management.py).
RABBITMQADMIN="$(scripts/fetch-rabbitmqadmin.sh)"
export RABBITMQADMIN

FERRYMQ_BIN="$PWD/target/debug/ferrymq" .venv/bin/python -m pytest -q tests/python

# amqplib on Node: exact versions from tests/node/package-lock.json.
(
    cd tests/node
    npm ci --no-audit --no-fund --prefer-offline --loglevel=error
    FERRYMQ_BIN="$PWD/../../target/debug/ferrymq" node --test --test-concurrency=1 test/
)
