// Which kind of memory a model keeps, and whether kvstash can save it: a pure decision over plain
// values (no llama.h), tested on its own.
#ifndef KVSTASH_ENGINE_MEMORY_SUPPORT_H_
#define KVSTASH_ENGINE_MEMORY_SUPPORT_H_

#include <cstdint>
#include <string>

#include "format/llama_state.h"
#include "kvstash/status.h"

namespace kvstash::engine {

// What llama.cpp reports of a model's memory.
struct ModelMemoryKind {
  bool recurrent = false;  // llama_model_is_recurrent: Mamba, RWKV, ...
  bool hybrid = false;     // llama_model_is_hybrid: attention and recurrent layers (Jamba, ...)
  int32_t n_swa = 0;       // llama_model_n_swa: sliding-window attention (Gemma 2/3, ...)
};

// The layout llama.cpp's sequence state has for such a model (format/llama_state.h). A hybrid
// wins over recurrent (llama.cpp reports some hybrids as both). Refused (kIncompatible, before a
// prefill that could take minutes only for Save to refuse it): a hybrid whose attention layers
// also slide (llama.cpp's hybrid-iSWA memory, a third layout kvstash does not read).
Result<format::MemoryKind> ClassifyMemory(const ModelMemoryKind& kind,
                                          const std::string& model_path, const std::string& arch);

// What a session of that kind can reuse when a later prompt shares only part of its tokens, in
// words, for `kvstash inspect` and docs: "any prefix", "...".
std::string ReuseRule(format::MemoryKind kind, int32_t n_swa);

// The parts of a walked state and their sizes, in words, for `kvstash inspect`: "KV cells 700
// (positions 0..699, 1.37 MiB), window cells 64 (positions 636..699, 128.0 KiB)", "recurrent
// state 2.06 MiB (2 layers with a state: R rows of 6.0 KiB, S rows of 1.00 MiB)". The sizes are
// each part's bytes in the payload, headers included (they add up to the KV section's size less
// its 8-byte header). A snapshot's (`partial`) first part is not there, so not described.
std::string DescribeParts(const format::SeqLayout& layout);

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_MEMORY_SUPPORT_H_
