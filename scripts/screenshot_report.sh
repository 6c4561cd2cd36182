#!/usr/bin/env bash
# Screenshot a run's report.html in headless Chromium (Debian: apt-get install chromium), to check that the page
# renders and shows its figures in a real browser. Not part of `make test` (CI has only Python).
#   scripts/screenshot_report.sh RUN_FOLDER [OUT.png]     (default OUT: RUN_FOLDER/report.png)
set -euo pipefail
run="${1:?usage: scripts/screenshot_report.sh RUN_FOLDER [OUT.png]}"
out="${2:-$run/report.png}"
page="$(cd "$run" && pwd)/report.html"
[ -f "$page" ] || { echo "error: $page not found (da report $run writes it)" >&2; exit 2; }
browser="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
[ -n "$browser" ] || { echo "error: no chromium on PATH (apt-get install chromium)" >&2; exit 2; }
"$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size=1400,4200 \
  --screenshot="$out" "file://$page" 2>/dev/null
[ -s "$out" ] || { echo "error: chromium wrote no screenshot" >&2; exit 1; }
echo "$out"
