#!/usr/bin/env python3
"""Renders kvstash-bench's JSON as two PNG charts with gnuplot: load times and time to first token."""
import json, os, subprocess, sys

import shutil

rows = json.load(open(sys.argv[1]))
if not shutil.which("gnuplot"):
    print("bench_chart: gnuplot is not installed (apt-get install gnuplot-nox): no charts, the "
          "tables above have every number", file=sys.stderr)
    sys.exit(0)
out = sys.argv[2]
labels = [f"{r['shape']} {r['cache_type']} P={r['prefix_tokens']}" for r in rows]

def plot(name, title, ylabel, series, logscale=False):
    data = os.path.join(out, name + ".dat")
    with open(data, "w") as f:
        f.write("case " + " ".join(f'"{s}"' for s, _ in series) + "\n")
        for i, label in enumerate(labels):
            f.write(f'"{label}" ' + " ".join(f"{values[i]:.3f}" for _, values in series) + "\n")
    cols = " ".join(
        f"'{data}' using {k + 2}:xtic(1) title columnheader({k + 2}){',' if k + 1 < len(series) else ''}"
        for k in range(len(series)))
    script = f"""
set terminal pngcairo size 1200,600 font ",10" noenhanced
set output '{os.path.join(out, name + ".png")}'
set title '{title}'
set ylabel '{ylabel}'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set xtics rotate by -30
set key outside right top vertical
set grid ytics
{'set logscale y' if logscale else 'set yrange [0:*]'}
plot {cols}
"""
    subprocess.run(["gnuplot"], input=script.encode(), check=True)

hot = [r["load"]["hot"] for r in rows]
cold = [r["load"]["cold"] for r in rows]
plot("load", "Loading a session: time relative to one fread of the same bytes (median; hot and cold page cache)",
     "x fread", [
    ("kvstash (lease), hot", [h["kvstash_load_ms"] / h["fread_ms"] for h in hot]),
    ("kvstash (copy), hot", [h["kvstash_load_copy_ms"] / h["fread_ms"] for h in hot]),
    ("llama_state_seq_load_file, hot", [h["llama_load_ms"] / h["fread_ms"] for h in hot]),
    ("kvstash (lease), cold", [c["kvstash_load_ms"] / c["fread_ms"] for c in cold]),
    ("kvstash (copy), cold", [c["kvstash_load_copy_ms"] / c["fread_ms"] for c in cold]),
    ("llama_state_seq_load_file, cold", [c["llama_load_ms"] / c["fread_ms"] for c in cold]),
    ("fread", [1.0 for h in hot]),
])
plot("ttft", "Time to first token: cold prefill vs warm open (median ms, log scale)", "ms", [
    ("cold", [r["ttft"]["cold_ms"] for r in rows]),
    ("warm", [r["ttft"]["warm_ms"] for r in rows]),
], logscale=True)

# The prefix store: time to first token of each turn of a conversation, store vs cold.
if len(sys.argv) > 3 and os.path.exists(sys.argv[3]):
    turns = json.load(open(sys.argv[3])).get("turns", [])
    if turns:
        labels = [f"turn {t['turn']} ({t['prompt_tokens']} tok)" for t in turns]
        plot("store", "Time to first token of turn k (2,000-token system prompt, small shape): "
             "prefix store vs cold (median ms, log scale)", "ms", [
            ("cold (no store)", [t["cold_ttft_ms"] for t in turns]),
            ("prefix store", [t["warm_ttft_ms"] for t in turns]),
        ], logscale=True)
