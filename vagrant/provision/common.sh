#!/usr/bin/env bash
# Every VM: Python and the hapair package from the synced repository.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq python3 python3-pip python3-venv curl openssl iproute2 >/dev/null
python3 -m venv /opt/hapair
/opt/hapair/bin/pip install -q --upgrade pip
/opt/hapair/bin/pip install -q "/hapair[test]"
ln -sf /opt/hapair/bin/hapair /usr/local/bin/hapair
