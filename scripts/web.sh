#!/usr/bin/env bash
# The web app in web/: `build` regenerates the protocol code and the bundle
# (web/dist, committed so `make run` needs no Node); `test` builds, checks
# the committed build is the one the sources make, runs the unit tests
# (vitest) and the end-to-end run in Debian's Chromium against a real node.
# Chromium and protoc are installed when missing; nothing downloads a browser.
set -euo pipefail
cd "$(dirname "$0")/.."

need_node() {
  if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    echo "web: Node.js 20+ and npm are needed to build or test the web app (Debian: apt-get install nodejs npm);" >&2
    echo "web: make run does not need them: it serves the committed build in web/dist" >&2
    exit 1
  fi
}

apt_install() {
  [ -n "${APT_UPDATED:-}" ] || { apt-get update -qq; APT_UPDATED=1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

build() {
  need_node
  command -v protoc >/dev/null || apt_install protobuf-compiler
  (cd web && npm ci --no-audit --no-fund --loglevel=error && npm run --silent build)
}

case "${1:-build}" in
  build)
    build
    ;;
  test)
    build
    built=(web/dist web/src/gen)
    if ! git diff --quiet -- "${built[@]}" || [ -n "$(git ls-files --others --exclude-standard -- "${built[@]}")" ]; then
      git status --short -- "${built[@]}" >&2
      echo "web: the committed web/dist or web/src/gen is not what the sources build: run scripts/web.sh build and commit" >&2
      exit 1
    fi
    (cd web && npx vitest run)
    command -v chromium >/dev/null || apt_install chromium
    cargo build --bin ourchat --bin ourchat-cli
    (cd web && OURCHAT_BIN_DIR=../target/debug node --test e2e/run.mjs)
    ;;
  *)
    echo "usage: scripts/web.sh build|test" >&2
    exit 2
    ;;
esac
