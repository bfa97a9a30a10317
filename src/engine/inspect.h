// The memory of a walked KV payload as kvstash::SessionMemoryInfo (kvstash/session_file.h), for
// InspectSessionFile. No llama.h.
#ifndef KVSTASH_ENGINE_INSPECT_H_
#define KVSTASH_ENGINE_INSPECT_H_

#include <cstdint>

#include "format/llama_state.h"
#include "kvstash/session_file.h"

namespace kvstash::engine {

// The kind, parts and reuse rule of the payload walked as `layout`, whose model's window is
// `n_swa` tokens (iSWA only).
SessionMemoryInfo DescribeSessionMemory(const format::SeqLayout& layout, int32_t n_swa);

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_INSPECT_H_
