// Access to a Session's llama.cpp context, for the benchmark's side-by-side runs of llama.cpp's
// own state functions on the very same KV cache, and to its state for import. Not part of the
// public API.
#ifndef KVSTASH_ENGINE_SESSION_INTERNALS_H_
#define KVSTASH_ENGINE_SESSION_INTERNALS_H_

#include "kvstash/session.h"
#include "llama.h"

namespace kvstash {

class Env;
struct AtomicWriteOptions;

// How a session file is written for `options`: atomically, refusing to replace what is not a
// kvstash session (unless replace_any) and any of `protected_files` (engine/save_destination.cc).
AtomicWriteOptions SessionWriteOptions(const SaveOptions& options,
                                       const std::vector<ProtectedFile>& protected_files);

struct SessionInternals {
  static llama_context* Context(Session& session);
  // For engine code that builds a session's state itself (engine/import.cc).
  using Impl = Session::Impl;
  static Impl& Of(Session& session) { return *session.impl_; }
  // Session::Save on `env` (tests inject faults through it).
  static Status Save(Session& session, const std::string& path, const SaveOptions& options,
                     Env* env);
};

}  // namespace kvstash

#endif  // KVSTASH_ENGINE_SESSION_INTERNALS_H_
