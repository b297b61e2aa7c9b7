#!/usr/bin/env bash
# Debian's headless Chromium and its chromedriver for the console's browser tests (tests/console/test_browser.py),
# installed from the distribution when missing; never a browser download of a test tool's own.
set -u
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
  echo "Chromium: $(chromium --version 2>/dev/null)"
  exit 0
fi
echo "installing chromium and chromium-driver"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends chromium chromium-driver fonts-dejavu-core >/dev/null \
  || echo "could not install chromium: the browser tests will fail under CI=true"
command -v chromium >/dev/null && echo "Chromium: $(chromium --version 2>/dev/null)"
exit 0
