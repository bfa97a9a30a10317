#include "engine/llama_runtime.h"

#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "llama.h"

namespace kvstash::engine {
namespace {

std::atomic<LlamaLogs> g_logs{LlamaLogs::kQuiet};
// The callback llama.cpp had before kvstash's sink: written once, inside EnsureLlamaBackend's
// call_once, before the sink can run, so the sink reads it without a lock.
ggml_log_callback g_host_log = nullptr;
void* g_host_log_data = nullptr;
thread_local std::string t_last_error;
thread_local int t_flash_attn = -1;  // LastFlashAttnResolution

void LogSink(ggml_log_level level, const char* text, void* /*user_data*/) {
  // llama.cpp resolves flash attention "auto" while it creates a context and says so only here
  // (llama-context.cpp, resolve(): "<func>: Flash Attention enabled" or "... not supported").
  if (text != nullptr && std::strstr(text, "Flash Attention") != nullptr) {
    if (std::strstr(text, "Flash Attention enabled") != nullptr) t_flash_attn = 1;
    if (std::strstr(text, "Flash Attention not supported") != nullptr) t_flash_attn = 0;
  }
  if (level == GGML_LOG_LEVEL_ERROR || level == GGML_LOG_LEVEL_WARN) {
    std::string line = text != nullptr ? text : "";
    while (!line.empty() && (line.back() == '\n' || line.back() == ' ')) line.pop_back();
    if (!line.empty()) t_last_error = line;
  }
  if (text == nullptr) return;
  switch (g_logs.load(std::memory_order_relaxed)) {
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

}  // namespace

void EnsureLlamaBackend() {
  static std::once_flag once;
  std::call_once(once, [] {
    llama_log_get(&g_host_log, &g_host_log_data);
    if (g_host_log == LogSink) g_host_log = nullptr;  // never forward to ourselves
    llama_log_set(LogSink, nullptr);
    llama_backend_init();
  });
}

void SetLlamaLogs(LlamaLogs mode) {
  EnsureLlamaBackend();
  g_logs.store(mode);
}

void SetLlamaVerbose(bool verbose) {
  SetLlamaLogs(verbose ? LlamaLogs::kStderr : LlamaLogs::kQuiet);
}

std::string LastLlamaError() { return t_last_error; }
int LastFlashAttnResolution() { return t_flash_attn; }
void ClearFlashAttnResolution() { t_flash_attn = -1; }
void ClearLlamaError() { t_last_error.clear(); }

std::string LlamaBuildInfo() {
#ifdef KVSTASH_LLAMA_COMMIT
  return KVSTASH_LLAMA_COMMIT;
#else
  return "unknown";
#endif
}

}  // namespace kvstash::engine
