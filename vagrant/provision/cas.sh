#!/usr/bin/env bash
# cas1/cas2: the Exchange stand-ins, each a systemd service: nginx (80, 443), dovecot (IMAP 143/993,
# POP3 110/995, user demo/demo), aiosmtpd on 25 into /var/mail/lab, the RPC stand-in (135, 60200, 60201).
set -euo pipefail
label=$1 ip=$2
export DEBIAN_FRONTEND=noninteractive
apt-get install -y -qq nginx-light dovecot-imapd dovecot-pop3d >/dev/null

openssl req -x509 -newkey rsa:2048 -nodes -days 365 -subj /CN=cas.lab.test \
  -keyout /etc/ssl/private/cas.key -out /etc/ssl/certs/cas.crt 2>/dev/null
cat > /etc/nginx/sites-enabled/default <<NGINX
server {
    listen 80;
    listen 443 ssl;
    ssl_certificate /etc/ssl/certs/cas.crt;
    ssl_certificate_key /etc/ssl/private/cas.key;
    location / { default_type text/plain; return 200 "$label\n"; }
}
NGINX
systemctl restart nginx

cat > /etc/dovecot/conf.d/99-lab.conf <<DOVE
disable_plaintext_auth = no
ssl_cert = </etc/ssl/certs/cas.crt
ssl_key = </etc/ssl/private/cas.key
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u /etc/dovecot/lab.passwd
}
userdb {
  driver = static
  args = uid=vagrant gid=vagrant home=/home/vagrant/mail/%u
}
DOVE
echo "demo:{PLAIN}demo::::::" > /etc/dovecot/lab.passwd
systemctl restart dovecot

mkdir -p /var/mail/lab
cat > /etc/systemd/system/lab-smtp.service <<UNIT
[Unit]
Description=aiosmtpd on port 25 for the hapair lab
[Service]
ExecStart=/opt/hapair/bin/python -m aiosmtpd -n -l $ip:25 -c aiosmtpd.handlers.Mailbox /var/mail/lab
Restart=always
[Install]
WantedBy=multi-user.target
UNIT
cat > /etc/systemd/system/lab-rpc.service <<UNIT
[Unit]
Description=RPC stand-in (135, 60200, 60201) for the hapair lab
[Service]
ExecStart=/opt/hapair/bin/python -m hapair.standin $label $ip 135,60200,60201
Restart=always
[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable --now lab-smtp lab-rpc
