#!/usr/bin/env bash
# Install PostgreSQL and Redis (Debian packages) for the deployment test (make test-deploy), without configuring
# them: the test runs private instances from temporary folders on loopback (scripts/deploy/instance.py), never the
# system's clusters or services.
#
# Needs root where a package is missing (CI runs as root). Debian's postgresql creates a "main" cluster and
# redis-server a system service; on machines where /usr/sbin/policy-rc.d forbids starting services (containers)
# neither starts, elsewhere they may: stop them if you do not want them (the test does not use them).
set -euo pipefail

pg_bin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1; }
have() {
  local bin
  bin="$(pg_bin)"
  [ -n "$bin" ] && [ -x "$bin/postgres" ] && [ -x "$bin/initdb" ] && [ -x "$bin/pg_isready" ] &&
    [ -x /usr/bin/redis-server ]
}
versions() {
  echo "PostgreSQL $("$(pg_bin)/postgres" --version | sed -nE 's/^postgres \(PostgreSQL\) ([0-9.]+).*/\1/p') and Redis $(/usr/bin/redis-server --version | sed -nE 's/.* v=([^ ]+).*/\1/p')"
}
if have && [ "${1:-}" != "--force" ]; then
  echo "== deploy: $(versions) already installed"
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "scripts/deploy/install.sh: installing PostgreSQL and Redis needs root; run: sudo $0" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
packages=(postgresql redis-server)
log=$(mktemp /tmp/hve-deploy-apt.XXXXXX.log)
# A fresh machine may have no package lists yet (or stale ones): update once and try again.
if ! apt-get install -y -q --no-install-recommends "${packages[@]}" >"$log" 2>&1; then
  apt-get update -q >>"$log" 2>&1 || true
  apt-get install -y -q --no-install-recommends "${packages[@]}" >>"$log" 2>&1 || {
    tail -n 30 "$log" >&2
    echo "scripts/deploy/install.sh: apt-get install ${packages[*]} failed (full log: $log)" >&2
    exit 1
  }
fi
if ! have; then
  tail -n 30 "$log" >&2
  echo "scripts/deploy/install.sh: apt-get installed ${packages[*]}, yet postgres, initdb, pg_isready or redis-server is missing (full log: $log)" >&2
  exit 1
fi
rm -f "$log"
echo "== deploy: installed $(versions)"
