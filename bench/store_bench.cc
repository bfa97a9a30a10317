// kvstash-store-bench: the prefix store (docs/STORE.md) on generated models of real shapes.
// Four measurements, each printed as a table and written to --json:
//   dedup     50 conversations x 8 turns sharing a 2,000-token system prompt: bytes in the store
//             against the sum of one session file per turn;
//   restore   a P-token prefix from chunks against Session::Open of one session file of the same
//             tokens, page cache hot and cold;
//   turns     time to first token of turn k of a conversation, through the store and cold;
//   align     prefill tokens/s decoding in chunk-aligned groups against one free group;
//   redis     (with --redis URL) time to first token of a P-token prefix restored from Redis into
//             an empty directory, against the local directory, and where the time went.
//
//   kvstash-store-bench [--dir DIR] [--json FILE] [--quick] [-t THREADS] [--redis URL]
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "bench_util.h"
#include "kvstash/model.h"
#include "kvstash/session.h"
#include "kvstash/store.h"
#include "testmodel/test_model.h"

namespace kvstash {
namespace {

using namespace bench;  // NOLINT: Ms, Median, Die, Check, ...
using nlohmann::json;

struct Flags {
  std::string dir = "store-bench-work";
  std::string json_path;
  std::string system_prompt_file = "demo/system-prompt.txt";
  bool quick = false;  // smaller runs, for a smoke test
  std::string only;    // one of dedup, restore, turns, align, redis; empty: all
  int threads = 0;
  std::string redis;  // redis://host:port of a server the bench may fill (and empty)
};

Flags ParseFlags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Die(arg + " needs a value");
      return argv[++i];
    };
    if (arg == "--dir")
      f.dir = value();
    else if (arg == "--json")
      f.json_path = value();
    else if (arg == "--system-prompt")
      f.system_prompt_file = value();
    else if (arg == "--only")
      f.only = value();
    else if (arg == "--quick")
      f.quick = true;
    else if (arg == "-t")
      f.threads = std::stoi(value());
    else if (arg == "--redis")
      f.redis = value();
    else
      Die("usage: kvstash-store-bench [--dir DIR] [--json FILE] [--system-prompt FILE] [--quick] "
          "[--only dedup|restore|turns|align|redis] [-t THREADS] [--redis URL]");
  }
  return f;
}

std::shared_ptr<Model> LoadShape(const Flags& flags, const std::string& shape) {
  TestModelSpec spec;
  spec.shape = Check(ParseTestShape(shape), "shape");
  spec.vocab = shape == "bench" ? TestVocab::kBpe : TestVocab::kSpm;
  spec.type = TestWeightType::kQ8_0;
  const std::string path = flags.dir + "/" + shape + "-q8_0.gguf";
  if (access(path.c_str(), R_OK) != 0) Check(WriteTestModel(spec, path), "make model");
  return Check(Model::Load(path), "load model");
}

std::shared_ptr<Store> FreshStore(const std::string& dir, bool sync = false) {
  if (std::system(("rm -rf '" + dir + "'").c_str()) != 0) Die("cannot clear " + dir);
  StoreOptions options;
  options.sync = sync;  // the store's own fsync is not what is compared here (except in dedup)
  return Check(Store::Open(dir, options), "open store");
}

SessionOptions Context(const Flags& flags, uint32_t n_ctx) {
  SessionOptions o;
  o.n_ctx = n_ctx;
  o.n_threads = flags.threads;
  return o;
}

// `n` tokens of text: the system prompt file repeated, with BOS.
std::vector<Token> SystemTokens(const Flags& flags, const Model& model, size_t n) {
  std::ifstream in(flags.system_prompt_file);
  std::stringstream text;
  text << in.rdbuf();
  if (text.str().empty()) Die("cannot read " + flags.system_prompt_file);
  std::string all;
  while (all.size() < 8 * n) all += text.str();
  auto tokens = Check(model.Tokenize(all, /*add_bos=*/true), "tokenize");
  if (tokens.size() < n) Die("system prompt too short");
  tokens.resize(n);
  return tokens;
}

// A turn's text: `words` seeded pseudo-words, tokenized without BOS.
std::vector<Token> TurnTokens(const Model& model, const std::string& who, int words,
                              uint32_t seed) {
  static const char* kWords[] = {"tile",    "saw",   "rent",     "weekend", "price",
                                 "deposit", "blade", "store",    "open",    "sunday",
                                 "return",  "late",  "fee",      "drill",   "ladder",
                                 "paint",   "order", "delivery", "thanks",  "question"};
  std::mt19937 rng(seed);
  std::string text = " " + who + ":";
  for (int i = 0; i < words; ++i) text += std::string(" ") + kWords[rng() % 20];
  return Check(model.Tokenize(text, /*add_bos=*/false), "tokenize");
}

std::vector<Token> Join(std::vector<Token> a, const std::vector<Token>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// ---- align: chunk-aligned groups against one free group (split only at n_batch) ----

json Align(const Flags& flags, const std::shared_ptr<Model>& model, const std::string& shape, int P,
           int reps) {
  std::fprintf(stderr, "[align %s P=%d] ...\n", shape.c_str(), P);
  const std::vector<Token> tokens = SystemTokens(flags, *model, P);
  const uint32_t n_ctx = P + 256;
  std::vector<double> free_ms, aligned_ms;
  for (int r = 0; r < reps; ++r) {
    auto s = Check(Session::Create(model, Context(flags, n_ctx)), "create");
    const auto t0 = Clock::now();
    Check(s->AppendTokens(tokens), "prefill");
    free_ms.push_back(Ms(t0, Clock::now()));
    auto store = FreshStore(flags.dir + "/align-store");
    auto a = Check(Session::Create(model, Context(flags, n_ctx)), "create");
    auto synced = Check(a->Sync(tokens, *store), "sync");
    aligned_ms.push_back(synced.decode_ms);
  }
  const double f = Median(free_ms), a = Median(aligned_ms);
  return {{"shape", shape},
          {"tokens", P},
          {"reps", reps},
          {"free_ms", f},
          {"aligned_ms", a},
          {"free_tok_s", 1000.0 * P / f},
          {"aligned_tok_s", 1000.0 * P / a},
          {"aligned_over_free", a / f}};
}

// ---- restore: P tokens from chunks against Session::Open of one file ----

json Restore(const Flags& flags, const std::shared_ptr<Model>& model, int P, int reps) {
  std::fprintf(stderr, "[restore small P=%d] prefill...\n", P);
  std::vector<Token> tokens = SystemTokens(flags, *model, P + 1);
  const std::vector<Token> prefix(tokens.begin(), tokens.begin() + P);
  const uint32_t n_ctx = P + 256;
  const std::string store_dir = flags.dir + "/restore-store-" + std::to_string(P);
  const std::string file = flags.dir + "/restore-" + std::to_string(P) + ".kvs";
  {
    auto store = FreshStore(store_dir);
    auto s = Check(Session::Create(model, Context(flags, n_ctx)), "create");
    Check(s->Sync(prefix, *store).status(), "sync");
    store->WaitForWrites();
    Check(s->Save(file), "save");
  }
  StoreOptions options;
  options.sync = false;
  auto store = Check(Store::Open(store_dir, options), "open store");
  auto chunks = Check(store->List(), "list");
  json out = {{"tokens", P}, {"chunks", chunks.size()}, {"file_bytes", FileSize(file)}};
  uint64_t chunk_bytes = 0;
  for (const auto& c : chunks) chunk_bytes += c.bytes;
  out["chunk_bytes"] = chunk_bytes;
  for (const bool cold : {false, true}) {
    std::fprintf(stderr, "[restore small P=%d] %s...\n", P, cold ? "cold" : "hot");
    std::vector<double> store_total, store_restore, file_total, file_restore;
    auto evict = [&] {
      if (!cold) return;
      for (const auto& c : chunks) EvictFromPageCache(c.path);
      EvictFromPageCache(file);
    };
    for (int r = 0; r <= reps; ++r) {  // the first is a warm-up
      // Both: a context of the same size, the P tokens restored, and the next token decoded.
      evict();
      const auto t0 = Clock::now();
      SyncResult synced;
      auto s = Check(Session::Create(model, Context(flags, n_ctx), tokens, *store, {}, &synced),
                     "create through the store");
      const double st = Ms(t0, Clock::now());
      if (synced.n_restored != static_cast<size_t>(P)) Die("the store did not restore P tokens");
      evict();
      SessionOptions open;
      open.n_ctx = n_ctx;
      open.n_threads = flags.threads;
      const auto t1 = Clock::now();
      auto o = Check(Session::Open(model, file, open), "open");
      Check(o->AppendTokens({tokens.back()}), "decode");
      const double ft = Ms(t1, Clock::now());
      if (r == 0) continue;
      store_total.push_back(st);
      store_restore.push_back(synced.restore_ms);
      file_total.push_back(ft);
      file_restore.push_back(o->open_stats().total_ms - o->open_stats().context_ms);
    }
    out[cold ? "cold" : "hot"] = {{"store_total_ms", Median(store_total)},
                                  {"file_total_ms", Median(file_total)},
                                  {"store_restore_ms", Median(store_restore)},
                                  {"file_restore_ms", Median(file_restore)},
                                  {"total_ratio", Median(store_total) / Median(file_total)},
                                  {"restore_ratio", Median(store_restore) / Median(file_restore)}};
  }
  return out;
}

// ---- conversations: a shared system prompt, then turns of a user and an assistant ----

struct Conversation {
  std::vector<std::vector<Token>> users, assistants;
};

Conversation MakeConversation(const Model& model, int id, int turns) {
  Conversation c;
  for (int t = 0; t < turns; ++t) {
    c.users.push_back(TurnTokens(model, "Customer", 24, 1000 * id + 2 * t));
    c.assistants.push_back(TurnTokens(model, "Atlas", 40, 1000 * id + 2 * t + 1));
  }
  return c;
}

// The prompt of turn k (1-based): system, then turns 1..k-1 whole, then turn k's user part.
std::vector<Token> TurnPrompt(const std::vector<Token>& system, const Conversation& c, int k) {
  std::vector<Token> p = system;
  for (int t = 0; t + 1 < k; ++t) p = Join(Join(p, c.users[t]), c.assistants[t]);
  return Join(p, c.users[k - 1]);
}

// Time from `since` to the first piece of text Generate hands out (or to its return, when the
// token has no text). *after_ms (optional): from that moment until the session is gone (a store
// session copies its new chunks out for the writer then, off the TTFT path).
double FirstTokenMs(std::unique_ptr<Session> s, Clock::time_point since,
                    double* after_ms = nullptr) {
  SampleOptions one;
  one.temp = 0;
  one.n_predict = 1;
  std::optional<Clock::time_point> first;
  Check(s->Generate(one,
                    [&first](std::string_view) {
                      if (!first) first = Clock::now();
                      return true;
                    })
            .status(),
        "generate");
  if (!first) first = Clock::now();
  s.reset();
  if (after_ms != nullptr) *after_ms = Ms(*first, Clock::now());
  return Ms(since, *first);
}

json Turns(const Flags& flags, const std::shared_ptr<Model>& model, int n_conv) {
  const int kTurns = 8;
  const std::vector<Token> system = SystemTokens(flags, *model, 2000);
  json rows = json::array();
  std::vector<std::vector<double>> warm(kTurns), cold(kTurns), reused(kTurns), restore(kTurns),
      decode(kTurns), publish(kTurns);
  for (int conv = 0; conv < n_conv; ++conv) {
    const Conversation c = MakeConversation(*model, 900 + conv, kTurns);
    auto store = FreshStore(flags.dir + "/turns-store", /*sync=*/true);
    for (int k = 1; k <= kTurns; ++k) {
      std::fprintf(stderr, "[turns conversation %d] turn %d\n", conv, k);
      const std::vector<Token> prompt = TurnPrompt(system, c, k);
      const uint32_t n_ctx = 4096;
      const auto t0 = Clock::now();
      SyncResult synced;
      auto s = Check(Session::Create(model, Context(flags, n_ctx), prompt, *store, {}, &synced),
                     "create through the store");
      double copy_ms = 0;  // new chunks copied out for the writer, after the first token
      warm[k - 1].push_back(FirstTokenMs(std::move(s), t0, &copy_ms));
      reused[k - 1].push_back(static_cast<double>(synced.n_reused));
      restore[k - 1].push_back(synced.restore_ms);
      decode[k - 1].push_back(synced.decode_ms);
      publish[k - 1].push_back(copy_ms);
      store->WaitForWrites();  // the next turn comes later than a background write takes
      if (conv == 0) {         // cold depends on the length only: one conversation is enough
        const auto t1 = Clock::now();
        auto fresh = Check(Session::Create(model, Context(flags, n_ctx)), "create");
        Check(fresh->AppendTokens(prompt), "prefill");
        cold[k - 1].push_back(FirstTokenMs(std::move(fresh), t1));
      }
    }
  }
  for (int k = 0; k < kTurns; ++k) {
    const double w = Median(warm[k]), cl = Median(cold[k]);
    rows.push_back(
        {{"turn", k + 1},
         {"prompt_tokens", TurnPrompt(system, MakeConversation(*model, 900, kTurns), k + 1).size()},
         {"reused_tokens", Median(reused[k])},
         {"warm_ttft_ms", w},
         {"warm_restore_ms", Median(restore[k])},
         {"warm_decode_ms", Median(decode[k])},
         {"warm_publish_ms", Median(publish[k])},
         {"cold_ttft_ms", cl},
         {"speedup", cl / w},
         {"conversations", n_conv}});
  }
  return rows;
}

// Bytes of the session file Session::Save writes for `n` tokens, from two real files: the format
// is a fixed part plus a fixed number of bytes per token, up to the padding that aligns each
// section to 64 bytes. Checked against every real file saved (within 128 bytes).
struct SessionSizeModel {
  double fixed = 0, per_token = 0;
  uint64_t Bytes(size_t n) const { return static_cast<uint64_t>(fixed + per_token * n + 0.5); }
};

json Dedup(const Flags& flags, const std::shared_ptr<Model>& model, int n_conv) {
  const int kTurns = 8;
  const std::vector<Token> system = SystemTokens(flags, *model, 2000);
  auto store = FreshStore(flags.dir + "/dedup-store", /*sync=*/true);
  const std::string file = flags.dir + "/dedup-turn.kvs";
  std::vector<std::pair<size_t, uint64_t>> real;  // (tokens, bytes) of conversation 0's files
  uint64_t session_bytes = 0;
  std::vector<size_t> turn_tokens;
  double decode_ms = 0;
  size_t decoded = 0, prompt_tokens = 0;
  for (int conv = 0; conv < n_conv; ++conv) {
    std::fprintf(stderr, "[dedup] conversation %d of %d\n", conv + 1, n_conv);
    const Conversation c = MakeConversation(*model, conv, kTurns);
    // One session per conversation, as a chat server keeps one: each turn reuses its own whole
    // chunks and the store's.
    auto s = Check(Session::Create(model, Context(flags, 4096)), "create");
    for (int k = 1; k <= kTurns; ++k) {
      const std::vector<Token> prompt = TurnPrompt(system, c, k);
      auto synced = Check(s->Sync(prompt, *store), "sync");
      decode_ms += synced.decode_ms;
      decoded += synced.n_decoded;
      prompt_tokens += prompt.size();
      turn_tokens.push_back(prompt.size());
      if (conv == 0) {
        Check(s->Save(file), "save");
        real.emplace_back(prompt.size(), FileSize(file));
      }
    }
  }
  store->WaitForWrites();
  SessionSizeModel size;
  // The first and the last file: the padding's error spread over the widest span.
  const auto& last = real.back();
  size.per_token = double(last.second - real[0].second) / double(last.first - real[0].first);
  size.fixed = double(real[0].second) - size.per_token * double(real[0].first);
  for (const auto& [n, bytes] : real) {
    if (std::llabs(static_cast<long long>(size.Bytes(n)) - static_cast<long long>(bytes)) > 128)
      Die("session file size model is off for " + std::to_string(n) +
          " tokens: " + std::to_string(size.Bytes(n)) + " vs " + std::to_string(bytes));
  }
  for (size_t n : turn_tokens) session_bytes += size.Bytes(n);
  auto stats = Check(store->Stats(), "stats");
  const WriterStats w = store->writer_stats();
  return {{"conversations", n_conv},
          {"turns", kTurns},
          {"system_tokens", system.size()},
          {"prompt_tokens_total", prompt_tokens},
          {"decoded_tokens_total", decoded},
          {"decode_ms_total", decode_ms},
          {"store_chunks", stats.chunks},
          {"store_bytes", stats.bytes},
          {"chunks_dropped", w.chunks_dropped},
          {"session_files_bytes", session_bytes},
          {"session_file_bytes_per_token", size.per_token},
          {"ratio", double(session_bytes) / double(stats.bytes)}};
}

// A P-token prefix published through a store with a Redis tier; then, each repetition, a context
// created through the store and the next token decoded: from the local directory (page cache hot)
// and from Redis into an empty directory (loopback). RedisStats splits the Redis restore into the
// EXISTS/GET rounds and the checks; the rest is assembling and llama.cpp's restore.
json RedisRestore(const Flags& flags, const std::shared_ptr<Model>& model, const std::string& shape,
                  int P, int reps) {
  std::fprintf(stderr, "[redis %s P=%d] prefill and publish...\n", shape.c_str(), P);
  std::vector<Token> tokens = SystemTokens(flags, *model, P + 1);
  const std::vector<Token> prefix(tokens.begin(), tokens.begin() + P);
  const uint32_t n_ctx = P + 256;
  const std::string local_dir = flags.dir + "/redis-local-" + shape + std::to_string(P);
  StoreOptions with_redis;
  with_redis.sync = false;
  with_redis.redis_url = flags.redis;
  {
    if (std::system(("rm -rf '" + local_dir + "'").c_str()) != 0) Die("cannot clear");
    auto store = Check(Store::Open(local_dir, with_redis), "open store");
    (void)Check(store->Clear(), "empty the directory and Redis");
    auto s = Check(Session::Create(model, Context(flags, n_ctx)), "create");
    const auto t0 = Clock::now();
    Check(s->Sync(tokens, *store).status(), "sync");
    const double prefill = Ms(t0, Clock::now());
    s.reset();
    store->WaitForWrites();
    if (store->redis_stats().chunks_published == 0) Die("nothing reached Redis");
    json out = {{"shape", shape}, {"tokens", P}, {"cold_ttft_ms", prefill}};
    StoreOptions local_only;
    local_only.sync = false;
    auto local = Check(Store::Open(local_dir, local_only), "open local store");
    std::vector<double> local_ttft, redis_ttft, redis_restore, fetch, check, mbps;
    uint64_t bytes = 0;
    for (int r = 0; r <= reps; ++r) {  // the first is a warm-up
      SyncResult synced;
      auto t1 = Clock::now();
      auto l = Check(Session::Create(model, Context(flags, n_ctx), tokens, *local, {}, &synced),
                     "create through the local store");
      const double lt = Ms(t1, Clock::now());
      if (synced.n_restored != static_cast<size_t>(P)) Die("the local store did not restore P");
      l.reset();
      const std::string empty_dir = local_dir + "-empty";
      if (std::system(("rm -rf '" + empty_dir + "'").c_str()) != 0) Die("cannot clear");
      auto remote = Check(Store::Open(empty_dir, with_redis), "open an empty store with Redis");
      t1 = Clock::now();
      auto s2 = Check(Session::Create(model, Context(flags, n_ctx), tokens, *remote, {}, &synced),
                      "create through Redis");
      const double rt = Ms(t1, Clock::now());
      if (synced.n_restored != static_cast<size_t>(P)) Die("Redis did not restore P tokens");
      const RedisStats st = remote->redis_stats();
      s2.reset();
      remote->WaitForWrites();
      if (r == 0) continue;
      local_ttft.push_back(lt);
      redis_ttft.push_back(rt);
      redis_restore.push_back(synced.restore_ms);
      fetch.push_back(st.fetch_ms);
      check.push_back(st.check_ms);
      bytes = st.bytes_read;
      mbps.push_back(st.bytes_read / 1048576.0 / (st.fetch_ms / 1000.0));
    }
    out["bytes"] = bytes;
    out["local_ttft_ms"] = Median(local_ttft);
    out["redis_ttft_ms"] = Median(redis_ttft);
    out["redis_restore_ms"] = Median(redis_restore);
    out["redis_fetch_ms"] = Median(fetch);
    out["redis_check_ms"] = Median(check);
    out["redis_fetch_mib_s"] = Median(mbps);
    return out;
  }
}

void PrintTables(const json& r) {
  const json& d = r["dedup"];
  if (!d.empty()) {
    std::printf(
        "\n### Dedup: %d conversations x %d turns, %d-token system prompt (small, KV f16)\n\n",
        d["conversations"].get<int>(), d["turns"].get<int>(), d["system_tokens"].get<int>());
    std::printf(
        "| store | one session file per turn | ratio | chunks | prompt tokens | decoded |\n");
    std::printf("|---|---|---|---|---|---|\n");
    std::printf("| %.1f MiB | %.1f MiB | %.1fx | %llu | %llu | %llu |\n",
                d["store_bytes"].get<double>() / 1048576,
                d["session_files_bytes"].get<double>() / 1048576, d["ratio"].get<double>(),
                d["store_chunks"].get<unsigned long long>(),
                d["prompt_tokens_total"].get<unsigned long long>(),
                d["decoded_tokens_total"].get<unsigned long long>());
  }

  std::printf(
      "\n### Restore of a P-token prefix: chunks vs one session file (small, KV f16, "
      "median ms)\n\n");
  std::printf(
      "| P | chunks | page cache | store total | file total | total ratio | store restore "
      "| file restore | restore ratio |\n|---|---|---|---|---|---|---|---|---|\n");
  for (const auto& x : r["restore"]) {
    for (const char* which : {"hot", "cold"}) {
      const json& c = x[which];
      std::printf("| %d | %d | %s | %.1f | %.1f | %.2fx | %.1f | %.1f | %.2fx |\n",
                  x["tokens"].get<int>(), x["chunks"].get<int>(), which,
                  c["store_total_ms"].get<double>(), c["file_total_ms"].get<double>(),
                  c["total_ratio"].get<double>(), c["store_restore_ms"].get<double>(),
                  c["file_restore_ms"].get<double>(), c["restore_ratio"].get<double>());
    }
  }

  std::printf("\n### Time to first token of turn k (small, KV f16, median ms)\n\n");
  std::printf(
      "| turn | prompt tokens | reused | store TTFT | cold TTFT | speed-up | store: restore "
      "| decode | after TTFT: copy-out, free |\n|---|---|---|---|---|---|---|---|---|\n");
  for (const auto& t : r["turns"]) {
    std::printf("| %d | %d | %.0f | %.1f | %.1f | %.1fx | %.1f | %.1f | %.1f |\n",
                t["turn"].get<int>(), t["prompt_tokens"].get<int>(),
                t["reused_tokens"].get<double>(), t["warm_ttft_ms"].get<double>(),
                t["cold_ttft_ms"].get<double>(), t["speedup"].get<double>(),
                t["warm_restore_ms"].get<double>(), t["warm_decode_ms"].get<double>(),
                t["warm_publish_ms"].get<double>());
  }

  if (!r["redis"].empty()) {
    std::printf(
        "\n### A P-token prefix from Redis (loopback) into an empty directory, against the local "
        "directory and a cold prefill (KV f16, median ms)\n\n");
    // The fetch and checks run on Create's second thread while llama.cpp creates the context;
    // "restore" is what follows them (llama.cpp's restore of the assembled state).
    std::printf(
        "| shape | P | MiB | cold TTFT | local TTFT | Redis TTFT | of which EXISTS+GET | checks "
        "| restore | the rest (context, last token) | GET MiB/s |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|\n");
    for (const auto& x : r["redis"]) {
      const double ttft = x["redis_ttft_ms"].get<double>();
      const double restore = x["redis_restore_ms"].get<double>();
      const double fetch = x["redis_fetch_ms"].get<double>();
      const double check = x["redis_check_ms"].get<double>();
      std::printf("| %s | %d | %.1f | %.0f | %.1f | %.1f | %.1f | %.1f | %.1f | %.1f | %.0f |\n",
                  x["shape"].get<std::string>().c_str(), x["tokens"].get<int>(),
                  x["bytes"].get<double>() / 1048576, x["cold_ttft_ms"].get<double>(),
                  x["local_ttft_ms"].get<double>(), ttft, fetch, check, restore,
                  ttft - fetch - check - restore, x["redis_fetch_mib_s"].get<double>());
    }
  }

  std::printf("\n### Chunk-aligned decoding: prefill tokens/s (KV f16, median)\n\n");
  std::printf("| shape | P | free | aligned | aligned/free time |\n|---|---|---|---|---|\n");
  for (const auto& a : r["align"]) {
    std::printf("| %s | %d | %.0f | %.0f | %.3f |\n", a["shape"].get<std::string>().c_str(),
                a["tokens"].get<int>(), a["free_tok_s"].get<double>(),
                a["aligned_tok_s"].get<double>(), a["aligned_over_free"].get<double>());
  }
}

}  // namespace
}  // namespace kvstash

int main(int argc, char** argv) {
  using namespace kvstash;
  const Flags flags = ParseFlags(argc, argv);
  mkdir(flags.dir.c_str(), 0755);
  auto small = LoadShape(flags, "small");
  auto run = [&flags](const char* what) { return flags.only.empty() || flags.only == what; };
  json r = {{"dedup", json::object()},
            {"restore", json::array()},
            {"turns", json::array()},
            {"align", json::array()},
            {"redis", json::array()}};
  if (run("dedup")) r["dedup"] = Dedup(flags, small, flags.quick ? 4 : 50);
  for (int P : flags.quick ? std::vector<int>{2048} : std::vector<int>{2048, 8192})
    if (run("restore")) r["restore"].push_back(Restore(flags, small, P, flags.quick ? 2 : 5));
  if (run("turns")) r["turns"] = Turns(flags, small, flags.quick ? 1 : 3);
  if (run("align")) r["align"].push_back(Align(flags, small, "small", 2048, flags.quick ? 1 : 3));
  if (!flags.quick && run("align")) {
    r["align"].push_back(Align(flags, small, "small", 8192, 1));
    auto big = LoadShape(flags, "bench");
    r["align"].push_back(Align(flags, big, "bench", 2048, 1));
  }
  if (!flags.redis.empty() && run("redis")) {
    const int reps = flags.quick ? 1 : 3;
    for (int P : flags.quick ? std::vector<int>{2048} : std::vector<int>{2048, 8192})
      r["redis"].push_back(RedisRestore(flags, small, "small", P, reps));
    if (!flags.quick) {
      auto big = LoadShape(flags, "bench");
      r["redis"].push_back(RedisRestore(flags, big, "bench", 2048, reps));
    }
  }
  PrintTables(r);
  if (!flags.json_path.empty()) {
    std::ofstream out(flags.json_path);
    out << r.dump(2) << "\n";
  }
  return 0;
}
