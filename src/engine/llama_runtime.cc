#include "engine/llama_runtime.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>

#include "ggml-backend.h"
#include "ggml-cpu.h"
#include "llama.h"

namespace kvstash::engine {
namespace {

// -1 until SetLlamaLogs or the first model load (which reads KVSTASH_LLAMA_LOGS) decides.
std::atomic<int> g_logs{-1};
// The callback llama.cpp had before kvstash's sink: written once, inside EnsureLlamaBackend's
// call_once, before the sink can run, so the sink reads it without a lock.
ggml_log_callback g_host_log = nullptr;
void* g_host_log_data = nullptr;
thread_local std::string t_last_error;

void LogSink(ggml_log_level level, const char* text, void* /*user_data*/) {
  if (level == GGML_LOG_LEVEL_ERROR || level == GGML_LOG_LEVEL_WARN) {
    std::string line = text != nullptr ? text : "";
    while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.pop_back();
    if (!line.empty()) t_last_error = line;
  }
  if (text == nullptr) return;
  switch (static_cast<LlamaLogs>(g_logs.load(std::memory_order_relaxed))) {
    case LlamaLogs::kHost:
      if (g_host_log != nullptr) g_host_log(level, text, g_host_log_data);
      break;
    case LlamaLogs::kStderr:
      std::fputs(text, stderr);
      break;
    case LlamaLogs::kQuiet:
      break;
  }
}

LlamaLogs LlamaLogsFromEnvironment() {
  const char* value = std::getenv("KVSTASH_LLAMA_LOGS");
  if (value != nullptr && std::strcmp(value, "quiet") == 0) return LlamaLogs::kQuiet;
  if (value != nullptr && std::strcmp(value, "stderr") == 0) return LlamaLogs::kStderr;
  return LlamaLogs::kHost;  // unset, "host", or a value we do not know
}

}  // namespace

void EnsureLlamaBackend() {
  static std::once_flag once;
  std::call_once(once, [] {
    llama_log_get(&g_host_log, &g_host_log_data);
    if (g_host_log == LogSink) g_host_log = nullptr;  // never forward to ourselves
    int unset = -1;
    g_logs.compare_exchange_strong(unset, static_cast<int>(LlamaLogsFromEnvironment()));
    llama_log_set(LogSink, nullptr);
    llama_backend_init();
  });
}

std::string LastLlamaError() { return t_last_error; }
void ClearLlamaError() { t_last_error.clear(); }

std::string LlamaBuildInfo() {
#ifdef KVSTASH_LLAMA_COMMIT
  const std::string commit = KVSTASH_LLAMA_COMMIT;
#else
  const std::string commit = "unknown";
#endif
  return commit + " matmul=" + MatmulPath();
}

const char* MatmulPath() {
  static const char* path = [] {
    if (!ggml_cpu_has_llamafile()) return "vec_dot";
    ggml_backend_reg_t cpu = ggml_backend_cpu_reg();
    auto features = reinterpret_cast<ggml_backend_get_features_t>(
        ggml_backend_reg_get_proc_address(cpu, "ggml_backend_get_features"));
    for (const ggml_backend_feature* f = features ? features(cpu) : nullptr; f && f->name; ++f) {
      if (std::strcmp(f->name, "BATCH_INVARIANT_MATMUL") == 0) return "one-path";
    }
    return "llamafile";
  }();
  return path;
}

}  // namespace kvstash::engine

namespace kvstash {

void SetLlamaLogs(LlamaLogs mode) {
  engine::EnsureLlamaBackend();
  engine::g_logs.store(static_cast<int>(mode));
}

}  // namespace kvstash
