#!/usr/bin/env bash
# `make demo`: the main job on a generated model of a real shape (SmolLM2-135M, random weights,
# real Llama tokenizer). Saves a session for demo/system-prompt.txt once, then answers each question
# cold (decoding the whole system prompt) and warm (loading the session), and shows the timings and
# that both give the same text; then the same questions through a prefix store (--cache-dir), and
# through `kvstash serve` before and after a restart.
set -euo pipefail
build=${1:-build}
root=$(cd "$(dirname "$0")/.." && pwd)
kv="$root/$build/kvstash"
work="$root/$build/demo"
mkdir -p "$work"
model="$work/small-q8_0.gguf"
session="$work/system.kvs"
prefix="$root/demo/system-prompt.txt"
questions=(
  " Customer: When does the Seattle Harbor store open on Saturday? Atlas:"
  " Customer: Can I return custom-mixed paint? Atlas:"
  " Customer: What does Northwind Pro add for contractors? Atlas:"
)

[ -f "$model" ] || "$kv" make-test-model -o "$model" --shape small --type q8_0
echo "== kvstash demo: model $(basename "$model") (SmolLM2-135M shape, random weights), $(nproc) cores"
echo "-- save: decode the system prompt once"
"$kv" save -m "$model" --prefix-file "$prefix" -o "$session" -c 4096 --json >"$work/save.json"
python3 - "$work/save.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"   {d['n_tokens']} tokens -> {d['bytes']/2**20:.1f} MiB session; prefill {d['prefill_ms']:.0f} ms, save {d['save_ms']:.0f} ms")
PY
"$kv" inspect "$session" | sed 's/^/   /'

echo "-- answer each question cold (no session) and warm (--session): 24 tokens, temperature 0.7, seed 7"
all_same=1
for i in "${!questions[@]}"; do
  q=${questions[$i]}
  "$kv" run -m "$model" --prefix-file "$prefix" -p "$q" -n 24 --temp 0.7 --seed 7 --json >"$work/cold$i.json"
  "$kv" run -m "$model" --session "$session" -p "$q" -n 24 --temp 0.7 --seed 7 --json >"$work/warm$i.json"
  python3 - "$work/cold$i.json" "$work/warm$i.json" "$q" <<'PY' || all_same=0
import json, sys
cold, warm = (json.load(open(p)) for p in sys.argv[1:3])
same = cold["text"] == warm["text"] and cold["tokens"] == warm["tokens"]
print(f"   Q:{sys.argv[3].split('Atlas:')[0].replace(' Customer:', '')}")
print(f"     cold: decoded {cold['n_decoded_prompt_tokens']:5d} prompt tokens, time to first token {cold['ttft_ms']:7.1f} ms")
print(f"     warm: decoded {warm['n_decoded_prompt_tokens']:5d} prompt tokens, time to first token {warm['ttft_ms']:7.1f} ms"
      f" (load {warm['load_ms']:.1f} ms)  -> {cold['ttft_ms']/warm['ttft_ms']:.1f}x faster")
print(f"     same output: {'yes' if same else 'NO'}   {json.dumps(warm['text'][:60], ensure_ascii=False)}")
sys.exit(0 if same else 1)
PY
done
echo "-- the prefix store: no session file; every run restores what earlier runs computed"
store="$work/store"
rm -rf "$store"
for i in "${!questions[@]}"; do
  q=${questions[$i]}
  "$kv" run -m "$model" --cache-dir "$store" --prefix-file "$prefix" -p "$q" -n 24 --temp 0.7 --seed 7 --json >"$work/store$i.json"
  "$kv" run -m "$model" --cache-dir "$work/empty-store-$i" --prefix-file "$prefix" -p "$q" -n 24 --temp 0.7 --seed 7 --json >"$work/store-cold$i.json"
  rm -rf "$work/empty-store-$i"
  python3 - "$work/store-cold$i.json" "$work/store$i.json" "$q" <<'PY' || all_same=0
import json, sys
cold, warm = (json.load(open(p)) for p in sys.argv[1:3])
same = cold["text"] == warm["text"] and cold["tokens"] == warm["tokens"]
print(f"   Q:{sys.argv[3].split('Atlas:')[0].replace(' Customer:', '')}")
print(f"     store: reused {warm['n_reused_tokens']:5d}, decoded {warm['n_decoded_prompt_tokens']:5d} prompt tokens,"
      f" published {warm['n_published_tokens']:5d}; time to first token {warm['ttft_ms']:7.1f} ms"
      f" (empty store: {cold['ttft_ms']:.1f} ms)")
print(f"     same output as with an empty store: {'yes' if same else 'NO'}")
sys.exit(0 if same else 1)
PY
done
"$kv" cache stats --cache-dir "$store" | sed 's/^/   /'
"$kv" cache verify --cache-dir "$store" | sed 's/^/   /'
echo "-- kvstash serve: an OpenAI-compatible server on the same store; its cache survives a restart"
log="$work/serve.log"
serve() {  # starts the server on a free port; sets $port and $pid
  "$kv" serve -m "$model" --port 0 --cache-dir "$1" -c 8192 2>"$log" &
  pid=$!
  for _ in $(seq 1 300); do
    port=$(sed -n 's|.*listening on http://127.0.0.1:\([0-9]*\).*|\1|p' "$log")
    [ -n "$port" ] && curl -sf "http://127.0.0.1:$port/health" >/dev/null 2>&1 && return 0
    kill -0 "$pid" 2>/dev/null || { cat "$log"; return 1; }
    sleep 0.1
  done
  cat "$log"; return 1
}
ask() {  # prints cached tokens, time to first byte and the answer's start
  python3 - "$port" "$prefix" "$1" <<'PY'
import json, sys, time, urllib.request
port, prefix, q = sys.argv[1], open(sys.argv[2]).read(), sys.argv[3]
body = {"model": "demo", "max_tokens": 16, "temperature": 0,
        "messages": [{"role": "system", "content": prefix}, {"role": "user", "content": q}]}
req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", json.dumps(body).encode(),
                             {"Content-Type": "application/json"})
t = time.time()
d = json.load(urllib.request.urlopen(req))
u = d["usage"]
print(f"     {u['prompt_tokens']} prompt tokens, {u['prompt_tokens_details']['cached_tokens']:4d} cached, answered in {1000*(time.time()-t):6.0f} ms: "
      + json.dumps(d["choices"][0]["message"]["content"][:40], ensure_ascii=False))
PY
}
sstore="$work/serve-store"
rm -rf "$sstore"
serve "$sstore"
echo "   started on port $port (empty store); the same system prompt, two questions:"
ask "When does the Seattle Harbor store open on Saturday?"
ask "Can I return custom-mixed paint?"
kill -TERM "$pid"; wait "$pid"
serve "$sstore"
echo "   restarted (SIGTERM, then a new process on the same store); a new question:"
ask "What does Northwind Pro add for contractors?"
kill -TERM "$pid"; wait "$pid"
echo "-- (random weights make the text gibberish; what matters is that warm == cold, bit for bit)"
[ $all_same -eq 1 ] && echo "== demo ok: warm and cold outputs are identical" || { echo "== demo FAILED: outputs differ"; exit 1; }
