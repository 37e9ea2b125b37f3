#!/usr/bin/env bash
# Install Postfix and Dovecot (Debian packages) for the real-MTA tests (make test-mta), without configuring them:
# the tests run private instances from temporary folders (scripts/mta/instance.py), never the system's.
#
# Needs root (CI runs as root). Debian's postfix asks how to configure the system's mailer: "No configuration"
# is preseeded, so /etc/postfix/main.cf is not written and no system instance is set up. On machines where
# /usr/sbin/policy-rc.d forbids starting services (containers), nothing starts; elsewhere the packages' own
# units may start the system's Dovecot with Debian's default configuration: stop it if you do not want it.
set -euo pipefail

have() { command -v /usr/sbin/postfix >/dev/null && command -v /usr/sbin/dovecot >/dev/null; }
if have && [ "${1:-}" != "--force" ]; then
  echo "== mta: Postfix $(/usr/sbin/postconf -d -h mail_version 2>/dev/null) and Dovecot $(/usr/sbin/dovecot --version | cut -d' ' -f1) already installed"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "scripts/mta/install.sh: installing Postfix and Dovecot needs root; run: sudo $0" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
packages=(postfix dovecot-core)
log=$(mktemp /tmp/hve-mta-apt.XXXXXX.log)
# A fresh machine may have no package lists yet.
if ! apt-get install -y -q --no-install-recommends "${packages[@]}" >"$log" 2>&1; then
  apt-get update -q >>"$log" 2>&1
  apt-get install -y -q --no-install-recommends "${packages[@]}" >>"$log" 2>&1 || {
    tail -n 30 "$log" >&2
    echo "scripts/mta/install.sh: apt-get install ${packages[*]} failed (full log: $log)" >&2
    exit 1
  }
fi
rm -f "$log"
echo "== mta: installed Postfix $(/usr/sbin/postconf -d -h mail_version) and Dovecot $(/usr/sbin/dovecot --version | cut -d' ' -f1)"
