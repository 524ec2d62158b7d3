#!/usr/bin/env bash
# The browser tests: real headless Chromium (Debian's /usr/bin/chromium, never a
# downloaded build) driven by playwright-core against the demo example (a broker
# embedded through the library, with the demo world: examples/demo).
#
#   tests/browser/run.sh                    build target/debug/examples/demo, run every test
#   tests/browser/run.sh offline.test.mjs   run one file (paths relative to tests/browser)
#   MYTHOS_DEMO_BIN=target/release/examples/demo tests/browser/run.sh   test that binary, no build
#   CHROMIUM=/path/to/chromium              another Chromium executable
#
# The Redis restart test also needs redis-server (it fails, saying so, without it).
# Screenshots go to test-artifacts/ (git-ignored).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"

chromium="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$chromium" ]; then
  echo "browser tests: no Chromium at $chromium." >&2
  echo "  install Debian's: apt-get update && apt-get install -y chromium   (or set CHROMIUM=/path/to/chromium)" >&2
  exit 1
fi
export CHROMIUM="$chromium"
if ! command -v node >/dev/null; then
  echo "browser tests: node >= 20 is required" >&2
  exit 1
fi

if [ -z "${MYTHOS_DEMO_BIN:-}" ]; then
  (cd "$root" && cargo build --quiet --example demo)
  export MYTHOS_DEMO_BIN="$root/target/debug/examples/demo"
else
  MYTHOS_DEMO_BIN="$(cd "$(dirname "$MYTHOS_DEMO_BIN")" && pwd)/$(basename "$MYTHOS_DEMO_BIN")"
  export MYTHOS_DEMO_BIN
fi

cd "$here"
if [ ! -d node_modules/playwright-core ]; then
  npm ci --no-audit --no-fund
fi
if [ $# -eq 0 ]; then
  set -- *.test.mjs
fi
exec node --test --test-concurrency=1 "$@"
