#include "engine/llama_runtime.h"

#include <atomic>
#include <cstdio>
#include <cstring>
#include <mutex>

#include "llama.h"

namespace kvstash::engine {
namespace {

std::atomic<bool> g_verbose{false};
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
  if (g_verbose.load(std::memory_order_relaxed) && text != nullptr) {
    std::fputs(text, stderr);
  }
}

}  // namespace

void EnsureLlamaBackend() {
  static std::once_flag once;
  std::call_once(once, [] {
    llama_log_set(LogSink, nullptr);
    llama_backend_init();
  });
}

void SetLlamaVerbose(bool verbose) {
  EnsureLlamaBackend();
  g_verbose.store(verbose);
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
