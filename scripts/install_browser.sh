#!/usr/bin/env bash
# Installs what the dashboard browser check needs (tests/test_card_browser.py, scripts/screenshot_card.py):
# Debian's chromium and two small font packages, so screenshots show text. Does nothing when they are
# there already; otherwise needs root and apt-get (Debian; Ubuntu's chromium is a snap and will not do).
# Quiet unless something fails; exits 0 only when /usr/bin/chromium is there afterwards.
set -euo pipefail
CHROMIUM=/usr/bin/chromium
packages=()
[ -x "$CHROMIUM" ] || packages+=(chromium)
[ -e /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || packages+=(fonts-dejavu-core)
[ -e /usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf ] || packages+=(fonts-liberation)
if [ ${#packages[@]} -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    echo "install_browser.sh: missing ${packages[*]}; run this script as root on Debian," \
         "or: sudo apt-get install --no-install-recommends ${packages[*]}" >&2
    exit 1
fi
echo "Installing ${packages[*]} for the dashboard browser check (about a minute)..."
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -q && apt-get install -y -q --no-install-recommends "${packages[@]}"; } >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    echo "install_browser.sh: apt-get could not install ${packages[*]} (output above)" >&2
    exit 1
fi
if [ ! -x "$CHROMIUM" ]; then
    echo "install_browser.sh: apt-get finished but $CHROMIUM is missing" >&2
    exit 1
fi
