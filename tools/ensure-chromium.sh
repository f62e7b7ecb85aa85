#!/usr/bin/env bash
# The browser tests (pytest -m browser) drive Debian's Chromium through Playwright (installed by
# the `test` extra); Playwright's own browser download cannot work offline. Install Chromium when
# it is missing (this machine kind runs as root; sudo otherwise); quiet and idempotent.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || [ -n "${MECHTRUNC_CHROMIUM:-}" ]; then
    exit 0
fi
echo "setup: installing Debian's chromium for the browser tests"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    chromium fonts-liberation fonts-dejavu-core >/dev/null
