// What a session file records, and reading it without a model (for `kvstash inspect`).
// The byte layout is specified in docs/FORMAT.md.
#ifndef KVSTASH_SESSION_FILE_H_
#define KVSTASH_SESSION_FILE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "kvstash/model.h"
#include "kvstash/status.h"

namespace kvstash {

// What a session file records (its META section), by name: who wrote it, the model, the context
// the KV cache was computed in, and the sequence. For people and tools (`kvstash inspect`); the
// bytes themselves are docs/FORMAT.md's.
struct SessionInfo {
  // Who wrote it.
  std::string writer;                // e.g. "kvstash 0.2.0"
  std::string llama_build;           // llama.cpp commit the KV bytes came from
  uint32_t llama_state_version = 0;  // llama.cpp's sequence-state version of that build
  // The model.
  ModelFingerprint model_fingerprint;
  std::string model_description;  // llama.cpp's description, for messages
  std::string model_arch;         // general.architecture
  uint64_t model_n_params = 0;
  int32_t n_vocab = 0;
  int32_t n_layer = 0;
  int32_t n_embd = 0;
  int32_t n_head = 0;
  int32_t n_head_kv = 0;
  int32_t n_embd_k_gqa = 0;  // K row width per layer (head_dim_k * n_head_kv)
  int32_t n_embd_v_gqa = 0;
  int32_t n_swa = 0;
  int32_t n_ctx_train = 0;
  // The memory the model keeps per sequence: "kv" (attention KV cache), "iswa" (interleaved
  // sliding-window attention), "recurrent", "hybrid" (attention and recurrent layers).
  std::string memory_kind;
  // The context the KV cache was computed in.
  uint32_t n_ctx = 0;
  uint32_t n_batch = 0;
  uint32_t n_ubatch = 0;
  uint32_t n_seq_max = 1;
  std::string type_k;  // cache types by llama.cpp's names: "f16", "q8_0", ...
  std::string type_v;
  bool flash_attn = false;   // decides the V layout (transposed without flash attention)
  std::string rope_scaling;  // "unspecified", "none", "linear", "yarn", "longrope"
  float rope_freq_base = 0;
  float rope_freq_scale = 0;
  float yarn_ext_factor = 0;
  float yarn_attn_factor = 0;
  float yarn_beta_fast = 0;
  float yarn_beta_slow = 0;
  uint32_t yarn_orig_ctx = 0;
  bool swa_full = false;
  bool kv_unified = false;
  // The sequence.
  uint32_t n_tokens = 0;
  bool has_logits = false;
  std::string preview;  // the first tokens as text
};

// One attention part of the KV payload: cells of consecutive positions.
struct SessionKvPart {
  uint32_t cells = 0;
  int32_t first_pos = 0;  // the cells hold positions first_pos .. first_pos + cells - 1
  uint64_t bytes = 0;     // the part's own bytes, its headers included
};

// The recurrent part of the KV payload: one cell, whose state is R records (one per layer with a
// state) and as many S records or none.
struct SessionRecurrentPart {
  int32_t pos = -1;  // the cell's position: the sequence's last
  uint32_t r_records = 0;
  uint64_t r_row_bytes = 0;
  uint32_t s_records = 0;
  uint64_t s_row_bytes = 0;
  uint64_t bytes = 0;  // the part's own bytes, its headers included
};

// The memory a session file holds (docs/FORMAT.md, "The KV payload"), as `kvstash inspect` shows
// it. A part the kind does not have is left empty and its has_* is false.
struct SessionMemoryInfo {
  std::string kind;         // "kv", "iswa", "recurrent" or "hybrid" (SessionMeta::memory_kind 0..3)
  std::string parts;        // each part, its cells, positions and size, for people
  std::string reuse;        // what a later prompt can reuse of it, for people
  bool has_kv = false;      // kv; iswa: the full-attention layers; hybrid: the attention layers
  bool has_window = false;  // iswa: the sliding-window layers' last SessionMeta::n_swa tokens
  bool has_recurrent = false;  // recurrent, hybrid
  SessionKvPart kv;
  SessionKvPart window;
  SessionRecurrentPart recurrent;
};

struct SessionFileInfo {
  std::string path;
  uint32_t format_version = 0;
  uint32_t min_reader_version = 0;
  uint64_t file_size = 0;
  SessionInfo meta;
  std::vector<Token> tokens;
  uint64_t kv_bytes = 0;
  uint64_t logits_bytes = 0;
  bool checksums_verified = false;  // all section checksums were computed and matched
  SessionMemoryInfo memory;         // from the walked KV payload
};

// Reads and checks a session file's structure (and checksums when `verify_checksums`), without a
// model. Every failure names the file and the cause.
Result<SessionFileInfo> InspectSessionFile(const std::string& path, bool verify_checksums = true);

}  // namespace kvstash

#endif  // KVSTASH_SESSION_FILE_H_
