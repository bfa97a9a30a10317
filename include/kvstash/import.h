// Importing llama.cpp's own state files (llama_state_save_file's session files and
// llama_state_seq_save_file's sequence files, e.g. llama-completion's --prompt-cache) as kvstash
// sessions: docs/FORMAT.md, "llama.cpp's own files".
#ifndef KVSTASH_IMPORT_H_
#define KVSTASH_IMPORT_H_

#include <cstdint>
#include <memory>
#include <string>

#include "kvstash/model.h"
#include "kvstash/session.h"
#include "kvstash/status.h"

namespace kvstash {

// llama.cpp's files record no context parameter: these are the ones the session gets (RoPE and
// YaRN always from the model, as llama.cpp's defaults have them). The cache types and flash
// attention come from the file's KV payload.
struct ImportOptions {
  uint32_t n_ctx = 0;  // 0: 4096, or the tokens held plus one rounded up to 256 when that is more
  int n_threads = 0;   // 0: all cores
  uint32_t n_batch = 2048;
  uint32_t n_ubatch = 512;
};

// A session holding what the file at `path` holds: its tokens and KV cache, after every check a
// kvstash file gets (layout, ranges, tokens against the vocabulary, KV against the model's layers
// and widths) and one that only a model can make: the token in the file's last cell is decoded
// again, alone, over the cells before it, and its keys and values must come out as the file has
// them (to within the rounding of another batch size). A cache from another model, or with
// damaged last values, is refused. Only models with one attention KV cache are supported: a
// model with a sliding window or a recurrent state is refused (kIncompatible) before the file is
// parsed. The session then holds the file's KV bytes unchanged, the logits of that decode, and,
// for llama-completion's files (saved before the prompt's last token), that token pending: it is
// decoded alone, as llama-completion replays it. Session::Save then writes a kvstash file like any
// other.
Result<std::unique_ptr<Session>> ImportLlamaFile(std::shared_ptr<const Model> model,
                                                 const std::string& path,
                                                 const ImportOptions& options = {});

}  // namespace kvstash

#endif  // KVSTASH_IMPORT_H_
