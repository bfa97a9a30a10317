// Pure compatibility decisions between a saved session and the context it is opened with, or a
// model and what kvstash supports. No llama.h: each takes plain values and is tested on its own.
#ifndef KVSTASH_ENGINE_COMPAT_H_
#define KVSTASH_ENGINE_COMPAT_H_

#include <cstdint>
#include <string>

#include "kvstash/status.h"

namespace kvstash::engine {

// llama.cpp rounds a context size up to a multiple of this (llama-context.cpp).
constexpr uint32_t kContextPad = 256;
uint32_t PaddedContextSize(uint32_t n_ctx);

// LongRoPE models (Phi-3 style rope_factors_long/rope_factors_short tensors) rotate keys with the
// long factors when the context exceeds n_ctx_orig (n_ctx_orig_yarn) and with the short ones
// otherwise. Keys cached under one regime are wrong under the other, silently; so a session saved
// with `saved_n_ctx` cannot be opened with a `new_n_ctx` on the other side of that line. Both sizes
// are compared as llama.cpp will use them (padded). Ok for models without LongRoPE; `path` names
// the session in the error.
Status CheckRopeRegime(uint32_t saved_n_ctx, uint32_t new_n_ctx, uint32_t n_ctx_orig,
                       bool uses_long_rope, const std::string& path);

// What kind of memory a model keeps, as llama.cpp reports it.
struct ModelMemoryKind {
  bool recurrent = false;  // llama_model_is_recurrent: Mamba, RWKV, ...
  bool hybrid = false;     // llama_model_is_hybrid: attention and recurrent layers (Jamba, ...)
  int32_t n_swa = 0;       // llama_model_n_swa: sliding-window attention (Gemma 2/3, ...)
};

// kvstash saves and validates only a plain attention KV cache. Session::Create refuses the other
// kinds up front, before a prefill that could take minutes only for Save to refuse it.
Status CheckSupportedMemory(const ModelMemoryKind& kind, const std::string& model_path,
                            const std::string& arch);

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_COMPAT_H_
