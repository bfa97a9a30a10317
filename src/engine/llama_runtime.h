// Process-wide llama.cpp set-up: backend initialisation and the log sink.
//
// llama.cpp reports failures as log lines, not return values. kvstash keeps the last error line
// of the calling thread so that a failed call can say *why* in its Status, in kvstash's words,
// and passes llama.cpp's own lines on as kvstash::SetLlamaLogs says (kvstash/process.h).
#ifndef KVSTASH_ENGINE_LLAMA_RUNTIME_H_
#define KVSTASH_ENGINE_LLAMA_RUNTIME_H_

#include <string>

#include "kvstash/process.h"

namespace kvstash::engine {

// Idempotent and thread-safe.
void EnsureLlamaBackend();

// The last ERROR/WARN line llama.cpp logged on this thread since ClearLlamaError(), trimmed.
std::string LastLlamaError();
void ClearLlamaError();
// llama.cpp's build string (commit), for `kvstash --version` and session files.
std::string LlamaBuildInfo();

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_LLAMA_RUNTIME_H_
