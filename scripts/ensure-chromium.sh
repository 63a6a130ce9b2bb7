#!/bin/sh
# Debian's chromium and chromium-driver for the dashboard's browser test (tests/test_dashboard_browser.py).
# Idempotent and quiet: does nothing when /usr/bin/chromium is there; installs with apt-get otherwise
# (needs root, as on CI and the developers' machines). Playwright never downloads a browser of its own.
set -e
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "ensure-chromium: /usr/bin/chromium is missing; run as root: apt-get install -y chromium chromium-driver" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
