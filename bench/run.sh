#!/usr/bin/env bash
# The load benchmark (issue 13): the hub against a bare axum + sqlx handler, pgbench and
# PostgreSQL's new-connection ceiling, in one run; prints one Markdown table.
# Needs: the PostgreSQL server binaries (as for the tests), wrk (Debian: apt-get install wrk),
# and for BENCH_PERF, perf (linux-perf). Settings: see examples/bench.rs.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v wrk >/dev/null; then
    echo "bench/run.sh needs wrk (Debian: apt-get install wrk)" >&2
    exit 1
fi
cargo build --release --locked --bin kataven-hub --example bench_bare --example bench
target="${CARGO_TARGET_DIR:-$PWD/target}"
BENCH_BIN_DIR="$target/release" exec "$target/release/examples/bench" "$@"
