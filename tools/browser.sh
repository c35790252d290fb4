#!/usr/bin/env bash
# What `make browser` runs (and `make test` before the tests): the report's test renders the production page
# in headless Chromium. A browser already installed is used as it is; otherwise Debian's chromium is installed,
# as root or through sudo. The names are the ones tests/test_report.py looks for.
set -euo pipefail
for b in chromium chromium-browser google-chrome; do
    if command -v "$b" >/dev/null; then exit 0; fi
done
if ! command -v apt-get >/dev/null; then
    echo "no headless browser (chromium, chromium-browser, google-chrome) and no apt-get: install Chromium" >&2
    exit 1
fi
as_root=()
if [ "$(id -u)" != 0 ]; then as_root=(sudo); fi
echo "no headless browser found: installing Debian's chromium"
"${as_root[@]}" apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
command -v chromium
