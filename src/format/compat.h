// Whether a well-formed session file fits a loaded model and what the caller asks of the context.
// Pure functions over plain values (no llama.h), so every refusal is testable without a model.
#ifndef KVSTASH_FORMAT_COMPAT_H_
#define KVSTASH_FORMAT_COMPAT_H_

#include <cstdint>
#include <optional>
#include <string>

#include "format/session_format.h"
#include "kvstash/status.h"

namespace kvstash::format {

// llama.cpp rounds a context size up to a multiple of this (llama-context.cpp).
constexpr uint32_t kContextPad = 256;
uint32_t PaddedContextSize(uint32_t n_ctx);
// The context size Session::Create gets for a requested `n_ctx` (0: the model's training context),
// known before the context exists.
uint32_t CreatedContextSize(uint32_t n_ctx, int32_t n_ctx_train);

// LongRoPE models (Phi-3 style rope_factors_long/rope_factors_short tensors) rotate keys with the
// long factors when the context exceeds n_ctx_orig (n_ctx_orig_yarn) and with the short ones
// otherwise. Keys cached under one regime are wrong under the other, silently; so a session saved
// with `saved_n_ctx` cannot be opened with a `new_n_ctx` on the other side of that line. Both sizes
// are compared as llama.cpp will use them (padded). Ok for models without LongRoPE; `path` names
// the session in the error.
Status CheckRopeRegime(uint32_t saved_n_ctx, uint32_t new_n_ctx, uint32_t n_ctx_orig,
                       bool uses_long_rope, const std::string& path);

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
  bool long_rope = false;            // LongRoPE factors (rope_factors_long/short)
  uint32_t n_ctx_orig = 0;           // where LongRoPE switches from short to long factors
};

// The file was written for this model by this llama.cpp state version: fingerprint, state version,
// and every recorded dimension (which disagree with a matching fingerprint only in a forged file).
Status CheckSessionFitsModel(const SessionMeta& meta, const ModelFacts& model,
                             const std::string& path);

// What a caller asks of the context a session opens into (Session::Open's options).
struct OpenRequest {
  std::optional<uint32_t> n_ctx;     // unset or 0: the saved size, or what the run needs (n_room)
  uint32_t n_room = 0;               // tokens the run adds after the saved ones
  std::optional<bool> flash_attn;    // unset: either (auto)
  std::optional<uint32_t> n_batch;   // unset: as saved
  std::optional<uint32_t> n_ubatch;  // unset: as saved (at most n_batch, as at creation)
  std::optional<std::string> cache_type_k;
  std::optional<std::string> cache_type_v;
};

// The caller's KV-deciding options agree with the file, and the context size to create: the
// caller's n_ctx if given, else the saved one, shrunk to what the run needs when the caller says
// how much room it needs (n_tokens + room, rounded up to 256), but never across a LongRoPE
// model's regime line (CheckRopeRegime, which also refuses a caller's n_ctx across it). Never
// smaller than the tokens held plus one.
Result<uint32_t> ResolveOpenContext(const SessionMeta& meta, const OpenRequest& options,
                                    const ModelFacts& model, const std::string& path);

}  // namespace kvstash::format

#endif  // KVSTASH_FORMAT_COMPAT_H_
