// Whether a well-formed session file fits a loaded model and what the caller asks of the context.
// Pure functions over plain values (no llama.h), so every refusal is testable without a model.
#ifndef KVSTASH_FORMAT_COMPAT_H_
#define KVSTASH_FORMAT_COMPAT_H_

#include <cstdint>
#include <string>

#include "kvstash/session.h"
#include "kvstash/session_file.h"
#include "kvstash/status.h"

namespace kvstash::format {

// What kvstash knows of a loaded model, as a writer records it in META.
struct ModelFacts {
  std::string path;
  ModelFingerprint fingerprint;
  std::string arch;
  int32_t n_vocab = 0;
  int32_t n_layer = 0;
  int32_t n_embd = 0;
  int32_t n_head = 0;
  int32_t n_head_kv = 0;
  int32_t n_embd_k_gqa = 0;
  int32_t n_embd_v_gqa = 0;
  int32_t n_swa = 0;
  int32_t n_ctx_train = 0;
  uint32_t llama_state_version = 0;  // of this build
};

// The file was written for this model by this llama.cpp state version: fingerprint, state version,
// and every recorded dimension (which disagree with a matching fingerprint only in a forged file).
Status CheckSessionFitsModel(const SessionMeta& meta, const ModelFacts& model,
                             const std::string& path);

// The caller's KV-deciding options agree with the file, and the context size to create: the
// caller's n_ctx if given, else the saved one, shrunk to what the run needs when the caller says
// how much room it needs (n_tokens + room, rounded up to 256). Never smaller than the tokens held
// plus one.
Result<uint32_t> ResolveOpenContext(const SessionMeta& meta, const OpenOptions& options,
                                    const std::string& path);

}  // namespace kvstash::format

#endif  // KVSTASH_FORMAT_COMPAT_H_
