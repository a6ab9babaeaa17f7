#!/usr/bin/env bash
# Render an explain report in headless Chromium and save a screenshot: checks that
# report.html is self-contained and opens offline. Needs Debian's chromium:
#   apt-get install -y chromium
# Usage: docs/render_report.sh RUN-explain/report.html docs/explain-report.png
set -euo pipefail
report=$(realpath "$1")
shot=$(realpath -m "${2:-docs/explain-report.png}")
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --window-size=1200,2600 --screenshot="$shot" "file://$report" \
  2>/dev/null
echo "screenshot: $shot"
