// Process-wide llama.cpp set-up: backend initialisation and the log sink.
//
// llama.cpp reports failures as log lines, not return values. kvstash keeps the last error line
// of the calling thread so that a failed call can say *why* in its Status, in kvstash's words,
// while llama.cpp's own output stays off unless verbose logging is on.
#ifndef KVSTASH_ENGINE_LLAMA_RUNTIME_H_
#define KVSTASH_ENGINE_LLAMA_RUNTIME_H_

#include <string>

namespace kvstash::engine {

// Idempotent and thread-safe.
void EnsureLlamaBackend();

// Where llama.cpp's log lines go once kvstash's sink has read them.
enum class LlamaLogs {
  kHost,    // the callback installed before kvstash's (a host program's, else llama.cpp's default)
  kQuiet,   // nowhere
  kStderr,  // to stderr
};
// Thread-safe; takes effect for the next line.
void SetLlamaLogs(LlamaLogs mode);
// true: kStderr, false: kQuiet.
void SetLlamaVerbose(bool verbose);
// The last ERROR/WARN line llama.cpp logged on this thread since ClearLlamaError(), trimmed.
std::string LastLlamaError();
void ClearLlamaError();
// How llama.cpp resolved flash attention "auto" in the last context created on this thread since
// ClearFlashAttnResolution(): 1 enabled, 0 disabled, -1 not seen (read from its log line; the
// caller then finds out another way).
int LastFlashAttnResolution();
void ClearFlashAttnResolution();
// llama.cpp's build string (commit), for `kvstash --version` and session files.
std::string LlamaBuildInfo();

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_LLAMA_RUNTIME_H_
