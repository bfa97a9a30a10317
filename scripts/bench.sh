#!/usr/bin/env bash
# `make bench`: the standard benchmark set, PNG charts, the CLI end to end against llama.cpp's
# llama-completion --prompt-cache, the prefix store (kvstash-store-bench), each memory kind
# (kvstash-family-bench), and `kvstash serve`
# against llama-server (bench/serve_bench.py). Results land in
# $build/bench-results/.
#   scripts/bench.sh [build-dir]      BENCH_QUICK=1 for a 2-minute smoke run, BENCH_ARGS="..." to
#                                     pass kvstash-bench's flags yourself
set -euo pipefail
build=${1:-build}
root=$(cd "$(dirname "$0")/.." && pwd)
out="$root/$build/bench-results"
work="$root/$build/bench-work"
mkdir -p "$out" "$work"
bench="$root/$build/bench/kvstash-bench"
kv="$root/$build/kvstash"

if [ -n "${BENCH_ARGS:-}" ]; then
  read -r -a args <<<"$BENCH_ARGS"   # e.g. BENCH_ARGS="--shapes small --cold-reps 1"
elif [ "${BENCH_QUICK:-0}" = 1 ]; then
  args=(--shapes small --prefix-lengths 512,2048 --cache-types f16 --reps 3 --cold-reps 3)
else
  args=(--shapes small,bench --prefix-lengths 512,2048,8192 --max-bench-prefix 2048
        --cache-types f16,q8_0 --reps 5 --cold-reps 5)
fi

# llama-completion and llama-server from the same pinned tree and the same CPU flags, only for the
# comparisons (CLI, server). Rebuilt when a binary is missing or kvstash's CPU flags changed. They
# keep llama.cpp's own matmul (GGML_LLAMAFILE on, its default), as their users run them: kvstash's
# batch-invariant build gives that up (docs/SERVER.md), and the comparison shows what it costs.
tools="$root/build-llama-tools"
# cmake/llama.cmake records the CPU options it gave ggml as KVSTASH_GGML_CPU_DEFINES.
flags=$(sed -n 's/^KVSTASH_GGML_CPU_DEFINES:INTERNAL=//p' "$root/$build/CMakeCache.txt")
[ -n "$flags" ] || { echo "bench: $build/CMakeCache.txt has no KVSTASH_GGML_CPU_DEFINES; reconfigure kvstash (make build) with the pinned llama.cpp" >&2; exit 1; }
flags+=" -DGGML_LLAMAFILE=ON "
need=()
[ -x "$tools/bin/llama-completion" ] || need+=(llama-completion)
[ -x "$tools/bin/llama-server" ] || need+=(llama-server)
if [ "$(cat "$tools/kvstash-flags" 2>/dev/null)" != "$flags" ]; then need=(llama-completion llama-server); fi
if [ ${#need[@]} -gt 0 ]; then
  # shellcheck disable=SC2086
  cmake -S "$root/third_party/llama.cpp" -B "$tools" -DCMAKE_BUILD_TYPE=Release $flags \
    -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_APP=OFF \
    -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
    -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_COMMON=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF >"$out/llama-tools-build.log" 2>&1
  echo "== building ${need[*]} for the comparisons (log: $out/llama-tools-build.log)"
  cmake --build "$tools" -j "$(nproc)" --target "${need[@]}" >>"$out/llama-tools-build.log" 2>&1
  printf '%s' "$flags" >"$tools/kvstash-flags"
fi

echo "== kvstash-bench ${args[*]}"
"$bench" "${args[@]}" --dir "$work" --json "$out/bench.json" | tee "$out/bench.md"

echo "== CLI end to end: a ~3000-token prompt, 16 tokens greedy"
model="$work/small-q8_0.gguf"
[ -f "$model" ] || "$kv" make-test-model -o "$model" --shape small --type q8_0
prefix="$work/prefix-3k.txt"
cat "$root/demo/system-prompt.txt" "$root/demo/system-prompt.txt" "$root/demo/system-prompt.txt" |
  head -c 10500 >"$prefix"
question=" Customer: Can I rent a tile saw for the weekend? Atlas:"
{ cat "$prefix"; printf '%s' "$question"; } >"$work/full-prompt.txt"
"$kv" save -m "$model" --prefix-file "$prefix" -o "$work/cli.kvs" -c 4096 --json >"$out/cli-save.json"
# llama.cpp's cache is made from the prefix alone, like kvstash's session, so both decode the question.
rm -f "$work/cli.llama"
"$tools/bin/llama-completion" -m "$model" -f "$prefix" --prompt-cache "$work/cli.llama" \
  -n 1 --temp 0 -c 4096 -no-cnv >/dev/null 2>&1 || true
python3 - "$kv" "$tools/bin/llama-completion" "$model" "$work" "$question" "$out" <<'PY'
import json, os, statistics, subprocess, sys, time
kv, llama, model, work, question, out = sys.argv[1:]
def timed(cmd, reps=5):
    subprocess.run(cmd, capture_output=True)  # warm-up
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True)
        times.append(1000 * (time.perf_counter() - t))
        if r.returncode != 0:
            sys.exit(f"failed: {' '.join(cmd)}\n{r.stderr.decode()[-2000:]}")
    return statistics.median(times)
rows = {
  "kvstash run --session (warm)": [kv, "run", "-m", model, "--session", f"{work}/cli.kvs", "-p", question, "-n", "16", "--temp", "0"],
  "llama-completion --prompt-cache (warm)": [llama, "-m", model, "-f", f"{work}/full-prompt.txt", "--prompt-cache", f"{work}/cli.llama", "--prompt-cache-ro", "-n", "16", "--temp", "0", "-c", "4096", "-no-cnv"],
  "kvstash run (cold, no session)": [kv, "run", "-m", model, "--prefix-file", f"{work}/prefix-3k.txt", "-p", question, "-n", "16", "--temp", "0"],
}
result = {name: timed(cmd) for name, cmd in rows.items()}
tokens = json.load(open(f"{out}/cli-save.json"))["n_tokens"]
print(f"\n### CLI end to end (median of 5 wall-clock runs, {tokens}-token prefix, 16 tokens generated)\n")
print("| command | ms |\n|---|---|")
for name, ms in result.items():
    print(f"| {name} | {ms:.0f} |")
warm, llama_ms = result["kvstash run --session (warm)"], result["llama-completion --prompt-cache (warm)"]
print(f"\nllama-completion / kvstash: {llama_ms / warm:.2f}x")
# What `run` reports as load_ms (Open as a whole: file, checks, context, restore) against one plain
# read of the session file's bytes into a buffer, page cache hot; medians of 5.
session = f"{work}/cli.kvs"
loads = []
for _ in range(6):
    r = subprocess.run([kv, "run", "-m", model, "--session", session, "-p", question, "-n", "16",
                        "--temp", "0", "--json"], capture_output=True, check=True)
    loads.append(json.loads(r.stdout)["load_ms"])
size = os.path.getsize(session)
buf = bytearray(size)
reads = []
for _ in range(6):
    t = time.perf_counter()
    with open(session, "rb", buffering=0) as f:
        f.readinto(buf)
    reads.append(1000 * (time.perf_counter() - t))
load_ms, read_ms = statistics.median(loads[1:]), statistics.median(reads[1:])
print(f"\nCLI warm load_ms {load_ms:.1f} ms vs one read of the {size / 2**20:.1f} MiB session file "
      f"{read_ms:.1f} ms: {load_ms / read_ms:.2f}x (target <= 2x)")
result["cli_load_ms"], result["read_session_file_ms"] = load_ms, read_ms
json.dump(result, open(f"{out}/cli.json", "w"), indent=2)
PY
echo "== kvstash-store-bench: dedup, restore from chunks, TTFT per turn, cost of aligned decoding, Redis"
store_args=()
[ "${BENCH_QUICK:-0}" = 1 ] && store_args=(--quick)
# The Redis tier against a redis-server of its own on a free loopback port (emptied by the bench).
redis_dir=$(mktemp -d)
redis_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
if command -v redis-server >/dev/null; then
  redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$redis_dir" --save "" --appendonly no \
    --loglevel warning >/dev/null 2>&1 &
  redis_pid=$!
  sleep 0.5
  store_args+=(--redis "redis://127.0.0.1:$redis_port")
fi
"$root/$build/bench/kvstash-store-bench" "${store_args[@]}" --dir "$work/store" \
  --system-prompt "$root/demo/system-prompt.txt" --json "$out/store.json" | tee "$out/store.md"
[ -n "${redis_pid:-}" ] && { kill "$redis_pid"; wait "$redis_pid" 2>/dev/null; }
rm -rf "$redis_dir"

python3 "$root/scripts/bench_chart.py" "$out/bench.json" "$out" "$out/store.json" &&
  ls "$out"/*.png 2>/dev/null | sed "s/^/chart: /" || true

echo "== kvstash serve vs llama-server: repeated system prompt, restart, 4 clients, multi-turn"
serve_args=()
[ "${BENCH_QUICK:-0}" = 1 ] && serve_args=(--quick)
python3 "$root/bench/serve_bench.py" "${serve_args[@]}" --kvstash "$kv" --llama-server "$tools/bin/llama-server" \
  --model "$model" --work "$work/serve" --out "$out"

# Last: a family whose run fails (it ends the script) leaves every other result in place.
echo "== kvstash-family-bench: sessions and the store for llama, gemma3 (iSWA), lfm2 (hybrid), mamba2"
family_args=(--shape small --prefix-lengths 2048,8192)
[ "${BENCH_QUICK:-0}" = 1 ] && family_args=(--shape small --prefix-lengths 512,2048)
"$root/$build/bench/kvstash-family-bench" "${family_args[@]}" --dir "$work/family" \
  --json "$out/family.json" | tee "$out/family.md"
