// Access to a Session's llama.cpp context, for the benchmark's side-by-side runs of llama.cpp's
// own state functions on the very same KV cache. Not part of the public API.
#ifndef KVSTASH_ENGINE_SESSION_INTERNALS_H_
#define KVSTASH_ENGINE_SESSION_INTERNALS_H_

#include "kvstash/session.h"
#include "llama.h"

namespace kvstash {

struct SessionInternals {
  static llama_context* Context(Session& session);
};

}  // namespace kvstash

#endif  // KVSTASH_ENGINE_SESSION_INTERNALS_H_
