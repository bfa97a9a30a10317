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
// llama.cpp's build string: its commit and MatmulPath(), for `kvstash --version`, session files and
// the store's namespace (KV bytes computed by other kernels are other bytes).
std::string LlamaBuildInfo();

// How the CPU backend computes matrix products: "one-path" (every number of rows takes one
// reduction order: kvstash's patched llamafile, reported by ggml as BATCH_INVARIANT_MATMUL),
// "vec_dot" (llamafile off: one order too), or "llamafile" (upstream: vec_dot for one row,
// tinyBLAS for more, which round differently).
const char* MatmulPath();

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_LLAMA_RUNTIME_H_
