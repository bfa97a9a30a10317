#!/usr/bin/env bash
# Builds the session-reader fuzzer with clang (libFuzzer + ASan + UBSan) and runs it for SECONDS
# (default 60), seeded with valid session files and every regression input in tests/fuzz/regressions.
# A crash is saved under tests/fuzz/regressions/ (commit it) and fails the run.
set -euo pipefail
seconds=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/build-fuzz"
mkdir -p "$out/corpus" "$root/tests/fuzz/regressions"
command -v clang++ >/dev/null || { echo "fuzz: clang++ is missing: apt-get install clang libclang-rt-14-dev" >&2; exit 1; }

bin="$out/session_reader_fuzz"
srcs=("$root/tests/fuzz/session_reader_fuzz.cc" "$root/src/format/session_format.cc" "$root/src/format/llama_state.cc" "$root/src/format/meta_check.cc")
if [ ! -x "$bin" ] || [ -n "$(find "${srcs[@]}" "$root/src/format" -newer "$bin" 2>/dev/null)" ]; then
  clang++ -std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all \
    -I"$root/include" -I"$root/src" "${srcs[@]}" -lxxhash -o "$bin"
fi

# Seeds: valid sessions (plain, q8_0 cache, no flash attention) from the built CLI, when present.
kv="$root/build/kvstash"
if [ -x "$kv" ] && [ ! -f "$out/corpus/plain.kvs" ]; then
  "$kv" make-test-model -o "$out/seed.gguf" >/dev/null
  "$kv" save -m "$out/seed.gguf" --prefix "A q8_0 seed." -o "$out/corpus/q8.kvs" -c 256 \
    --cache-type-k q8_0 --cache-type-v q8_0 >/dev/null || echo "fuzz: no q8_0 seed" >&2
  "$kv" save -m "$out/seed.gguf" --prefix "No flash attention." -o "$out/corpus/nofa.kvs" -c 256 \
    -fa off >/dev/null || echo "fuzz: no flash-attention-off seed" >&2
  "$kv" save -m "$out/seed.gguf" --prefix "Seed prefix for the fuzzer." -o "$out/corpus/plain.kvs" \
    -c 256 >/dev/null || echo "fuzz: no plain seed" >&2
  rm -f "$out/seed.gguf"
fi

log="$out/fuzz.log"
set +e
"$bin" "$out/corpus" "$root/tests/fuzz/regressions" -max_total_time="$seconds" -max_len=200000 \
  -rss_limit_mb=2048 -artifact_prefix="$root/tests/fuzz/regressions/crash-" -print_final_stats=1 >"$log" 2>&1
rc=$?
set -e
execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
echo "fuzz: session reader, ${seconds}s, $execs executions, exit $rc (log: $log)"
if [ $rc -ne 0 ]; then tail -40 "$log"; echo "fuzz: 0 passed, 1 failed"; exit 1; fi
echo "fuzz: 1 passed, 0 failed"
