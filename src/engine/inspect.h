// What `kvstash inspect` shows of a session's memory beyond SessionFileInfo: the kind, the parts
// of its KV payload with their sizes, and what a later prompt can reuse of it. No llama.h.
#ifndef KVSTASH_ENGINE_INSPECT_H_
#define KVSTASH_ENGINE_INSPECT_H_

#include <string>

#include "format/llama_state.h"
#include "kvstash/session_file.h"
#include "kvstash/status.h"

namespace kvstash::engine {

struct SessionMemory {
  format::SeqLayout layout;  // the walked KV payload (format/llama_state.h)
  std::string parts;         // DescribeParts(layout)
  std::string reuse;         // ReuseRule(kind, n_swa)
};

// Walks the KV payload of the session file `info` describes (InspectSessionFile's result, which
// checked the same structure and the checksums but keeps only the payload's size). The file is
// read a second time, without checksums: a file that is no longer the one `info` describes (a save
// replaced it meanwhile) is refused with kIOError, so the parts shown are always those of the
// file whose checksums were verified.
Result<SessionMemory> InspectSessionMemory(const SessionFileInfo& info);

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_INSPECT_H_
