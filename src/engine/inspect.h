// What `kvstash inspect` shows of a session's memory beyond SessionFileInfo: the kind, the parts
// of its KV payload with their sizes, and what a later prompt can reuse of it. No llama.h.
#ifndef KVSTASH_ENGINE_INSPECT_H_
#define KVSTASH_ENGINE_INSPECT_H_

#include <string>

#include "format/llama_state.h"
#include "kvstash/session_file.h"
#include "kvstash/status.h"

namespace kvstash::engine {

// kvstash::InspectSessionFile that also gives the walked KV payload (format/llama_state.h), from
// the same read of the file as everything else it returns.
Result<SessionFileInfo> InspectSessionFile(const std::string& path, bool verify_checksums,
                                           format::SeqLayout* layout);

struct SessionMemory {
  format::SeqLayout layout;  // the walked KV payload
  std::string parts;         // DescribeParts(layout)
  std::string reuse;         // ReuseRule(kind, n_swa)
};

// The memory of the session file `info` describes, whose payload walked as `layout`.
SessionMemory DescribeSessionMemory(const SessionFileInfo& info, const format::SeqLayout& layout);

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_INSPECT_H_
