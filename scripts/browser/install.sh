#!/usr/bin/env bash
# Install what the browser tests (make test-browser) need: Chromium from Debian's packages and Playwright for
# Python into the venv given as $1 (default .venv). Playwright drives Debian's Chromium (executable_path): it
# downloads no browser of its own. Needs root for apt (CI runs as root).
set -euo pipefail
venv="${1:-.venv}"
playwright_version=1.65.3
if ! command -v chromium >/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "scripts/browser/install.sh: installing Chromium needs root; run: sudo $0" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  packages=(chromium fonts-dejavu-core)
  log=$(mktemp /tmp/hve-browser-apt.XXXXXX.log)
  # A fresh machine may have no package lists yet.
  if ! apt-get install -y -q --no-install-recommends "${packages[@]}" >"$log" 2>&1; then
    apt-get update -q >>"$log" 2>&1
    apt-get install -y -q --no-install-recommends "${packages[@]}" >>"$log" 2>&1 || {
      tail -n 30 "$log" >&2
      echo "scripts/browser/install.sh: apt-get install ${packages[*]} failed (full log: $log)" >&2
      exit 1
    }
  fi
  rm -f "$log"
fi
"$venv/bin/python" -c "import playwright" 2>/dev/null ||
  "$venv/bin/uv" pip install --python "$venv/bin/python" --quiet "playwright==$playwright_version"
echo "== browser: $(chromium --version 2>/dev/null), playwright $("$venv/bin/python" -c 'from importlib.metadata import version; print(version("playwright"))')"
