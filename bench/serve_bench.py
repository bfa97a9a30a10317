#!/usr/bin/env python3
"""`kvstash serve` against llama.cpp's llama-server, both talking OpenAI chat completions.

Starts each server itself on a free port with the same model, context, --parallel, threads and
KV cache types (f16), each with its own default flash attention (kvstash: off, which keeps answers
independent of load; llama-server: auto, which is on for the CPU; --llama-fa changes it), streams
every answer (greedy, temperature 0) and measures:

  1. repeated system prompt: one ~3,000-token system prompt, 10 different short questions in a
     row; TTFT p50/p95 (after one priming request that both pay cold). llama-server keeps the
     prompt in its slot (and its RAM prompt cache): the fair comparison.
  2. first request after a restart (median of --restarts): kvstash restarted on its warm
     --cache-dir; llama-server restarted cold; llama-server restarted with --slot-save-path and
     a manual POST /slots/0?action=restore of the slot saved before stopping (restore + request
     timed together). Servers are healthy before the clock starts (model load not counted).
  3. throughput: --parallel 4, 4 concurrent streaming clients with different prompts, each
     generating --tp-tokens tokens; total generated tokens / wall time (median of --rounds).
  4. multi-turn chat: --turns turns (each appends the server's own previous answer and a new user
     message) after the same system prompt; TTFT per turn.

TTFT = from sending the request to the first SSE chunk that carries non-empty content.
Python 3 standard library only.

  bench/serve_bench.py --kvstash build/kvstash --llama-server build-llama-tools/bin/llama-server \
      --model small.gguf --out results/ [--quick]
"""
import argparse
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

QUESTIONS = [
    "Can I rent a tile saw for the weekend?",
    "Do you price-match online stores?",
    "What are your opening hours on Sunday?",
    "How long does paint take to dry in winter?",
    "Can you cut keys for a padlock?",
    "Is there a warranty on cordless drills?",
    "Do you deliver lumber to the next town?",
    "Can I return an opened box of screws?",
    "What size anchor do I need for drywall?",
    "Do you sell replacement mower blades?",
    "Can I order a custom color of stain?",
    "Are there classes on basic plumbing?",
    "Do you have a loyalty card?",
    "Can I pay with a gift card and cash together?",
    "Which ladder is best for a two-story house?",
    "Do you rent carpet cleaners?",
]


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def pct(values, p):
    """Percentile by linear interpolation between closest ranks (p in 0..100)."""
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    k = (len(v) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


class Server:
    """One server process: `kind` is "kvstash" or "llama"."""

    def __init__(self, kind, args, workdir, parallel, ctx, cache_dir=None, slot_dir=None, tag=""):
        self.kind, self.args = kind, args
        self.port = free_port()
        self.log_path = os.path.join(workdir, f"{kind}{tag}-{self.port}.log")
        common = ["-m", args.model, "--port", str(self.port), "--parallel", str(parallel),
                  "-c", str(ctx), "-t", str(args.threads)]
        if kind == "kvstash":
            cmd = [args.kvstash, "serve", *common, "--flash-attn", "off"]
            cmd += ["--cache-dir", cache_dir] if cache_dir else ["--no-cache"]
        else:
            cmd = [args.llama_server, *common, "-fa", args.llama_fa, "--host", "127.0.0.1"]
            if slot_dir:
                cmd += ["--slot-save-path", slot_dir]
        self.cmd = cmd
        self.logf = open(self.log_path, "w")
        self.t_start = time.perf_counter()
        self.proc = subprocess.Popen(cmd, stdout=self.logf, stderr=subprocess.STDOUT)
        self._wait_healthy()
        self.ready_s = time.perf_counter() - self.t_start

    def _wait_healthy(self, timeout=600):
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited ({self.proc.returncode}) during start-up; "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/health")
                r = c.getresponse()
                r.read()
                c.close()
                if r.status == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"{self.kind} not healthy after {timeout} s; log {self.log_path}")

    def log_tail(self, n=3000):
        if not self.logf.closed:
            self.logf.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read()[-n:]

    def log_text(self):
        """The whole log; after stop() it holds every request's line (written after the reply)."""
        if not self.logf.closed:
            self.logf.flush()
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def post(self, path, obj, timeout=600):
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        c.request("POST", path, json.dumps(obj), {"Content-Type": "application/json"})
        r = c.getresponse()
        body = r.read()
        c.close()
        if r.status != 200:
            raise RuntimeError(f"{self.kind} POST {path}: {r.status} {body[:500]!r}")
        return json.loads(body) if body else None

    def stop(self):
        if self.logf.closed:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()


def chat(server, messages, max_tokens, timeout=1200):
    """One streaming chat completion; returns timings and what came back."""
    body = json.dumps({"model": "m", "messages": messages, "max_tokens": max_tokens,
                       "temperature": 0, "stream": True,
                       "stream_options": {"include_usage": True}})
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"{server.kind}: HTTP {resp.status}: {resp.read()[:500]!r}")
    ttft, pieces, usage, timings = None, [], None, None
    while True:
        line = resp.readline()
        if not line:
            break
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        obj = json.loads(data)
        if obj.get("usage"):
            usage = obj["usage"]
        if obj.get("timings"):
            timings = obj["timings"]
        for ch in obj.get("choices") or []:
            c = (ch.get("delta") or {}).get("content")
            if c:
                if ttft is None:
                    ttft = time.perf_counter() - t0
                pieces.append(c)
    total = time.perf_counter() - t0
    conn.close()
    out = {"ttft_s": ttft if ttft is not None else total, "total_s": total,
           "text": "".join(pieces), "content_chunks": len(pieces)}
    if usage:
        out["prompt_tokens"] = usage.get("prompt_tokens")
        out["completion_tokens"] = usage.get("completion_tokens")
        details = usage.get("prompt_tokens_details") or {}
        if "cached_tokens" in details:
            out["cached_tokens"] = details["cached_tokens"]
    if out.get("completion_tokens") is None:
        out["completion_tokens"] = len(pieces)
    if timings:  # llama-server's own accounting
        out["server_prompt_n"] = timings.get("prompt_n")
        out["server_cache_n"] = timings.get("cache_n")
        out["server_prompt_ms"] = timings.get("prompt_ms")
    return out


KV_LINE = re.compile(r"prompt (\d+) tokens \((\d+) cached\), (\d+) generated, first token ([0-9.]+) s")


def kvstash_request_log(server):
    """kvstash's own per-request lines: (prompt, cached, generated, first-token s)."""
    return [dict(prompt=int(a), cached=int(b), generated=int(c), first_token_s=float(d))
            for a, b, c, d in KV_LINE.findall(server.log_text())]


def kvstash_mode(server):
    m = re.search(r"(answers independent of load[^\n]*|may depend on load[^\n]*)", server.log_text())
    return m.group(1) if m else "unknown (no startup line found)"


def system_prompt(args):
    with open(args.system_prompt_file) as f:
        base = f.read()
    text = base
    while len(text) < args.system_chars:
        text += "\n\n" + base
    return text[:args.system_chars]


def msgs(system, question):
    return [{"role": "system", "content": system}, {"role": "user", "content": question}]


# ---------------------------------------------------------------- 1. repeated system prompt
def bench_repeated(args, work, system, kind, slot_dir=None, cache_dir=None):
    s = Server(kind, args, work, 1, args.ctx_per_seq, cache_dir=cache_dir, slot_dir=slot_dir,
               tag="-repeated")
    try:
        prime = chat(s, msgs(system, QUESTIONS[-1]), args.gen_tokens)
        runs = [chat(s, msgs(system, q), args.gen_tokens) for q in QUESTIONS[:args.questions]]
        if slot_dir:  # keep this slot (system prompt + last question) for the restore case
            t = time.perf_counter()
            s.post("/slots/0?action=save", {"filename": "sbench.bin"})
            save_ms = 1000 * (time.perf_counter() - t)
        else:
            save_ms = None
        ttfts = [r["ttft_s"] * 1000 for r in runs]
        res = {"prime_ttft_ms": prime["ttft_s"] * 1000, "prompt_tokens": prime.get("prompt_tokens"),
               "ttft_ms": ttfts, "p50_ms": pct(ttfts, 50), "p95_ms": pct(ttfts, 95),
               "requests": runs, "ready_s": s.ready_s}
        if save_ms is not None:
            res["slot_save_ms"] = save_ms
    finally:
        s.stop()
    if kind == "kvstash":
        res["mode"] = kvstash_mode(s)
        res["server_log"] = kvstash_request_log(s)
    return res


# ---------------------------------------------------------------- 2. first request after restart

def first_request(server, messages, gen_tokens, results):
    """One timed chat on a freshly started server, which is then stopped; appended to results."""
    try:
        r = chat(server, messages, gen_tokens)
        r["ready_s"] = server.ready_s
        r["time_ms"] = r["ttft_s"] * 1000
        results.append(r)
    finally:
        server.stop()
    return r

def bench_restart(args, work, system, kv_cache, slot_dir):
    out = {"kvstash_warm": [], "llama_cold": [], "llama_restore": []}
    for rep in range(args.restarts):
        q = QUESTIONS[(args.questions + rep) % len(QUESTIONS)]
        # kvstash on its warm store
        s = Server("kvstash", args, work, 1, args.ctx_per_seq, cache_dir=kv_cache, tag=f"-restart{rep}")
        r = first_request(s, msgs(system, q), args.gen_tokens, out["kvstash_warm"])
        r["server_log"] = kvstash_request_log(s)
        # llama-server cold
        s = Server("llama", args, work, 1, args.ctx_per_seq, tag=f"-cold{rep}")
        first_request(s, msgs(system, q), args.gen_tokens, out["llama_cold"])
        # llama-server with a manual slot restore
        s = Server("llama", args, work, 1, args.ctx_per_seq, slot_dir=slot_dir, tag=f"-restore{rep}")
        try:
            t = time.perf_counter()
            restored = s.post("/slots/0?action=restore", {"filename": "sbench.bin"})
            restore_ms = 1000 * (time.perf_counter() - t)
            r = chat(s, msgs(system, q), args.gen_tokens)
            r["ready_s"] = s.ready_s
            r["restore_ms"] = restore_ms
            r["restored"] = restored
            r["time_ms"] = restore_ms + r["ttft_s"] * 1000
            out["llama_restore"].append(r)
        finally:
            s.stop()
        log(f"  restart {rep + 1}/{args.restarts}: kvstash {out['kvstash_warm'][-1]['time_ms']:.0f} ms, "
            f"llama cold {out['llama_cold'][-1]['time_ms']:.0f} ms, "
            f"llama restore+request {out['llama_restore'][-1]['time_ms']:.0f} ms")
    for k in list(out):
        out[k + "_median_ms"] = statistics.median(r["time_ms"] for r in out[k])
    out["llama_restore_only_median_ms"] = statistics.median(r["restore_ms"] for r in out["llama_restore"])
    return out


# ---------------------------------------------------------------- 3. throughput
def tp_prompts(args, n):
    with open(args.system_prompt_file) as f:
        words = f.read().split()
    prompts = []
    for i in range(n):
        start = (i * 37) % max(1, len(words) - args.tp_prompt_words)
        prompts.append(f"Request {i}: summarize this. " + " ".join(words[start:start + args.tp_prompt_words]))
    return prompts


def bench_throughput(args, work, kind, cache_dir=None):
    s = Server(kind, args, work, args.tp_parallel, args.tp_ctx_per_seq * args.tp_parallel,
               cache_dir=cache_dir, tag="-tp")
    try:
        chat(s, [{"role": "user", "content": "warm up"}], 4)
        prompts = tp_prompts(args, args.rounds * args.tp_parallel)
        rounds = []
        for rd in range(args.rounds):
            results = [None] * args.tp_parallel
            errors = []

            def client(i):
                try:
                    p = prompts[rd * args.tp_parallel + i]
                    results[i] = chat(s, [{"role": "user", "content": p}], args.tp_tokens)
                except Exception as e:  # noqa: BLE001 - reported below
                    errors.append(repr(e))

            threads = [threading.Thread(target=client, args=(i,)) for i in range(args.tp_parallel)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            if errors:
                raise RuntimeError(f"{kind} throughput round {rd}: {errors}")
            tokens = sum(r["completion_tokens"] for r in results)
            gen = [(r["completion_tokens"] - 1) / (r["total_s"] - r["ttft_s"])
                   for r in results if r["completion_tokens"] > 1 and r["total_s"] > r["ttft_s"]]
            rounds.append({"wall_s": wall, "tokens": tokens, "tokens_per_s": tokens / wall,
                           "per_client_gen_tokens_per_s": gen,
                           "ttft_ms": [r["ttft_s"] * 1000 for r in results],
                           "prompt_tokens": [r.get("prompt_tokens") for r in results]})
        res = {"rounds": rounds,
               "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in rounds)}
    finally:
        s.stop()
    if kind == "kvstash":
        res["server_log"] = kvstash_request_log(s)
    return res


# ---------------------------------------------------------------- 4. multi-turn chat
def bench_turns(args, work, system, kind, cache_dir=None):
    s = Server(kind, args, work, 1, args.ctx_per_seq, cache_dir=cache_dir, tag="-turns")
    try:
        messages = [{"role": "system", "content": system}]
        turns = []
        for t in range(args.turns):
            messages.append({"role": "user", "content": QUESTIONS[t % len(QUESTIONS)]})
            r = chat(s, messages, args.turn_tokens)
            messages.append({"role": "assistant", "content": r["text"]})
            turns.append({"turn": t + 1, "ttft_ms": r["ttft_s"] * 1000,
                          "prompt_tokens": r.get("prompt_tokens"),
                          "cached_tokens": r.get("cached_tokens", r.get("server_cache_n")),
                          "completion_tokens": r["completion_tokens"]})
        res = {"turns": turns}
    finally:
        s.stop()
    if kind == "kvstash":
        res["server_log"] = kvstash_request_log(s)
    return res


def markdown(res):
    a = res["args"]
    L = []
    L.append(f"### kvstash serve vs llama-server ({os.path.basename(a['model'])}, -t {a['threads']}, "
             f"KV f16; kvstash -fa off: {res.get('kvstash_mode', '?')}; llama-server -fa "
             f"{a.get('llama_fa', 'off')})\n")
    if "repeated" in res:
        r = res["repeated"]
        k, l = r["kvstash"], r["llama"]
        L.append(f"**1. Repeated system prompt** ({k['prompt_tokens']} prompt tokens with the first "
                 f"question; {len(k['ttft_ms'])} questions in a row after one priming request; "
                 f"--parallel 1, -c {a['ctx_per_seq']}; TTFT ms)\n")
        L.append("| server | priming (cold) | p50 | p95 |\n|---|---|---|---|")
        for name, v in (("kvstash serve", k), ("llama-server", l)):
            L.append(f"| {name} | {v['prime_ttft_ms']:.0f} | {v['p50_ms']:.1f} | {v['p95_ms']:.1f} |")
        L.append(f"\nllama-server / kvstash p50: {l['p50_ms'] / k['p50_ms']:.2f}x\n")
    if "restart" in res:
        r = res["restart"]
        n = len(r["kvstash_warm"])
        L.append(f"**2. First request after a restart** (median of {n} restarts; server healthy "
                 f"before the clock starts; ms)\n")
        L.append("| case | ms | runs |\n|---|---|---|")
        for key, name in (("kvstash_warm", "kvstash serve, warm --cache-dir (TTFT)"),
                          ("llama_restore", "llama-server, POST /slots/0?action=restore + request (TTFT)"),
                          ("llama_cold", "llama-server, cold (TTFT)")):
            runs = ", ".join(f"{x['time_ms']:.0f}" for x in r[key])
            L.append(f"| {name} | {r[key + '_median_ms']:.0f} | {runs} |")
        kv = r["kvstash_warm_median_ms"]
        L.append(f"\nkvstash / (llama restore + request): {kv / r['llama_restore_median_ms']:.2f}x "
                 f"(target <= 1.2x); llama cold / kvstash: {r['llama_cold_median_ms'] / kv:.1f}x "
                 f"(target >= 20x); llama-server's restore alone: "
                 f"{r['llama_restore_only_median_ms']:.0f} ms\n")
    if "throughput" in res:
        r = res["throughput"]
        L.append(f"**3. Throughput** ({a['tp_parallel']} concurrent streaming clients, --parallel "
                 f"{a['tp_parallel']}, -c {a['tp_ctx_per_seq'] * a['tp_parallel']}, up to "
                 f"{a['tp_tokens']} tokens each, different prompts; median of {a['rounds']} rounds)\n")
        L.append("| server | generated tokens/s (all clients) | rounds |\n|---|---|---|")
        for key, name in (("kvstash", "kvstash serve"), ("llama", "llama-server")):
            runs = ", ".join(f"{x['tokens_per_s']:.1f}" for x in r[key]["rounds"])
            L.append(f"| {name} | {r[key]['median_tokens_per_s']:.1f} | {runs} |")
        L.append(f"\nkvstash / llama-server: "
                 f"{r['kvstash']['median_tokens_per_s'] / r['llama']['median_tokens_per_s']:.2f}x "
                 f"(target >= 1x)\n")
    if "turns" in res:
        r = res["turns"]
        L.append(f"**4. Multi-turn chat** (TTFT ms per turn; each turn appends the server's own "
                 f"previous answer, up to {a['turn_tokens']} tokens, and a new question)\n")
        L.append("| turn | kvstash prompt (cached) | kvstash TTFT | llama-server prompt (cached) | "
                 "llama-server TTFT |\n|---|---|---|---|---|")
        for k, l in zip(r["kvstash"]["turns"], r["llama"]["turns"]):
            L.append(f"| {k['turn']} | {k['prompt_tokens']} ({k['cached_tokens']}) | {k['ttft_ms']:.0f} "
                     f"| {l['prompt_tokens']} ({l['cached_tokens']}) | {l['ttft_ms']:.0f} |")
        L.append("")
    return "\n".join(L)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap.add_argument("--kvstash", default=os.path.join(root, "build", "kvstash"))
    ap.add_argument("--llama-server", default=os.path.join(root, "build-llama-tools", "bin", "llama-server"))
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True, help="directory for serve.json and serve.md")
    ap.add_argument("--work", help="scratch directory (default: a temporary one)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--llama-fa", default="auto", choices=["on", "off", "auto"],
                    help="llama-server's flash attention (default: its own default, auto)")
    ap.add_argument("--system-prompt-file", default=os.path.join(root, "demo", "system-prompt.txt"))
    ap.add_argument("--system-chars", type=int, default=11800, help="~3,000 tokens on the small shape")
    ap.add_argument("--ctx-per-seq", type=int, default=8192)
    ap.add_argument("--questions", type=int, default=10)
    ap.add_argument("--gen-tokens", type=int, default=16, help="tokens per answer in tests 1 and 2")
    ap.add_argument("--restarts", type=int, default=3)
    ap.add_argument("--tp-parallel", type=int, default=4)
    ap.add_argument("--tp-ctx-per-seq", type=int, default=2048)
    ap.add_argument("--tp-tokens", type=int, default=64)
    ap.add_argument("--tp-prompt-words", type=int, default=60)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--turns", type=int, default=8)
    ap.add_argument("--turn-tokens", type=int, default=32)
    ap.add_argument("--only", default="repeated,restart,throughput,turns",
                    help="comma-separated subset (restart needs repeated)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: small prompt, few repetitions")
    args = ap.parse_args()
    if args.quick:
        args.system_chars, args.ctx_per_seq, args.questions = 2000, 2048, 3
        args.restarts, args.rounds, args.turns, args.tp_tokens = 1, 1, 3, 16
        args.gen_tokens, args.turn_tokens = 4, 8
    for exe in (args.kvstash, args.llama_server):
        if not os.access(exe, os.X_OK):
            sys.exit(f"error: {exe} is not an executable")
    only = set(args.only.split(","))
    if "restart" in only:
        only.add("repeated")
    os.makedirs(args.out, exist_ok=True)
    work = args.work or tempfile.mkdtemp(prefix="serve-bench-")
    os.makedirs(work, exist_ok=True)
    system = system_prompt(args)
    res = {"args": vars(args), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
           "machine": {"nproc": os.cpu_count(), "uname": " ".join(os.uname())},
           "loadavg_start": os.getloadavg()}
    t_all = time.perf_counter()
    kv_cache = os.path.join(work, "kv-store")
    slot_dir = os.path.join(work, "slots")
    for d in (kv_cache, slot_dir):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
    try:
        if "repeated" in only:
            log("== 1. repeated system prompt")
            k = bench_repeated(args, work, system, "kvstash", cache_dir=kv_cache)
            res["kvstash_mode"] = k.pop("mode")
            log(f"  kvstash: {res['kvstash_mode']}")
            l = bench_repeated(args, work, system, "llama", slot_dir=slot_dir)
            res["repeated"] = {"kvstash": k, "llama": l}
            log(f"  TTFT p50 kvstash {k['p50_ms']:.1f} ms, llama-server {l['p50_ms']:.1f} ms")
        if "restart" in only:
            log("== 2. first request after a restart")
            res["restart"] = bench_restart(args, work, system, kv_cache, slot_dir)
        if "throughput" in only:
            log("== 3. throughput")
            tp_cache = os.path.join(work, "kv-store-tp")
            shutil.rmtree(tp_cache, ignore_errors=True)
            k = bench_throughput(args, work, "kvstash", cache_dir=tp_cache)
            l = bench_throughput(args, work, "llama")
            res["throughput"] = {"kvstash": k, "llama": l}
            log(f"  tokens/s kvstash {k['median_tokens_per_s']:.1f}, llama-server {l['median_tokens_per_s']:.1f}")
        if "turns" in only:
            log("== 4. multi-turn chat")
            turns_cache = os.path.join(work, "kv-store-turns")
            shutil.rmtree(turns_cache, ignore_errors=True)
            k = bench_turns(args, work, system, "kvstash", cache_dir=turns_cache)
            l = bench_turns(args, work, system, "llama")
            res["turns"] = {"kvstash": k, "llama": l}
    finally:
        res["elapsed_s"] = time.perf_counter() - t_all
        res["loadavg_end"] = os.getloadavg()
        with open(os.path.join(args.out, "serve.json"), "w") as f:
            json.dump(res, f, indent=2)
    md = markdown(res)
    with open(os.path.join(args.out, "serve.md"), "w") as f:
        f.write(md + "\n")
    print(md)
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
