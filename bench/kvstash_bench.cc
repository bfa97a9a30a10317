// kvstash-bench: kvstash's session files against llama.cpp's own, and against the physical floor
// (fread / memcpy of the same bytes), on generated models of real shapes. Every ratio is computed
// from medians measured in the same run, pair by pair. db_bench-style: one binary, flags, tables.
//
//   kvstash-bench --shapes small,bench --prefix-lengths 512,2048,8192 --reps 5 --json out.json
#include <fcntl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "bench_util.h"
#include "engine/session_internals.h"
#include "env/env.h"
#include "kvstash/session.h"
#include "llama.h"
#include "testmodel/test_model.h"

namespace kvstash {
namespace {

using namespace bench;  // NOLINT: Ms, Median, Die, Check, ...
using nlohmann::json;

SessionOptions ThreadsOnly(int threads) {
  SessionOptions options;
  options.n_threads = threads;
  return options;
}

double FreadMs(const std::string& path, std::vector<char>* buffer) {
  const auto t0 = Clock::now();
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) Die("cannot open " + path);
  const size_t got = std::fread(buffer->data(), 1, buffer->size(), f);
  std::fclose(f);
  const auto t1 = Clock::now();
  if (got != buffer->size()) Die("short read of " + path);
  return Ms(t0, t1);
}

// `dd of=path conv=fsync`: truncate the existing file, write, fsync.
double WriteFsyncMs(const std::string& path, const std::vector<char>& bytes) {
  const auto t0 = Clock::now();
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = write(fd, bytes.data() + done, bytes.size() - done);
    if (n <= 0) Die("write failed");
    done += static_cast<size_t>(n);
  }
  fsync(fd);
  close(fd);
  return Ms(t0, Clock::now());
}

// Memory of a fresh child process (MiB, from /proc/self/status) that loads the model and then
// either opens the session or creates an empty session with the same context size. The difference
// of the two peaks is what loading a session costs in memory beyond any context.
struct RssReport {
  double after_model_mib = 0;  // VmRSS after Model::Load
  double peak_mib = 0;         // VmHWM after Open (or Create)
  double anon_mib = 0;         // RssAnon after Open (or Create)
};
RssReport MeasureRss(const std::string& model_path, const std::string& session_path, uint32_t n_ctx,
                     bool open_session) {
  int pipefd[2];
  if (pipe(pipefd) != 0) Die("pipe");
  const pid_t child = fork();
  if (child == 0) {
    close(pipefd[0]);
    auto read_kib = [](const char* key) {
      std::ifstream status("/proc/self/status");
      std::string line;
      while (std::getline(status, line)) {
        if (line.rfind(key, 0) == 0) return std::atof(line.c_str() + std::strlen(key));
      }
      return 0.0;
    };
    RssReport report;
    auto model = Model::Load(model_path);
    report.after_model_mib = read_kib("VmRSS:") / 1024;
    if (model.ok()) {
      SessionOptions options;
      options.n_ctx = n_ctx;
      auto session =
          open_session ? Session::Open(*model, session_path) : Session::Create(*model, options);
      report.peak_mib = session.ok() ? read_kib("VmHWM:") / 1024 : -1;
      report.anon_mib = read_kib("RssAnon:") / 1024;
    }
    if (write(pipefd[1], &report, sizeof(report)) != sizeof(report)) _exit(1);
    _exit(0);
  }
  close(pipefd[1]);
  RssReport report;
  if (read(pipefd[0], &report, sizeof(report)) != sizeof(report)) Die("rss child failed");
  close(pipefd[0]);
  waitpid(child, nullptr, 0);
  return report;
}

std::vector<std::string> Split(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string item;
  while (std::getline(in, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

struct Flags {
  std::vector<std::string> shapes = {"small", "bench"};
  std::vector<int> prefix_lengths = {512, 2048, 8192};
  int max_bench_prefix = 2048;  // bench shape: 8192 costs minutes per cold prefill on 2 cores
  std::vector<std::string> cache_types = {"f16", "q8_0"};
  int reps = 5;
  int cold_reps = 5;
  int suffix = 16;
  int threads = 0;
  std::string dir = "build/bench-work";
  std::string json_path;
};

Flags ParseFlags(int argc, char** argv) {
  Flags f;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) Die("missing value for " + arg);
      return argv[++i];
    };
    if (arg == "--shapes")
      f.shapes = Split(value());
    else if (arg == "--prefix-lengths") {
      f.prefix_lengths.clear();
      for (const auto& p : Split(value())) f.prefix_lengths.push_back(std::stoi(p));
    } else if (arg == "--max-bench-prefix")
      f.max_bench_prefix = std::stoi(value());
    else if (arg == "--cache-types")
      f.cache_types = Split(value());
    else if (arg == "--reps")
      f.reps = std::stoi(value());
    else if (arg == "--cold-reps")
      f.cold_reps = std::stoi(value());
    else if (arg == "--suffix")
      f.suffix = std::stoi(value());
    else if (arg == "-t" || arg == "--threads")
      f.threads = std::stoi(value());
    else if (arg == "--dir")
      f.dir = value();
    else if (arg == "--json")
      f.json_path = value();
    else if (arg == "-h" || arg == "--help") {
      std::puts(
          "kvstash-bench [--shapes small,bench] [--prefix-lengths 512,2048,8192]\n"
          "              [--max-bench-prefix 2048] [--cache-types f16,q8_0] [--reps 5]\n"
          "              [--cold-reps 5] [--suffix 16] [-t THREADS] [--dir DIR] [--json FILE]");
      std::exit(0);
    } else {
      Die("unknown flag " + arg + " (see --help)");
    }
  }
  return f;
}

// Real text, repeated: tokens of natural prose, like a long system prompt.
std::vector<Token> PrefixTokens(const Model& model, int n) {
  std::string text;
  for (int i = 0; text.size() < static_cast<size_t>(n) * 8; ++i) {
    text += " Section " + std::to_string(i) +
            ": the store opens at seven, closes at nineteen, and offers key cutting, paint "
            "matching, tool rental and delivery within twenty-five miles of every location.";
  }
  auto tokens = Check(model.Tokenize(text, true), "tokenize");
  tokens.resize(n);
  return tokens;
}

json RunCase(const Flags& flags, const std::shared_ptr<Model>& model, const std::string& shape,
             const std::string& cache_type, int P) {
  const std::string base = flags.dir + "/" + shape + "-" + cache_type + "-" + std::to_string(P);
  const std::string kvs_sync = base + ".kvs", kvs_nosync = base + "-nosync.kvs",
                    llama_file = base + ".llama", raw_file = base + ".raw";
  SessionOptions options;
  options.n_ctx = static_cast<uint32_t>(P + 256);
  options.n_threads = flags.threads;
  options.cache_type_k = cache_type;
  options.cache_type_v = cache_type;
  const std::vector<Token> prefix = PrefixTokens(*model, P);
  std::vector<Token> suffix = Check(model->Tokenize(" Customer: when do you open on Saturday, and "
                                                    "can I rent a tile saw for a weekend? Atlas:",
                                                    false),
                                    "tokenize");
  suffix.resize(flags.suffix);

  std::fprintf(stderr, "[%s KV=%s P=%d] prefill...\n", shape.c_str(), cache_type.c_str(), P);
  auto session = Check(Session::Create(model, options), "create");
  auto t0 = Clock::now();
  Check(session->AppendTokens(prefix), "prefill");
  const double prefill_ms = Ms(t0, Clock::now());
  llama_context* ctx = SessionInternals::Context(*session);
  const uint64_t kv_bytes = llama_state_seq_get_size(ctx, 0);

  // --- save -------------------------------------------------------------------------------
  std::fprintf(stderr, "[%s KV=%s P=%d] save...\n", shape.c_str(), cache_type.c_str(), P);
  SaveOptions sync_on, sync_off;
  sync_off.sync = false;
  Check(session->Save(kvs_sync, sync_on), "save");
  const uint64_t file_bytes = FileSize(kvs_sync);
  std::vector<char> bytes(file_bytes);
  {
    std::ifstream in(kvs_sync, std::ios::binary);
    in.read(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  }
  // The four writers take turns within each repetition, each after a sync(2) so that none pays
  // for another's dirty pages, and each replaces a file of the same size, as a re-save would.
  std::vector<double> save_fsync_ms, save_nosync_ms, llama_save_ms, raw_fsync_ms;
  Check(session->Save(kvs_nosync, sync_off), "save");
  WriteFsyncMs(raw_file, bytes);
  llama_state_seq_save_file(ctx, llama_file.c_str(), 0, prefix.data(), prefix.size());
  for (int rep = 0; rep < flags.reps; ++rep) {
    sync();
    auto a = Clock::now();
    Check(session->Save(kvs_sync, sync_on), "save");
    save_fsync_ms.push_back(Ms(a, Clock::now()));
    sync();
    a = Clock::now();
    Check(session->Save(kvs_nosync, sync_off), "save");
    save_nosync_ms.push_back(Ms(a, Clock::now()));
    sync();
    a = Clock::now();
    if (llama_state_seq_save_file(ctx, llama_file.c_str(), 0, prefix.data(), prefix.size()) == 0) {
      Die("llama_state_seq_save_file failed");
    }
    llama_save_ms.push_back(Ms(a, Clock::now()));
    sync();
    raw_fsync_ms.push_back(WriteFsyncMs(raw_file, bytes));
  }
  sync();
  const double save_fsync = Median(save_fsync_ms), save_nosync = Median(save_nosync_ms),
               llama_save = Median(llama_save_ms), raw_fsync = Median(raw_fsync_ms);
  unlink(raw_file.c_str());
  unlink(kvs_nosync.c_str());

  // --- load, page cache hot and cold ------------------------------------------------------
  std::fprintf(stderr, "[%s KV=%s P=%d] load...\n", shape.c_str(), cache_type.c_str(), P);
  auto host = Check(Session::Open(model, kvs_sync), "open");  // its context hosts llama's loads
  llama_context* host_ctx = SessionInternals::Context(*host);
  std::vector<llama_token> token_buffer(P + 16);
  std::vector<char> read_buffer(file_bytes, 1), copy_target(file_bytes, 2);
  json load;
  for (bool cold : {false, true}) {
    OpenStats open_stats;
    std::vector<double> open_total, kv_load, kv_load_copy, llama_load, fread_ms, memcpy_ms;
    bool leased = true;
    for (int rep = -1; rep < flags.reps; ++rep) {  // rep -1: warm-up, not recorded
      if (cold) EvictFromPageCache(kvs_sync);
      auto opened = Check(Session::Open(model, kvs_sync, ThreadsOnly(flags.threads)), "open");
      const OpenStats st = opened->open_stats();  // a copy: `opened` is freed next
      opened.reset();
      leased = leased && st.leased;
      // The fallback when no lease can be had: a private copy of the file.
      if (cold) EvictFromPageCache(kvs_sync);
      Env::Default()->set_read_leases(false);
      auto copied = Check(Session::Open(model, kvs_sync, ThreadsOnly(flags.threads)), "open");
      Env::Default()->set_read_leases(true);
      const OpenStats cst = copied->open_stats();
      copied.reset();
      if (cold) EvictFromPageCache(llama_file);
      llama_memory_seq_rm(llama_get_memory(host_ctx), 0, -1, -1);
      size_t n_loaded = 0;
      auto a = Clock::now();
      if (llama_state_seq_load_file(host_ctx, llama_file.c_str(), 0, token_buffer.data(),
                                    token_buffer.size(), &n_loaded) == 0) {
        Die("llama_state_seq_load_file failed");
      }
      const double llama_ms = Ms(a, Clock::now());
      if (cold) EvictFromPageCache(kvs_sync);
      const double fr = FreadMs(kvs_sync, &read_buffer);
      a = Clock::now();
      std::memcpy(copy_target.data(), read_buffer.data(), file_bytes);
      const double mc = Ms(a, Clock::now());
      if (rep < 0) continue;
      open_total.push_back(st.total_ms);
      kv_load.push_back(st.map_ms + st.verify_ms + st.restore_ms);
      kv_load_copy.push_back(cst.map_ms + cst.verify_ms + cst.restore_ms);
      llama_load.push_back(llama_ms);
      fread_ms.push_back(fr);
      memcpy_ms.push_back(mc);
      open_stats = st;
    }
    load[cold ? "cold" : "hot"] = {{"open_total_ms", Median(open_total)},
                                   {"kvstash_load_ms", Median(kv_load)},
                                   {"kvstash_load_copy_ms", Median(kv_load_copy)},
                                   {"leased", leased},
                                   {"llama_load_ms", Median(llama_load)},
                                   {"fread_ms", Median(fread_ms)},
                                   {"memcpy_ms", Median(memcpy_ms)},
                                   {"last_open",
                                    {{"map_ms", open_stats.map_ms},
                                     {"verify_ms", open_stats.verify_ms},
                                     {"context_ms", open_stats.context_ms},
                                     {"restore_ms", open_stats.restore_ms}}}};
  }
  host.reset();

  // --- time to first token ----------------------------------------------------------------
  std::fprintf(stderr, "[%s KV=%s P=%d] ttft...\n", shape.c_str(), cache_type.c_str(), P);
  SampleOptions one;
  one.n_predict = 1;
  std::vector<double> warm_ttft, warm_open, warm_suffix;
  std::vector<Token> warm_token, cold_token;
  for (int rep = -1; rep < flags.reps; ++rep) {
    auto a = Clock::now();
    auto w = Check(Session::Open(model, kvs_sync, ThreadsOnly(flags.threads)), "open");
    auto b = Clock::now();
    Check(w->AppendTokens(suffix), "suffix");
    auto c = Clock::now();
    auto gen = Check(w->Generate(one), "generate");
    auto d = Clock::now();
    warm_token = gen.tokens;
    if (rep < 0) continue;
    warm_ttft.push_back(Ms(a, d));
    warm_open.push_back(Ms(a, b));
    warm_suffix.push_back(Ms(b, c) + Ms(c, d));
  }
  const double cold_ttft = MedianOf(flags.cold_reps, [&] {
    auto a = Clock::now();
    auto s = Check(Session::Create(model, options), "create");
    Check(s->AppendTokens(prefix), "prefill");
    Check(s->AppendTokens(suffix), "suffix");
    auto gen = Check(s->Generate(one), "generate");
    cold_token = gen.tokens;
    return Ms(a, Clock::now());
  });

  const RssReport rss_open = MeasureRss(model->path(), kvs_sync, 0, true);
  const RssReport rss_create = MeasureRss(
      model->path(), kvs_sync, options.n_ctx.value_or(SessionOptions::kDefaultContext), false);
  unlink(llama_file.c_str());
  const double model_mib = FileSize(model->path()) / 1048576.0;
  json row = {{"shape", shape},
              {"cache_type", cache_type},
              {"prefix_tokens", P},
              {"suffix_tokens", flags.suffix},
              {"kv_bytes", kv_bytes},
              {"file_bytes", file_bytes},
              {"size_ratio", double(file_bytes) / double(kv_bytes + P * sizeof(Token))},
              {"prefill_ms", prefill_ms},
              {"save",
               {{"kvstash_fsync_ms", save_fsync},
                {"kvstash_nosync_ms", save_nosync},
                {"llama_save_ms", llama_save},
                {"raw_write_fsync_ms", raw_fsync}}},
              {"load", load},
              {"ttft",
               {{"cold_ms", cold_ttft},
                {"warm_ms", Median(warm_ttft)},
                {"warm_open_ms", Median(warm_open)},
                {"warm_suffix_ms", Median(warm_suffix)},
                {"same_first_token", warm_token == cold_token}}},
              {"rss",
               {{"model_file_mib", model_mib},
                {"after_model_load_mib", rss_open.after_model_mib},
                {"peak_open_mib", rss_open.peak_mib},
                {"anon_after_open_mib", rss_open.anon_mib},
                {"peak_create_mib", rss_create.peak_mib},
                {"anon_after_create_mib", rss_create.anon_mib},
                {"budget_mib", rss_open.after_model_mib + kv_bytes / 1048576.0 + 64}}}};
  return row;
}

void PrintTables(const std::vector<json>& rows) {
  std::printf("\n### Load (median ms; page cache hot, then cold)\n\n");
  std::printf(
      "kvstash = lease + map + checks + checksums + restore (the bytes verified are the bytes "
      "restored); copy = the same through a private copy (no lease possible).\n\n");
  std::printf(
      "| shape | KV | P | file MiB | page cache | kvstash | copy | llama.cpp load | fread | "
      "kvstash/fread | kvstash/llama | copy/fread | Open total (incl. context) |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const auto& r : rows) {
    for (const char* cache : {"hot", "cold"}) {
      const auto& h = r["load"][cache];
      const double kv = h["kvstash_load_ms"], cp = h["kvstash_load_copy_ms"],
                   ll = h["llama_load_ms"], fr = h["fread_ms"];
      std::printf(
          "| %s | %s | %d | %.1f | %s%s | %.2f | %.2f | %.2f | %.2f | %.2fx | %.2fx | %.2fx | "
          "%.2f |\n",
          r["shape"].get<std::string>().c_str(), r["cache_type"].get<std::string>().c_str(),
          r["prefix_tokens"].get<int>(), r["file_bytes"].get<double>() / 1048576.0, cache,
          h["leased"].get<bool>() ? "" : " (no lease!)", kv, cp, ll, fr, kv / fr, kv / ll, cp / fr,
          h["open_total_ms"].get<double>());
    }
  }
  std::printf("\n### Save (median ms)\n\n");
  std::printf(
      "| shape | KV | P | kvstash fsync | kvstash no sync | llama.cpp save (no fsync) | "
      "write+fsync of the bytes | nosync/llama | fsync/raw |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  for (const auto& r : rows) {
    const auto& s = r["save"];
    const double f = s["kvstash_fsync_ms"], n = s["kvstash_nosync_ms"], l = s["llama_save_ms"],
                 w = s["raw_write_fsync_ms"];
    std::printf("| %s | %s | %d | %.1f | %.1f | %.1f | %.1f | %.2fx | %.2fx |\n",
                r["shape"].get<std::string>().c_str(), r["cache_type"].get<std::string>().c_str(),
                r["prefix_tokens"].get<int>(), f, n, l, w, n / l, f / w);
  }
  std::printf("\n### Time to first token, size, memory\n\n");
  std::printf(
      "| shape | KV | P | prefill ms | cold TTFT | warm TTFT | speed-up | warm/(open+suffix) | "
      "same token | file/(KV+tokens) | peak RSS Open (budget) | peak RSS Create | anon Open-Create "
      "|\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const auto& r : rows) {
    const auto& t = r["ttft"];
    const double cold = t["cold_ms"], warm = t["warm_ms"],
                 parts = t["warm_open_ms"].get<double>() + t["warm_suffix_ms"].get<double>();
    const auto& m = r["rss"];
    std::printf(
        "| %s | %s | %d | %.0f | %.1f | %.1f | %.1fx | %.3f | %s | %.4f | %.0f (%.0f) | %.0f | "
        "%.1f |\n",
        r["shape"].get<std::string>().c_str(), r["cache_type"].get<std::string>().c_str(),
        r["prefix_tokens"].get<int>(), r["prefill_ms"].get<double>(), cold, warm, cold / warm,
        warm / parts, t["same_first_token"].get<bool>() ? "yes" : "NO",
        r["size_ratio"].get<double>(), m["peak_open_mib"].get<double>(),
        m["budget_mib"].get<double>(), m["peak_create_mib"].get<double>(),
        m["anon_after_open_mib"].get<double>() - m["anon_after_create_mib"].get<double>());
  }
}

}  // namespace
}  // namespace kvstash

int main(int argc, char** argv) {
  using namespace kvstash;
  const Flags flags = ParseFlags(argc, argv);
  mkdir(flags.dir.c_str(), 0755);
  std::vector<json> rows;
  for (const auto& shape : flags.shapes) {
    TestModelSpec spec;
    spec.shape = Check(ParseTestShape(shape), "shape");
    spec.vocab = shape == "bench" ? TestVocab::kBpe : TestVocab::kSpm;
    spec.type = TestWeightType::kQ8_0;
    const std::string model_path = flags.dir + "/" + shape + "-q8_0.gguf";
    if (access(model_path.c_str(), R_OK) != 0)
      Check(WriteTestModel(spec, model_path), "make model");
    auto model = Check(Model::Load(model_path), "load model");
    std::fprintf(stderr, "model %s: load %.1f ms, fingerprint %.2f ms (%.2f%%)\n",
                 model_path.c_str(), model->load_ms(), model->fingerprint_ms(),
                 100 * model->fingerprint_ms() / model->load_ms());
    for (const auto& cache_type : flags.cache_types) {
      for (int P : flags.prefix_lengths) {
        if (shape == "bench" && P > flags.max_bench_prefix) continue;
        json row = RunCase(flags, model, shape, cache_type, P);
        row["model_load_ms"] = model->load_ms();
        row["fingerprint_ms"] = model->fingerprint_ms();
        rows.push_back(row);
        std::fprintf(stderr, "%s\n", row.dump().c_str());
      }
    }
  }
  PrintTables(rows);
  if (!flags.json_path.empty()) {
    std::ofstream out(flags.json_path);
    out << json(rows).dump(2) << "\n";
  }
  return 0;
}
