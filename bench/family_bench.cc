// kvstash-family-bench: sessions and the prefix store for each memory kind, side by side, on
// generated models of one shape: llama (plain KV), gemma3 (iSWA), lfm2 (hybrid), mamba2
// (recurrent). For a P-token prefix, a 32-token question and one generated token:
//   cold TTFT         Session::Create + Append(prefix + question) + 1 token;
//   session file      Save size, Open (page cache hot), warm TTFT = Open + Append(question) + 1;
//   prefix store      chunks of 256 tokens published by Sync(prefix), then Create +
//                     Sync(prefix + question) + 1 token, the tokens it restored, and what one
//                     chunk holds (main KV cells, window cells, snapshot; P: snapshot every P).
//
//   kvstash-family-bench [--shape small] [--prefix-lengths 2048,8192] [--reps 3]
//                        [--families llama,gemma3,lfm2,mamba2] [-t THREADS] [--dir DIR]
//                        [--json FILE]
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "bench_util.h"
#include "format/chunk_format.h"
#include "kvstash/model.h"
#include "kvstash/session.h"
#include "kvstash/store.h"
#include "testmodel/test_model.h"

namespace kvstash {
namespace {

using namespace bench;  // NOLINT: Ms, Median, Die, Check, ...
using nlohmann::json;

constexpr uint32_t kChunkTokens = 256;
constexpr size_t kQuestionTokens = 32;

struct Flags {
  std::string shape = "small";
  std::vector<int> prefix_lengths = {2048};
  std::vector<std::string> families = {"llama", "gemma3", "lfm2", "mamba2"};
  int reps = 3;
  int threads = 0;
  std::string dir = "build/family-bench-work";
  std::string json_path;
};

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

[[noreturn]] void Usage() {
  Die("usage: kvstash-family-bench [--shape tiny|small|bench] [--prefix-lengths 2048,8192] "
      "[--reps 3] [--families llama,gemma3,lfm2,mamba2] [-t THREADS] [--dir DIR] [--json FILE]");
}

Flags ParseFlags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Usage();
      return argv[++i];
    };
    if (arg == "--shape") {
      f.shape = value();
    } else if (arg == "--prefix-lengths") {
      f.prefix_lengths.clear();
      for (const auto& p : Split(value())) f.prefix_lengths.push_back(std::stoi(p));
    } else if (arg == "--families") {
      f.families = Split(value());
    } else if (arg == "--reps") {
      f.reps = std::max(1, std::stoi(value()));
    } else if (arg == "-t" || arg == "--threads") {
      f.threads = std::stoi(value());
    } else if (arg == "--dir") {
      f.dir = value();
    } else if (arg == "--json") {
      f.json_path = value();
    } else {
      Usage();
    }
  }
  return f;
}

// q8_0 weights and the vocab kvstash-bench and kvstash-store-bench use for the same shape, so the
// llama rows line up with their numbers. One file per family and shape, kept between runs.
std::shared_ptr<Model> LoadFamily(const Flags& flags, const std::string& family) {
  TestModelSpec spec;
  spec.arch = Check(ParseTestArch(family), "family");
  spec.shape = Check(ParseTestShape(flags.shape), "shape");
  spec.vocab = flags.shape == "bench" ? TestVocab::kBpe : TestVocab::kSpm;
  spec.type = TestWeightType::kQ8_0;
  const std::string path = flags.dir + "/" + flags.shape + "-" + family + "-q8_0.gguf";
  if (access(path.c_str(), R_OK) != 0) Check(WriteTestModel(spec, path), "make model");
  return Check(Model::Load(path), "load model");
}

// `n` tokens of `text` repeated (tokenized once, so the cut is the only partial word).
std::vector<Token> RepeatedTokens(const Model& model, const std::string& text, size_t n,
                                  bool add_bos) {
  std::string all;
  while (all.size() < 8 * n + 64) all += text;
  auto tokens = Check(model.Tokenize(all, add_bos), "tokenize");
  if (tokens.size() < n) Die("text too short for " + std::to_string(n) + " tokens");
  tokens.resize(n);
  return tokens;
}

// One measured case: a model, its context and the three token sequences.
struct Case {
  std::string family;
  std::shared_ptr<Model> model;
  SessionOptions options;
  std::vector<Token> prefix, question, full;  // full = prefix + question
};

Case MakeCase(const Flags& flags, const std::string& family, std::shared_ptr<Model> model, int P) {
  Case c;
  c.family = family;
  c.model = std::move(model);
  c.options.n_ctx = static_cast<uint32_t>(P + 256);  // as kvstash-bench: room for the question
  c.options.n_threads = flags.threads;
  c.prefix = RepeatedTokens(*c.model,
                            " The store opens at seven, closes at nineteen, and offers key "
                            "cutting, paint matching, tool rental and delivery.",
                            P, /*add_bos=*/true);
  c.question = RepeatedTokens(
      *c.model, " Customer: can I rent a tile saw for the weekend, and what does it cost? Atlas:",
      kQuestionTokens, /*add_bos=*/false);
  c.full = c.prefix;
  c.full.insert(c.full.end(), c.question.begin(), c.question.end());
  return c;
}

void OneToken(Session& s) {
  SampleOptions one;
  one.n_predict = 1;
  Check(s.Generate(one).status(), "generate");
}

// No warm-up run: the publish before it already touched every weight, and a cold prefill of 8k
// tokens is the most expensive step of the whole benchmark.
double ColdTtftMs(const Case& c, int reps) {
  std::vector<double> ms;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    auto s = Check(Session::Create(c.model, c.options), "create");
    Check(s->AppendTokens(c.full), "append prefix + question");
    OneToken(*s);
    ms.push_back(Ms(t0, Clock::now()));
  }
  return Median(ms);
}

// Decodes the prefix once, through the store: its chunks are published and the same session is
// saved as the session file (both hold exactly the prefix).
void Publish(const Case& c, Store& store, const std::string& file) {
  auto s = Check(Session::Create(c.model, c.options), "create");
  Check(s->Sync(c.prefix, store).status(), "publish");
  SaveOptions no_fsync;
  no_fsync.sync = false;  // the disk's fsync is not what is compared here
  Check(s->Save(file, no_fsync), "save");
  s.reset();  // the new chunks are copied out for the writer when the session ends
  store.WaitForWrites();
}

// A file Session::Open refuses is reported in the row (open_error), not fatal: the other
// families' numbers and this family's store numbers still get measured.
json SessionFileNumbers(const Case& c, const std::string& file, int reps) {
  SessionOptions open;
  open.n_threads = c.options.n_threads;
  auto probe = Session::Open(c.model, file, open);
  if (!probe.ok()) {
    std::fprintf(stderr, "Session::Open refused: %s\n", probe.status().message().c_str());
    return {{"session_bytes", FileSize(file)},
            {"open_error", probe.status().message()},
            {"open_ms", nullptr},
            {"warm_ttft_ms", nullptr}};
  }
  probe->reset();
  const double open_ms = MedianOf(reps, [&] {
    const auto t0 = Clock::now();
    auto s = Check(Session::Open(c.model, file, open), "open");
    return Ms(t0, Clock::now());
  });
  const double warm_ms = MedianOf(reps, [&] {
    const auto t0 = Clock::now();
    auto s = Check(Session::Open(c.model, file, open), "open");
    Check(s->AppendTokens(c.question), "append question");
    OneToken(*s);
    return Ms(t0, Clock::now());
  });
  return {{"session_bytes", FileSize(file)}, {"open_ms", open_ms}, {"warm_ttft_ms", warm_ms}};
}

// Create + Sync(prefix + question) through the store + 1 token. The question's tokens make no
// whole chunk, so the store is the same for every repetition.
json StoreNumbers(const Case& c, Store& store, int reps) {
  size_t restored = 0, decoded = 0;
  double restore_ms = 0;
  const double ttft = MedianOf(reps, [&] {
    const auto t0 = Clock::now();
    auto s = Check(Session::Create(c.model, c.options), "create");
    const SyncResult r = Check(s->Sync(c.full, store), "sync through the store");
    OneToken(*s);
    const double ms = Ms(t0, Clock::now());
    restored = r.n_restored;
    decoded = r.n_decoded;
    restore_ms = r.restore_ms;
    return ms;
  });
  return {{"store_warm_ttft_ms", ttft},
          {"restored_tokens", restored},
          {"decoded_tokens", decoded},
          {"restore_ms", restore_ms}};
}

format::ChunkHeader ReadChunkHeader(const ChunkInfo& chunk) {
  std::ifstream in(chunk.path, std::ios::binary);
  uint8_t head[format::kChunkHeaderSize];
  if (!in.read(reinterpret_cast<char*>(head), sizeof(head))) Die("cannot read " + chunk.path);
  return Check(format::ParseChunkHeader(head, sizeof(head), chunk.bytes, chunk.path),
               "chunk header");
}

// What the chunk files hold, from their headers: per chunk on average, the main KV cells, the
// window cells (iSWA) and the snapshot (recurrent, hybrid: only every P-th chunk has one). The
// parts must add up to the file sizes, or the format and this reading of it disagree.
json ChunkBytes(const Store& store) {
  const auto chunks = Check(store.List(), "list");
  if (chunks.empty()) Die("the store holds no chunk");
  uint64_t main = 0, window = 0, snapshot = 0, files = 0;
  format::ChunkLayout layout;
  for (const auto& chunk : chunks) {
    const format::ChunkHeader h = ReadChunkHeader(chunk);
    layout = h.layout;
    const uint64_t m = layout.KvBytes(h.n_tokens);
    const uint64_t w =
        layout.kind == format::MemoryKind::kIswa ? layout.Swa().KvBytes(layout.swa_cells) : 0;
    const uint64_t s = layout.HasSnapshot(h.index) ? layout.snapshot_bytes : 0;
    const uint64_t expected = format::kChunkHeaderSize + 4ull * h.n_tokens + m + w + s;
    if (expected != chunk.bytes) {
      Die(chunk.path + ": " + std::to_string(chunk.bytes) +
          " bytes, the header's parts add up to " + std::to_string(expected));
    }
    main += m;
    window += w;
    snapshot += s;
    files += chunk.bytes;
  }
  const double n = static_cast<double>(chunks.size());
  return {{"kind", format::MemoryKindName(layout.kind)},
          {"chunks", chunks.size()},
          {"chunk_file_bytes_avg", files / n},
          {"main_bytes_per_chunk", main / n},
          {"window_bytes_per_chunk", window / n},
          {"snapshot_bytes_per_chunk", snapshot / n},
          {"snapshot_bytes", layout.snapshot_bytes},
          {"snapshot_share", files ? double(snapshot) / double(files) : 0.0},
          {"snapshot_every", layout.snapshot_every}};
}

// The tokens a store lookup can restore: every whole chunk of the prefix, for recurrent and
// hybrid memories only up to the last chunk with a snapshot.
size_t ExpectedRestored(const json& chunks, int P) {
  const size_t whole = P / kChunkTokens;
  const size_t every = chunks["snapshot_every"].get<size_t>();
  return (every == 0 ? whole : whole / every * every) * kChunkTokens;
}

std::string FreshDir(const std::string& parent) {
  std::string dir = parent + "/store-XXXXXX";
  if (mkdtemp(dir.data()) == nullptr) Die("mkdtemp in " + parent);
  return dir;
}

json RunCase(const Flags& flags, const Case& c, int P) {
  const std::string tag = "[" + flags.shape + " " + c.family + " P=" + std::to_string(P) + "] ";
  const std::string file = flags.dir + "/" + flags.shape + "-" + c.family + ".kvs";
  const std::string store_dir = FreshDir(flags.dir);
  StoreOptions store_options;
  store_options.chunk_tokens = kChunkTokens;
  store_options.sync = false;  // no fsync: the store's reads and restores are measured
  auto store = Check(Store::Open(store_dir, store_options), "open store");
  std::fprintf(stderr, "%spublish...\n", tag.c_str());
  Publish(c, *store, file);
  std::fprintf(stderr, "%scold...\n", tag.c_str());
  json row = {{"shape", flags.shape},
              {"family", c.family},
              {"prefix_tokens", P},
              {"question_tokens", c.question.size()},
              {"n_ctx", c.options.n_ctx.value_or(SessionOptions::kDefaultContext)},
              {"n_ctx_train", c.model->n_ctx_train()},
              {"cold_ttft_ms", ColdTtftMs(c, flags.reps)}};
  std::fprintf(stderr, "%ssession file...\n", tag.c_str());
  row.update(SessionFileNumbers(c, file, flags.reps));
  std::fprintf(stderr, "%sstore...\n", tag.c_str());
  row.update(StoreNumbers(c, *store, flags.reps));
  row["chunk"] = ChunkBytes(*store);
  row["kind"] = row["chunk"]["kind"];
  row["expected_restored_tokens"] = ExpectedRestored(row["chunk"], P);
  store.reset();
  unlink(file.c_str());
  if (std::system(("rm -rf '" + store_dir + "'").c_str()) != 0) Die("cannot remove " + store_dir);
  return row;
}

std::string Bytes(double b) {
  char out[32];
  if (b >= 1048576) {
    std::snprintf(out, sizeof(out), "%.2f MiB", b / 1048576);
  } else if (b >= 1024) {
    std::snprintf(out, sizeof(out), "%.1f KiB", b / 1024);
  } else {
    std::snprintf(out, sizeof(out), "%.0f B", b);
  }
  return out;
}

void PrintRow(const json& r) {
  const json& ch = r["chunk"];
  const size_t restored = r["restored_tokens"].get<size_t>(),
               expected = r["expected_restored_tokens"].get<size_t>();
  const uint32_t every = ch["snapshot_every"].get<uint32_t>();
  const std::string ctx = r["n_ctx"].get<int>() > r["n_ctx_train"].get<int>() ? " *" : "";
  const bool refused = r.contains("open_error");
  auto ms = [&](const char* key, const char* format) {
    if (refused) return std::string("refused");
    char out[32];
    std::snprintf(out, sizeof(out), format, r[key].get<double>());
    return std::string(out);
  };
  std::printf(
      "| %s | %s | %d%s | %.1f | %s | %s | %s | %.1f | %zu%s | %s / %s / %s (%.0f%%) | %s |\n",
      r["family"].get<std::string>().c_str(), r["kind"].get<std::string>().c_str(),
      r["prefix_tokens"].get<int>(), ctx.c_str(), r["cold_ttft_ms"].get<double>(),
      Bytes(r["session_bytes"].get<double>()).c_str(), ms("open_ms", "%.2f").c_str(),
      ms("warm_ttft_ms", "%.1f").c_str(), r["store_warm_ttft_ms"].get<double>(), restored,
      restored == expected ? "" : (" (expected " + std::to_string(expected) + "!)").c_str(),
      Bytes(ch["main_bytes_per_chunk"].get<double>()).c_str(),
      Bytes(ch["window_bytes_per_chunk"].get<double>()).c_str(),
      Bytes(ch["snapshot_bytes_per_chunk"].get<double>()).c_str(),
      100 * ch["snapshot_share"].get<double>(), every ? std::to_string(every).c_str() : "-");
}

void PrintTable(const Flags& flags, const std::vector<json>& rows) {
  std::printf(
      "\n### Memory kinds, shape %s (q8_0 weights, KV f16, %zu-token question, 1 token; median "
      "of %d; store chunks of %u tokens)\n\n",
      flags.shape.c_str(), kQuestionTokens, flags.reps, kChunkTokens);
  std::printf(
      "| family | kind | prefix | cold TTFT ms | session bytes | open ms | warm TTFT ms | store "
      "warm TTFT ms | restored tokens | chunk bytes (main / window / snapshot per chunk; "
      "snapshot share) | snapshot every P |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|\n");
  bool beyond_train = false;
  std::vector<std::string> refusals;
  for (const auto& r : rows) {
    PrintRow(r);
    beyond_train = beyond_train || r["n_ctx"].get<int>() > r["n_ctx_train"].get<int>();
    if (r.contains("open_error")) {
      refusals.push_back(r["family"].get<std::string>() +
                         " P=" + std::to_string(r["prefix_tokens"].get<int>()) + ": " +
                         r["open_error"].get<std::string>());
    }
  }
  if (!refusals.empty()) std::printf("\nSession::Open refused the saved file:\n\n");
  for (const auto& why : refusals) std::printf("- %s\n", why.c_str());
  if (beyond_train) {
    std::printf(
        "\n\\* the context (prefix + 256) is longer than the model's training context; llama.cpp "
        "runs it all the same (the weights are random: only the timings matter).\n");
  }
}

}  // namespace
}  // namespace kvstash

int main(int argc, char** argv) {
  using namespace kvstash;
  const Flags flags = ParseFlags(argc, argv);
  mkdir(flags.dir.c_str(), 0755);
  std::vector<json> rows;
  for (const auto& family : flags.families) {
    auto model = LoadFamily(flags, family);
    for (int P : flags.prefix_lengths) {
      json row = RunCase(flags, MakeCase(flags, family, model, P), P);
      std::fprintf(stderr, "%s\n", row.dump().c_str());
      rows.push_back(row);
    }
  }
  PrintTable(flags, rows);
  if (!flags.json_path.empty()) {
    std::ofstream out(flags.json_path);
    out << json(rows).dump(2) << "\n";
  }
  return 0;
}
