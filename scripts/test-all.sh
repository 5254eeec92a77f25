#!/usr/bin/env bash
# Runs every check and every test of rhtmx-sync: lints, docs, Rust unit/integration/UI
# tests and the browser tests. Installs what it needs on a fresh Debian machine
# (the Rust toolchain aside). Usage: ./scripts/test-all.sh
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

# System packages: Debian's Chromium (driven by playwright-core) and Node.js for the
# browser tests, PostgreSQL for the PostgreSQL backend. Installed only when missing.
need=()
command -v chromium >/dev/null || need+=(chromium)
command -v node >/dev/null || need+=(nodejs)
command -v npm >/dev/null || need+=(npm)
# PostgreSQL for the tests of the PostgreSQL backend: each test binary starts its own
# throwaway server from these binaries (tests/pg/mod.rs), as the `postgres` user when
# run as root (initdb refuses root).
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || need+=(postgresql)
if [ ${#need[@]} -gt 0 ]; then
  echo "==> installing ${need[*]}"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}" >/dev/null
fi

# A clean build gains nothing from incremental state, which would double the disk used.
export CARGO_INCREMENTAL=0

echo "==> JS tooling (npm ci)"
(cd js && npm ci --no-audit --no-fund --loglevel=error)

echo "==> cargo fmt / clippy / doc"
cargo fmt --all --check
cargo clippy --workspace --all-targets --all-features -- -D warnings
# Each database alone (an app may leave the other out).
cargo clippy -p rhtmx-sync --no-default-features --features sqlite -- -D warnings
cargo clippy -p rhtmx-sync --no-default-features --features postgres -- -D warnings
RUSTDOCFLAGS=-Dwarnings cargo doc --no-deps --workspace

echo "==> Rust tests"
cargo test --workspace --all-targets --all-features
cargo test --workspace --doc --all-features

echo "==> browser tests (headless Chromium)"
cargo build --examples --all-features
(cd js && npm test)
