#!/usr/bin/env bash
# Runs every rhtmx-sync benchmark and prints one Markdown table of results, baselines,
# ratios and targets (see BENCHMARKS.md for the method).
#
#   ./scripts/bench.sh                 # quick suite (a few minutes on 2 cores)
#   ./scripts/bench.sh --full          # the big sizes: 10k SSE clients, 1M-row pulls, more repetitions
#   ./scripts/bench.sh --only write,ingest,fanout,pull,postgres,browser,compaction,integrity,backup
#
# Not part of the test run (scripts/test-all.sh only compiles the bench binary, and runs
# it without `--bench`, when it exits at once). Network traffic stays on 127.0.0.1.
# The table also goes to target/bench/report.md, the raw rows to target/bench/results.jsonl.
set -euo pipefail
cd "$(dirname "$0")/.."

full=""
only=""
while [ $# -gt 0 ]; do
  case "$1" in
    --full) full="--full" ;;
    --only) only="$2"; shift ;;
    --only=*) only="${1#--only=}" ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
wants() { [ -z "$only" ] || [[ ",$only," == *",$1,"* ]] || [[ ",$only," == *",$1:"* ]]; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
if wants browser; then
  # Same prerequisites as the browser tests (scripts/test-all.sh).
  need=()
  command -v chromium >/dev/null || need+=(chromium)
  command -v node >/dev/null || need+=(nodejs)
  command -v npm >/dev/null || need+=(npm)
  if [ ${#need[@]} -gt 0 ]; then
    echo "==> installing ${need[*]}" >&2
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  [ -d js/node_modules/playwright-core ] || (cd js && npm ci --no-audit --no-fund --loglevel=error)
fi

if wants postgres && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
  # The PostgreSQL section starts a throwaway server from these binaries.
  echo "==> installing postgresql" >&2
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >/dev/null
fi

echo "==> building the bench binary (release)" >&2
bin=$(cargo bench --bench sync --no-run --message-format=json-render-diagnostics \
  | node -e '
      let exe = "";
      for (const line of require("fs").readFileSync(0, "utf8").split("\n")) {
        if (!line.startsWith("{")) continue;
        const m = JSON.parse(line);
        if (m.reason === "compiler-artifact" && m.target.name === "sync" && m.executable) exe = m.executable;
      }
      if (!exe) process.exit(1);
      console.log(exe);')

out=target/bench
mkdir -p "$out"
results="$out/results.jsonl"
rm -f "$results"

rust_only=""
for part in write ingest fanout pull postgres compaction integrity; do
  if [ -z "$only" ]; then rust_only="all"; break; fi
  for o in ${only//,/ }; do
    if [ "$o" = "$part" ] || [[ "$o" == "$part:"* ]]; then rust_only="$rust_only,$o"; fi
  done
done
if [ "$rust_only" = "all" ]; then
  "$bin" --bench $full --out "$results"
elif [ -n "$rust_only" ]; then
  "$bin" --bench $full --only "${rust_only#,}" --out "$results"
fi
if wants browser; then
  (cd js && node bench/browser.js --bin "$bin" $full --out "../$results")
fi
if wants backup; then
  # Backups, restores and bundles against s3s-fs on 127.0.0.1 (rhtmx-sync-backup).
  echo "==> backups (release)" >&2
  cargo bench -p rhtmx-sync-backup --bench backup -- --out "$(pwd)/$results"
fi

{
  echo "## Results ($(date -u +%Y-%m-%d), $( [ -n "$full" ] && echo full || echo quick ) run)"
  echo
  echo "Machine: $(nproc) cores ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')), $(free -h | awk '/^Mem:/{print $2}') RAM, $(uname -sr)."
  echo
  "$bin" --report "$results"
} | tee "$out/report.md"
