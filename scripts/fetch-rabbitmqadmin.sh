#!/usr/bin/env bash
# Prints the path of RabbitMQ's own `rabbitmqadmin` (the management API's command-line client),
# which the HTTP API tests run unchanged against FerryMQ. Uses the installed one if there is
# one; otherwise downloads Debian's rabbitmq-server package (without installing it or Erlang)
# and extracts just that script into .cache/.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v rabbitmqadmin >/dev/null 2>&1; then
    command -v rabbitmqadmin
    exit 0
fi
out="$PWD/.cache/rabbitmqadmin/rabbitmqadmin"
if [ ! -x "$out" ]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    (
        cd "$work"
        apt-get download rabbitmq-server >/dev/null 2>&1 ||
            { apt-get update -qq >/dev/null && apt-get download rabbitmq-server >/dev/null; }
        dpkg-deb -x rabbitmq-server_*.deb pkg
    )
    mkdir -p "$(dirname "$out")"
    install -m 0755 "$work/pkg/usr/bin/rabbitmqadmin" "$out"
fi
echo "$out"
