#!/usr/bin/env bash
# Builds and runs kvstash's three libFuzzer harnesses with clang (libFuzzer + ASan + UBSan), seeded
# with valid inputs and every regression input of their kind:
#   session_reader_fuzz  the container, payload and chunk-file parsers on raw bytes (SECONDS/2)
#   session_open_fuzz    a custom mutator recomputes every checksum after each mutation, so inputs
#                        reach the range checks, the model checks and llama.cpp's restore (SECONDS)
#   request_fuzz         the server's OpenAI request parser and response renderers on any body,
#                        with a dictionary of field names (SECONDS/4)
# The second links the Release build in build/ (make test builds it first). A crash is saved under
# tests/fuzz/regressions/ (tests/fuzz/regressions-request/ for request_fuzz; commit it) and fails
# the run.
set -euo pipefail
seconds=${1:-60}  # usage: fuzz.sh [SECONDS] [BUILD_DIR]
root=$(cd "$(dirname "$0")/.." && pwd)
build=$(cd "${2:-$root/build}" && pwd)
out="$root/build-fuzz"
mkdir -p "$out/corpus" "$out/corpus-request" "$root/tests/fuzz/regressions" \
  "$root/tests/fuzz/regressions-request"
command -v clang++ >/dev/null || { echo "fuzz: clang++ is missing: apt-get install clang libclang-rt-14-dev" >&2; exit 1; }
[ -f "$build/libkvstash.a" ] || { echo "fuzz: $build/libkvstash.a is missing: run 'make build' first" >&2; exit 1; }

flags=(-std=c++17 -O1 -g -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=all
       -I"$root/include" -I"$root/src" -I"$root/third_party/llama.cpp/include"
       -I"$root/third_party/llama.cpp/ggml/include")
format_srcs=("$root"/src/format/*.cc)
reader="$out/session_reader_fuzz"
opener="$out/session_open_fuzz"
newer() { [ ! -x "$1" ] || [ -n "$(find "${@:2}" -newer "$1" 2>/dev/null | head -1)" ]; }
if newer "$reader" "$root/tests/fuzz/session_reader_fuzz.cc" "$root/src/format" "$root/include"; then
  clang++ "${flags[@]}" "$root/tests/fuzz/session_reader_fuzz.cc" "${format_srcs[@]}" -lxxhash -o "$reader"
fi
# The protocol harness needs only src/server/protocol.cc, the stream cutter
# (src/engine/stop_matcher.cc) and nlohmann-json's headers.
requester="$out/request_fuzz"
if newer "$requester" "$root/tests/fuzz/request_fuzz.cc" "$root/src/server" "$root/src/engine/stop_matcher.cc" "$root/include"; then
  clang++ "${flags[@]}" "$root/tests/fuzz/request_fuzz.cc" "$root/src/server/protocol.cc" \
    "$root/src/engine/stop_matcher.cc" -o "$requester"
fi
# The engine and llama.cpp come from the Release build (not instrumented: coverage guidance is for
# kvstash's own checks, compiled here); the format code is compiled here, instrumented.
libs=("$build/libkvstash.a" "$build/libkvstash_env.a" "$build/src/testmodel/libkvstash_testmodel.a"
      "$build/llama.cpp/src/libllama.a" "$build/llama.cpp/ggml/src/libggml.a"
      "$build/llama.cpp/ggml/src/libggml-cpu.a" "$build/llama.cpp/ggml/src/libggml-base.a")
if newer "$opener" "$root/tests/fuzz/session_open_fuzz.cc" "$root/src/format" "$root/include" "${libs[@]}"; then
  clang++ "${flags[@]}" "$root/tests/fuzz/session_open_fuzz.cc" "${format_srcs[@]}" "${libs[@]}" \
    -lxxhash -lcrypto -lhiredis -lgomp -lpthread -ldl -lm -o "$opener"
fi

# Seeds: valid sessions (plain, q8_0 cache, no flash attention) from the built CLI, on the model
# make-test-model writes by default (the one session_open_fuzz loads).
kv="$build/kvstash"
if [ -x "$kv" ] && [ ! -f "$out/corpus/plain.kvs" ]; then
  "$kv" make-test-model -o "$out/seed.gguf" >/dev/null
  "$kv" save -m "$out/seed.gguf" --prefix "A q8_0 seed." -o "$out/corpus/q8.kvs" -c 256 \
    --cache-type-k q8_0 --cache-type-v q8_0 >/dev/null || echo "fuzz: no q8_0 seed" >&2
  "$kv" save -m "$out/seed.gguf" --prefix "No flash attention." -o "$out/corpus/nofa.kvs" -c 256 \
    -fa off >/dev/null || echo "fuzz: no flash-attention-off seed" >&2
  "$kv" save -m "$out/seed.gguf" --prefix "Seed prefix for the fuzzer." -o "$out/corpus/plain.kvs" \
    -c 256 >/dev/null || echo "fuzz: no plain seed" >&2
  # Chunk files of a prefix store (16-token chunks keep them small), with and without flash attention.
  for fa in on off; do
    "$kv" run -m "$out/seed.gguf" --cache-dir "$out/seed-store-$fa" --cache-chunk 16 -fa $fa \
      --prefix "Chunk seeds for the fuzzer: a prefix long enough for two chunks of sixteen." \
      -p " Question?" -n 1 >/dev/null 2>&1 || echo "fuzz: no chunk seeds (-fa $fa)" >&2
    find "$out/seed-store-$fa/chunks" -name '*.kvc' -exec cp {} "$out/corpus/" \; 2>/dev/null || true
    rm -rf "$out/seed-store-$fa"
  done
  rm -f "$out/seed.gguf"
fi
# Sessions of the other memory kinds (format/llama_state.h): iSWA (gemma2, a prompt past its 64-token
# window, so the window holds the last 64 of its cells), recurrent (mamba2) and hybrid (lfm2, S
# rows of 0 bytes). Then the KV payloads of these and of plain.kvs alone, whole and as snapshots
# (the header and the last part), behind the two bytes (kind | snapshot << 2, window) with which
# session_reader_fuzz reads raw payloads.
if [ -x "$kv" ] && [ ! -f "$out/corpus/hybrid.kvs" ]; then
  long=$(printf 'seed%d ' $(seq 40))
  for pair in gemma2:iswa mamba2:recurrent lfm2:hybrid; do
    arch=${pair%%:*} name=${pair#*:}
    { "$kv" make-test-model --arch "$arch" -o "$out/seed-$arch.gguf" >/dev/null &&
      "$kv" save -m "$out/seed-$arch.gguf" --prefix "$long" -o "$out/corpus/$name.kvs" -c 256 \
        >/dev/null; } || echo "fuzz: no $name seed" >&2
    rm -f "$out/seed-$arch.gguf"
  done
  python3 - "$out/corpus" <<'PY' || echo "fuzz: no raw payload seeds" >&2
import os, struct, sys
corpus = sys.argv[1]

def kv_part_end(b, at):  # a KV part from its n_stream field (docs/FORMAT.md, "KV (type 4)")
    n_stream, cells = struct.unpack_from("<II", b, at)
    at += 8 + 12 * cells
    v_trans, n_layer = struct.unpack_from("<II", b, at)
    at += 8
    for _ in range(n_layer):
        row = struct.unpack_from("<Q", b, at + 4)[0]
        at += 12 + cells * row
    for _ in range(n_layer):
        if v_trans:
            elem, n_embd = struct.unpack_from("<II", b, at + 4)
            at += 12 + n_embd * cells * elem
        else:
            at += 12 + cells * struct.unpack_from("<Q", b, at + 4)[0]
    return at

for name, kind, n_swa in (("plain", 0, 0), ("iswa", 1, 64), ("recurrent", 2, 0), ("hybrid", 3, 0)):
    path = os.path.join(corpus, name + ".kvs")
    if not os.path.exists(path):
        continue
    f = open(path, "rb").read()
    n = struct.unpack_from("<I", f, 20)[0]
    for i in range(n):
        kind_of_section, _, off, size = struct.unpack_from("<IIQQ", f, 64 + 32 * i)
        if kind_of_section == 4:
            kv = f[off:off + size]
    open(os.path.join(corpus, "raw-" + name), "wb").write(bytes([kind, n_swa]) + kv)
    # A snapshot: iSWA and hybrid states without their first (attention) part.
    if kind in (1, 3):
        last = kv_part_end(kv, 8)
        open(os.path.join(corpus, "raw-" + name + "-snapshot"), "wb").write(
            bytes([kind | 4, n_swa]) + kv[:8] + kv[last:])
PY
fi
# llama.cpp files for the import parser: llama-completion's --prompt-cache file of the tiny test
# model and the same cache as a sequence file.
cp -n "$root"/tests/fuzz/llama-seeds/* "$out/corpus/"
mkdir -p "$out/corpus-open"
# Request seeds: one valid body per shape the parser accepts (chat with text parts and every
# sampling field, a streamed chat, a text prompt, a token prompt) and one it refuses by name.
seed() { [ -f "$out/corpus-request/$1" ] || printf '%s' "$2" >"$out/corpus-request/$1"; }
seed chat.json '{"model":"m","messages":[{"role":"developer","content":"Be brief."},{"role":"user","content":[{"type":"text","text":"Hi \u00e9"}]},{"role":"assistant","content":null}],"max_completion_tokens":16,"temperature":0.7,"top_p":0.9,"seed":42,"n":1,"stop":["\n","END"]}'
seed stream.json '{"messages":[{"role":"user","content":"x"}],"stream":true,"stream_options":{"include_usage":true},"logprobs":false,"response_format":{"type":"text"}}'
seed completion.json '{"model":"m","prompt":"Once upon a time","max_tokens":8,"stop":".","echo":false,"best_of":1}'
seed tokens.json '{"prompt":[1,2,3,2147483647],"max_tokens":1.0}'
seed tools.json '{"messages":[{"role":"tool","content":"x"}],"tools":[{"type":"function"}]}'
cp -n "$out"/corpus/*.kvs "$out/corpus-open/" 2>/dev/null || true

failed=0
run() {  # name binary seconds corpus [regressions dir [more libFuzzer flags]]
  local name=$1 bin=$2 secs=$3 corpus=$4 log="$out/$1.log" rc
  local regressions=${5:-$root/tests/fuzz/regressions}
  set +e
  KVSTASH_FUZZ_DIR="$out" "$bin" "$corpus" "$regressions" -max_total_time="$secs" \
    -max_len=200000 -rss_limit_mb=4096 -timeout=30 -artifact_prefix="$regressions/" \
    -print_final_stats=1 "${@:6}" >"$log" 2>&1
  rc=$?
  set -e
  local execs
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  echo "fuzz: $name, ${secs}s, $execs executions, exit $rc (log: $log)"
  grep -h '^semantic fuzz:' "$log" | tail -1 || true
  if [ $rc -ne 0 ]; then tail -40 "$log"; failed=$((failed + 1)); fi
}
run session_reader "$reader" $((seconds / 2 > 0 ? seconds / 2 : 1)) "$out/corpus"
run session_open "$opener" "$seconds" "$out/corpus-open"
# Request bodies: 16 KiB is ample for every branch (the parser's limits are per field, not per body).
run request "$requester" $((seconds / 4 > 0 ? seconds / 4 : 1)) "$out/corpus-request" \
  "$root/tests/fuzz/regressions-request" -max_len=16384 -dict="$root/tests/fuzz/request.dict"
echo "fuzz: $((3 - failed)) passed, $failed failed"
[ $failed -eq 0 ]
