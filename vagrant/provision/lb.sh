#!/usr/bin/env bash
# lb1/lb2: hapair as a systemd service on the guide's four virtual services (the shipped default with
# the lab's addresses), with heartbeats to the other node and the client as ping node.
set -euo pipefail
node=$1 ip=$2
peer=lb2 peer_ip=198.18.0.3
if [ "$node" = lb2 ]; then peer=lb1 peer_ip=198.18.0.2; fi
iface=$(ip -o -4 addr show | awk -v ip="$ip" '$4 ~ "^"ip"/" {print $2}')

install -D -m 0644 /hapair/systemd/hapair.sysusers.conf /usr/lib/sysusers.d/hapair.conf
systemd-sysusers
install -d -o root -g hapair -m 0750 /etc/hapair
echo "vagrant-$node" > /etc/hapair/admin.pw
chgrp hapair /etc/hapair/admin.pw && chmod 0640 /etc/hapair/admin.pw

/opt/hapair/bin/python - "$node" "$peer" "$iface" "$ip" "$peer_ip" > /etc/hapair/hapair.yaml <<'PY'
import sys, yaml
from hapair.configfile import default_text
node, peer, iface, ip, peer_ip = sys.argv[1:]
doc = yaml.safe_load(default_text().replace("192.168.30.", "198.18.0."))
doc["node"] = {
    "name": node, "state_dir": "/var/lib/hapair", "control_socket": "/run/hapair/control.sock",
    "hostname": f"{node}.lab.test",
    "ha": {"peer": peer, "interface": iface, "paths": [{"local": ip, "peer": peer_ip}],
           "ping_nodes": ["198.18.0.100"], "key_file": "/var/lib/hapair/heartbeat.key",
           "admin_password_file": "/etc/hapair/admin.pw"},
}
doc["cluster"]["ha"] = {"preferred_master": "lb1"}
print(yaml.safe_dump(doc, sort_keys=False))
PY
chgrp hapair /etc/hapair/hapair.yaml && chmod 0660 /etc/hapair/hapair.yaml
hapair check-config /etc/hapair/hapair.yaml

install -m 0644 /hapair/systemd/hapair.service /etc/systemd/system/hapair.service
systemctl daemon-reload
systemctl enable --now hapair
