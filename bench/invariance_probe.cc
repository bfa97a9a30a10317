// Batch-invariance probe for llama.cpp (CPU), straight on llama.h: the evidence behind
// docs/SERVER.md "Answers independent of load" and the cost table in docs/PERFORMANCE.md. Build it
// twice to compare (make; and cmake -DKVSTASH_BATCH_INVARIANT=OFF in another build directory: the
// target kvstash-invariance-probe links whichever llama.cpp that build has). Models: any GGUF, e.g.
// `kvstash make-test-model --shape small -o small.gguf`.
//
// Question: are the logits of a token of sequence A bit-identical no matter how tokens are grouped
// into llama_decode calls / ubatches and which other sequences share the batch?
//
// usage:
//   probe inv   <model.gguf> [--fa -1|0|1] [--unified 0|1] [--extra 0|1] [--threads N] [--steps N]
//   probe bench <model.gguf> [--fa ..] [--unified ..] [--extra ..] [--threads N]
//   probe state <model.gguf> [--fa ..] [--extra ..]          (kv_unified=false, n_seq_max=4)
//
// inv prints one line per scenario: name, equal(yes/no), max |diff| vs s1, first differing step.
// Step 0 is A's logits at its last prompt token, steps 1..N are greedy generation steps (A is fed
// the tokens chosen in s1 in every scenario, so inputs are the same).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "ggml-cpu.h"
#include "llama.h"

namespace {

struct Opts {
  std::string mode, model;
  int fa = 0;  // -1 auto, 0 off, 1 on
  int unified = 0;
  int extra = 0;  // use_extra_bufts
  int threads = 2;
  int steps = 20;
  int n_prompt = 700;
};

llama_model *g_model = nullptr;
int g_vocab = 0;
Opts g;

llama_context *make_ctx(int n_seq_max = 4, int n_ctx = 4 * 2048, int n_batch = 2048,
                        int n_ubatch = 512) {
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = n_ctx;
  cp.n_batch = n_batch;
  cp.n_ubatch = n_ubatch;
  cp.n_seq_max = n_seq_max;
  cp.n_threads = g.threads;
  cp.n_threads_batch = g.threads;
  cp.flash_attn_type = (llama_flash_attn_type)g.fa;
  cp.kv_unified = g.unified != 0;
  cp.no_perf = true;
  llama_context *ctx = llama_init_from_model(g_model, cp);
  if (!ctx) {
    fprintf(stderr, "context failed\n");
    exit(1);
  }
  return ctx;
}

std::vector<llama_token> rand_tokens(int n, unsigned seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> d(10, g_vocab - 1);
  std::vector<llama_token> t(n);
  for (auto &x : t) x = d(rng);
  return t;
}

// one entry of a batch
struct Tok {
  llama_token tok;
  llama_pos pos;
  llama_seq_id seq;
  bool out;
};

// decodes the entries in one llama_decode; returns logits of the entries with out=true, in order
std::vector<std::vector<float>> decode(llama_context *ctx, const std::vector<Tok> &toks) {
  llama_batch b = llama_batch_init((int)toks.size(), 0, 1);
  for (size_t i = 0; i < toks.size(); ++i) {
    b.token[i] = toks[i].tok;
    b.pos[i] = toks[i].pos;
    b.n_seq_id[i] = 1;
    b.seq_id[i][0] = toks[i].seq;
    b.logits[i] = toks[i].out;
  }
  b.n_tokens = (int)toks.size();
  int rc = llama_decode(ctx, b);
  if (rc != 0) {
    fprintf(stderr, "llama_decode rc=%d\n", rc);
    exit(1);
  }
  std::vector<std::vector<float>> out;
  for (size_t i = 0; i < toks.size(); ++i) {
    if (!toks[i].out) continue;
    const float *l = llama_get_logits_ith(ctx, (int)i);
    out.emplace_back(l, l + g_vocab);
  }
  llama_batch_free(b);
  return out;
}

// prompt of seq s in groups; logits of the last token only
std::vector<float> prompt(llama_context *ctx, const std::vector<llama_token> &t, llama_seq_id s,
                          const std::vector<int> &groups, int pos0 = 0) {
  std::vector<float> last;
  size_t i = 0;
  for (int gsz : groups) {
    std::vector<Tok> v;
    for (int k = 0; k < gsz; ++k, ++i)
      v.push_back({t[i], (llama_pos)(pos0 + i), s, i + 1 == t.size()});
    auto o = decode(ctx, v);
    if (!o.empty()) last = o.back();
  }
  if (i != t.size()) {
    fprintf(stderr, "bad groups\n");
    exit(1);
  }
  return last;
}

int argmax(const std::vector<float> &l) {
  return (int)(std::max_element(l.begin(), l.end()) - l.begin());
}

using Trace = std::vector<std::vector<float>>;  // step -> logits

struct Cmp {
  bool eq;
  double maxd;
  int first;
};
Cmp compare(const Trace &a, const Trace &b) {
  Cmp c{true, 0.0, -1};
  for (size_t s = 0; s < a.size(); ++s) {
    bool e = memcmp(a[s].data(), b[s].data(), a[s].size() * sizeof(float)) == 0;
    if (!e && c.first < 0) c.first = (int)s;
    c.eq = c.eq && e;
    for (size_t i = 0; i < a[s].size(); ++i)
      c.maxd = std::max(c.maxd, (double)std::fabs(a[s][i] - b[s][i]));
  }
  return c;
}

std::vector<llama_token> A, B, C, D;
std::vector<llama_token> A_gen;  // tokens chosen in s1

// A's generation after its prompt, alone. If A_gen is empty, records greedy tokens.
void gen_alone(llama_context *ctx, Trace &tr, llama_seq_id sa = 0) {
  bool record = A_gen.empty();
  for (int s = 0; s < g.steps; ++s) {
    llama_token t = record ? argmax(tr.back()) : A_gen[s];
    if (record) A_gen.push_back(t);
    auto o = decode(ctx, {{t, (llama_pos)(A.size() + s), sa, true}});
    tr.push_back(o[0]);
  }
}

Trace s1() {  // A alone, one group
  llama_context *ctx = make_ctx();
  Trace tr{prompt(ctx, A, 0, {(int)A.size()})};
  gen_alone(ctx, tr);
  llama_free(ctx);
  return tr;
}

Trace s_groups(std::vector<int> groups) {
  llama_context *ctx = make_ctx();
  Trace tr{prompt(ctx, A, 0, groups)};
  gen_alone(ctx, tr);
  llama_free(ctx);
  return tr;
}

// A + B prompt + C gen token in one batch, then generation of all three together
Trace s3(llama_seq_id sb, llama_seq_id sc, bool a_last = false, int nb = 300) {
  llama_context *ctx = make_ctx();
  auto B = rand_tokens(nb, 2);
  prompt(ctx, C, sc, {(int)C.size()});
  std::vector<Tok> v;
  auto addA = [&] {
    for (size_t i = 0; i < A.size(); ++i) v.push_back({A[i], (llama_pos)i, 0, i + 1 == A.size()});
  };
  if (!a_last) addA();
  for (size_t i = 0; i < B.size(); ++i) v.push_back({B[i], (llama_pos)i, sb, i + 1 == B.size()});
  v.push_back({C.back() ^ 1, (llama_pos)C.size(), sc, true});
  if (a_last) addA();
  auto o = decode(ctx, v);
  // output order: entries with out=true in batch order
  Trace tr{a_last ? o[2] : o[0]};
  llama_token tb = argmax(a_last ? o[0] : o[1]), tc = argmax(a_last ? o[1] : o[2]);
  for (int s = 0; s < g.steps; ++s) {
    std::vector<Tok> w;
    w.push_back({tc, (llama_pos)(C.size() + 1 + s), sc, true});
    w.push_back({A_gen[s], (llama_pos)(A.size() + s), 0, true});
    w.push_back({tb, (llama_pos)(B.size() + s), sb, true});
    auto r = decode(ctx, w);
    tr.push_back(r[1]);
    tc = argmax(r[0]);
    tb = argmax(r[2]);
  }
  llama_free(ctx);
  return tr;
}

// s4a: seq 1 runs 300 tokens + 5 gen, removed, then A alone in seq 0
// s4b: seq 0 runs another 300-token prompt, removed, then A in seq 0 (same stream reused)
// s4c: seqs 1 and 2 run 300 tokens each, seq 1 removed, then A in seq 0 (holes before A's cells)
Trace s4(char which) {
  llama_context *ctx = make_ctx();
  llama_memory_t mem = llama_get_memory(ctx);
  if (which == 'a') {
    auto l = prompt(ctx, B, 1, {(int)B.size()});
    for (int s = 0; s < 5; ++s)
      l = decode(ctx, {{argmax(l), (llama_pos)(B.size() + s), 1, true}})[0];
    llama_memory_seq_rm(mem, 1, -1, -1);
  } else if (which == 'b') {
    prompt(ctx, B, 0, {(int)B.size()});
    llama_memory_seq_rm(mem, 0, -1, -1);
  } else {
    prompt(ctx, B, 1, {(int)B.size()});
    prompt(ctx, D, 2, {(int)D.size()});
    llama_memory_seq_rm(mem, 1, -1, -1);
  }
  Trace tr{prompt(ctx, A, 0, {(int)A.size()})};
  gen_alone(ctx, tr);
  llama_free(ctx);
  return tr;
}

// A alone in seq sa (another stream when kv_unified=false)
Trace s6(llama_seq_id sa) {
  llama_context *ctx = make_ctx();
  Trace tr{prompt(ctx, A, sa, {(int)A.size()})};
  gen_alone(ctx, tr, sa);
  llama_free(ctx);
  return tr;
}

uint64_t hash(const Trace &t) {
  uint64_t h = 1469598103934665603ull;
  for (auto &v : t)
    for (float f : v) {
      uint32_t x;
      memcpy(&x, &f, 4);
      h = (h ^ x) * 1099511628211ull;
    }
  return h;
}

void report(const char *name, const Trace &ref, const Trace &t) {
  Cmp c = compare(ref, t);
  printf("%-28s equal=%s maxdiff=%.3g first_diff_step=%d\n", name, c.eq ? "yes" : "NO", c.maxd,
         c.first);
  fflush(stdout);
}

void run_inv() {
  A = rand_tokens(g.n_prompt, 1);
  B = rand_tokens(300, 2);
  C = rand_tokens(50, 3);
  D = rand_tokens(300, 4);
  Trace r1 = s1();
  printf("A_gen:");
  for (auto t : A_gen) printf(" %d", t);
  printf("\ns1_hash %016llx\n", (unsigned long long)hash(r1));
  report("s1_repeat", r1, s1());
  report("s2_groups_256_256_188", r1, s_groups({256, 256, 188}));
  report("s5_groups_699_1", r1, s_groups({699, 1}));
  report("s3_B1_C3", r1, s3(1, 3));
  report("s3_B1_C2", r1, s3(1, 2));
  report("s3_B1_C2_Alast", r1, s3(1, 2, true));
  report("s3d_B1_C2_Blong1200", r1, s3(1, 2, false, 1200));
  report("s6_A_in_seq2", r1, s6(2));
  report("s4a_other_seq_removed", r1, s4('a'));
  report("s4b_same_seq_reused", r1, s4('b'));
  report("s4c_hole_before_A", r1, s4('c'));
}

double now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}
double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void run_bench() {
  auto P = rand_tokens(2048, 7);
  std::vector<double> pp, tg1, tg4;
  const int n_gen = 64, n_pre = 128;
  for (int rep = 0; rep < 3; ++rep) {
    llama_context *ctx = make_ctx();
    double t0 = now();
    prompt(ctx, P, 0, {2048});
    pp.push_back(2048 / (now() - t0));
    llama_memory_clear(llama_get_memory(ctx), true);
    // tg with 1 sequence
    std::vector<llama_token> pre(P.begin(), P.begin() + n_pre);
    auto l = prompt(ctx, pre, 0, {n_pre});
    t0 = now();
    for (int s = 0; s < n_gen; ++s)
      l = decode(ctx, {{argmax(l), (llama_pos)(n_pre + s), 0, true}})[0];
    tg1.push_back(n_gen / (now() - t0));
    llama_memory_clear(llama_get_memory(ctx), true);
    // tg with 4 sequences
    std::vector<llama_token> last(4);
    for (int q = 0; q < 4; ++q) {
      std::vector<llama_token> p(P.begin() + q * n_pre, P.begin() + (q + 1) * n_pre);
      last[q] = argmax(prompt(ctx, p, q, {n_pre}));
    }
    t0 = now();
    for (int s = 0; s < n_gen; ++s) {
      std::vector<Tok> w;
      for (int q = 0; q < 4; ++q) w.push_back({last[q], (llama_pos)(n_pre + s), q, true});
      auto r = decode(ctx, w);
      for (int q = 0; q < 4; ++q) last[q] = argmax(r[q]);
    }
    tg4.push_back(4 * n_gen / (now() - t0));
    llama_free(ctx);
  }
  printf("pp2048 tok/s: %.1f (", median(pp));
  for (double x : pp) printf(" %.1f", x);
  printf(")\ntg 1 seq tok/s: %.2f (", median(tg1));
  for (double x : tg1) printf(" %.2f", x);
  printf(")\ntg 4 seq tok/s (total): %.2f (", median(tg4));
  for (double x : tg4) printf(" %.2f", x);
  printf(")\n");
}

uint32_t rd32(const std::vector<uint8_t> &b, size_t off) {
  uint32_t x;
  memcpy(&x, b.data() + off, 4);
  return x;
}

void run_state() {
  g.unified = 0;
  A = rand_tokens(g.n_prompt, 1);
  llama_context *ctx = make_ctx();
  Trace ref{prompt(ctx, A, 0, {(int)A.size()})};
  llama_token t1 = argmax(ref[0]);
  size_t n = llama_state_seq_get_size(ctx, 0);
  std::vector<uint8_t> buf(n);
  size_t w = llama_state_seq_get_data(ctx, buf.data(), buf.size(), 0);
  printf("state size=%zu written=%zu\n", n, w);
  printf("u32 magic=0x%08x i32 src_seq_id=%d\n", rd32(buf, 0), (int)rd32(buf, 4));
  uint32_t n_stream = rd32(buf, 8);
  uint32_t cc0 = rd32(buf, 12);
  printf("u32 n_stream=%u, stream0 cell_count=%u\n", n_stream, cc0);
  // cell meta: per cell i32 pos, u32 n_seq_id, [ext], seq ids
  size_t off = 16;
  printf("cell0: pos=%u n_seq_id=%u seq=%u; cell1: pos=%u\n", rd32(buf, off), rd32(buf, off + 4),
         rd32(buf, off + 8), rd32(buf, off + 12));
  off += (size_t)cc0 * 12;  // assumes no cell ext (non-M-RoPE model)
  printf("after meta: v_trans=%u n_layer=%u k_type=%d\n", rd32(buf, off), rd32(buf, off + 4),
         (int)rd32(buf, off + 8));
  bool tail_zero = true;
  for (uint32_t s = 1; s < n_stream; ++s)
    tail_zero = tail_zero && rd32(buf, w - 4 * (n_stream - s)) == 0;
  printf("last %u u32s are 0 (cell_count of the other streams): %s\n", n_stream - 1,
         tail_zero ? "yes" : "NO");
  // reference continuation in seq 0
  auto l0 = decode(ctx, {{t1, (llama_pos)A.size(), 0, true}})[0];
  // restore into seq 2 of the same context, and into seq 2 of a fresh context
  size_t r = llama_state_seq_set_data(ctx, buf.data(), w, 2);
  printf("set into seq 2 (same ctx): read=%zu\n", r);
  auto l2 = decode(ctx, {{t1, (llama_pos)A.size(), 2, true}})[0];
  printf("seq2 logits == seq0 logits: %s (maxdiff %.3g)\n", compare({l0}, {l2}).eq ? "yes" : "NO",
         compare({l0}, {l2}).maxd);
  llama_context *ctx2 = make_ctx();
  // put something in seqs 0,1 first so stream layout isn't trivially fresh
  auto X = rand_tokens(100, 9);
  prompt(ctx2, X, 1, {100});
  r = llama_state_seq_set_data(ctx2, buf.data(), w, 2);
  printf("set into seq 2 (fresh ctx, seq 1 busy): read=%zu\n", r);
  std::vector<Tok> bt{{X[0], 100, 1, true}, {t1, (llama_pos)A.size(), 2, true}};
  auto lb = decode(ctx2, bt);
  printf("fresh ctx seq2 (batched with seq1) == seq0 original: %s (maxdiff %.3g)\n",
         compare({l0}, {lb[1]}).eq ? "yes" : "NO", compare({l0}, {lb[1]}).maxd);
  // and the state re-read from seq 2 equals the original bytes except seq ids/stream position
  std::vector<uint8_t> buf2(llama_state_seq_get_size(ctx2, 2));
  size_t w2 = llama_state_seq_get_data(ctx2, buf2.data(), buf2.size(), 2);
  printf("re-get from seq2 size=%zu (orig %zu incl. one more token: expect larger)\n", w2, w);
  printf("re-get stream counts:");
  // parse: n_stream then per stream cell_count (only stream 2 non-zero); we just print the first
  // u32s
  printf(" magic=0x%08x seq=%d n_stream=%u s0=%u s1=%u s2=%u\n", rd32(buf2, 0), (int)rd32(buf2, 4),
         rd32(buf2, 8), rd32(buf2, 12), rd32(buf2, 16), rd32(buf2, 20));
  llama_free(ctx2);
  llama_free(ctx);
}

}  // namespace

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: probe inv|bench|state model.gguf [opts]\n");
    return 2;
  }
  g.mode = argv[1];
  g.model = argv[2];
  for (int i = 3; i + 1 < argc; i += 2) {
    std::string k = argv[i];
    int v = atoi(argv[i + 1]);
    if (k == "--fa")
      g.fa = v;
    else if (k == "--unified")
      g.unified = v;
    else if (k == "--extra")
      g.extra = v;
    else if (k == "--threads")
      g.threads = v;
    else if (k == "--steps")
      g.steps = v;
    else if (k == "--prompt")
      g.n_prompt = v;
    else {
      fprintf(stderr, "unknown %s\n", k.c_str());
      return 2;
    }
  }
  llama_log_set(
      [](ggml_log_level lvl, const char *txt, void *) {
        if (getenv("PROBE_LOG") && (lvl >= GGML_LOG_LEVEL_WARN || atoi(getenv("PROBE_LOG")) > 1))
          fputs(txt, stderr);
      },
      nullptr);
  setvbuf(stdout, nullptr, _IOLBF, 0);
  llama_backend_init();
  llama_model_params mp = llama_model_default_params();
  mp.use_extra_bufts = g.extra != 0;
  g_model = llama_model_load_from_file(g.model.c_str(), mp);
  if (!g_model) {
    fprintf(stderr, "load failed\n");
    return 1;
  }
  g_vocab = llama_vocab_n_tokens(llama_model_get_vocab(g_model));
  printf("# mode=%s model=%s llamafile=%d fa=%d unified=%d extra_bufts=%d threads=%d\n",
         g.mode.c_str(), g.model.c_str(), ggml_cpu_has_llamafile(), g.fa, g.unified, g.extra,
         g.threads);
  if (g.mode == "inv")
    run_inv();
  else if (g.mode == "bench")
    run_bench();
  else if (g.mode == "state")
    run_state();
  llama_model_free(g_model);
  return 0;
}
