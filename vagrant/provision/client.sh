#!/usr/bin/env bash
# The client: curl, openssl and Python's mail clients, and the 198.18.0.100 the lb nodes ping.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq swaks >/dev/null || true
