// Model: a GGUF model loaded once and shared by any number of Sessions.
#ifndef KVSTASH_MODEL_H_
#define KVSTASH_MODEL_H_

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "kvstash/status.h"

namespace kvstash {

using Token = int32_t;

// One message of a conversation, for a chat template.
struct ChatMessage {
  std::string role;  // "system", "user", "assistant"
  std::string content;
};

struct ModelOptions {
  // Layers to offload to a GPU backend when llama.cpp was built with one (CPU builds ignore it).
  int n_gpu_layers = 0;
  // llama.cpp's weight repacking (its "extra buffer types"), faster for some quantized types
  // (q4_0, q4_K, iq4_nl on x86). Its kernels split a product by row count, so `kvstash serve` turns
  // it off for answers independent of load. Off also sets GGML_NO_IQ_PANEL=1 in the process (unless
  // set): ggml's panel kernel for k- and i-quants from 8 rows on, read once at the process's first
  // product, is the other batch-size-dependent path.
  bool repack_weights = true;
};

// 128 bits that identify a model's weights and metadata, independent of where the file lives.
// xxh3-128 over every byte of the GGUF file, so a model with any changed byte differs. The hash is
// cached per file (device, inode, size, mtime, ctime) so that later loads do not read the weights.
struct ModelFingerprint {
  uint8_t bytes[16] = {};
  std::string Hex() const;
  bool operator==(const ModelFingerprint& other) const;
  bool operator!=(const ModelFingerprint& other) const { return !(*this == other); }
};

class Model {
 public:
  // Loads `path` with llama.cpp. Errors name the file and say what to do.
  static Result<std::shared_ptr<Model>> Load(const std::string& path,
                                             const ModelOptions& options = {});
  ~Model();
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const std::string& path() const;
  const ModelFingerprint& fingerprint() const;
  // Milliseconds spent computing the fingerprint (for the <5%-of-load-time budget).
  double fingerprint_ms() const;
  double load_ms() const;
  // e.g. "llama 1B F16"
  std::string Description() const;
  int32_t n_vocab() const;
  int32_t n_ctx_train() const;
  // LongRoPE (Phi-3 style rope_factors_long/short tensors): llama.cpp rotates with the long
  // factors when the context exceeds n_ctx_orig() tokens and with the short ones otherwise, so KV
  // caches from the two sides of that line do not mix (see CheckRopeRegime in src/engine/compat.h).
  bool uses_long_rope() const;
  // The original context of the rope scaling (llama.cpp's n_ctx_orig_yarn): the GGUF key
  // <arch>.rope.scaling.original_context_length, else the training context.
  uint32_t n_ctx_orig() const;
  // Whether fingerprint() came from the per-file cache ($XDG_CACHE_HOME/kvstash/fingerprints)
  // instead of hashing the whole file.
  bool fingerprint_from_cache() const;

  // Tokens of `text`. add_bos follows the model's vocabulary: it is only added when the model
  // asks for one. EOS is never added (even for vocabularies that set add_eos). Special tokens
  // written in the text (e.g. "<|eot_id|>") are parsed as such.
  Result<std::vector<Token>> Tokenize(std::string_view text, bool add_bos) const;
  std::string TokenToPiece(Token token) const;
  std::string Detokenize(const std::vector<Token>& tokens) const;
  // Whether `token` ends a generation (EOS, EOT, ...).
  bool IsEndOfGeneration(Token token) const;

  // The prompt text of `messages` in a chat template: llama.cpp's built-in template called
  // `template_name` (e.g. "chatml", "llama3"; see ChatTemplateNames()) when it is not empty, else
  // the model's own (tokenizer.chat_template), else ChatML. With add_assistant the text ends with
  // the opening of the assistant's turn. llama.cpp recognises templates by their markers, not by
  // running Jinja: a model template it does not know is an error that names --chat-template.
  Result<std::string> ApplyChatTemplate(const std::vector<ChatMessage>& messages,
                                        const std::string& template_name = "",
                                        bool add_assistant = true) const;
  static std::vector<std::string> ChatTemplateNames();

 private:
  struct Impl;
  friend struct ModelInternals;  // src/engine/model_impl.h: the engine's side of a model
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvstash

#endif  // KVSTASH_MODEL_H_
