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

struct ModelOptions {
  // Layers to offload to a GPU backend when llama.cpp was built with one (CPU builds ignore it).
  int n_gpu_layers = 0;
  // llama.cpp's own log lines go to stderr only when true.
  bool verbose = false;
};

// 128 bits that identify a model's weights and metadata, independent of where the file lives.
// Computed from the GGUF header, metadata and tensor table plus samples of every tensor's data,
// so two models of the same shape with different weights differ (see docs/FORMAT.md).
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

  // Tokens of `text`. add_bos follows the model's vocabulary: it is only added when the model
  // asks for one. Special tokens written in the text (e.g. "<|eot_id|>") are parsed as such.
  Result<std::vector<Token>> Tokenize(std::string_view text, bool add_bos) const;
  std::string TokenToPiece(Token token) const;
  std::string Detokenize(const std::vector<Token>& tokens) const;

  struct Impl;
  Impl* impl() const { return impl_.get(); }

 private:
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvstash

#endif  // KVSTASH_MODEL_H_
