#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdint>
#include <cstring>
#include <limits>

#include "engine/fingerprint.h"
#include "engine/llama_runtime.h"
#include "engine/model_impl.h"

namespace kvstash {

namespace {

double MsSince(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
      .count();
}

// Reads an integer GGUF metadata value through llama.cpp's string accessor; -1 when absent.
int64_t MetaInt(const llama_model* model, const std::string& key) {
  char buf[64];
  if (llama_model_meta_val_str(model, key.c_str(), buf, sizeof(buf)) < 0) return -1;
  return std::strtoll(buf, nullptr, 10);
}

// The vocabulary, architecture and the shapes the session code needs, from the loaded model.
void FillShape(ModelImpl* impl) {
  impl->vocab = llama_model_get_vocab(impl->model);
  char arch[128] = {};
  llama_model_meta_val_str(impl->model, "general.architecture", arch, sizeof(arch));
  impl->arch = arch;
  const int32_t n_head = llama_model_n_head(impl->model);
  const int32_t n_head_kv = llama_model_n_head_kv(impl->model);
  const int32_t n_embd = llama_model_n_embd(impl->model);
  const int64_t key_length = MetaInt(impl->model, impl->arch + ".attention.key_length");
  const int64_t value_length = MetaInt(impl->model, impl->arch + ".attention.value_length");
  const int32_t head_dim = n_head > 0 ? n_embd / n_head : 0;
  impl->n_embd_k_gqa = static_cast<int32_t>(key_length > 0 ? key_length : head_dim) * n_head_kv;
  impl->n_embd_v_gqa = static_cast<int32_t>(value_length > 0 ? value_length : head_dim) * n_head_kv;
  // llama.cpp's n_ctx_orig_yarn: the original context when the file records one, else the
  // training context.
  const int64_t orig = MetaInt(impl->model, impl->arch + ".rope.scaling.original_context_length");
  impl->n_ctx_orig = static_cast<uint32_t>(
      orig > 0 && orig <= UINT32_MAX ? orig : llama_model_n_ctx_train(impl->model));
}

}  // namespace

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::~Model() = default;

Result<std::shared_ptr<Model>> Model::Load(const std::string& path, const ModelOptions& options) {
  engine::EnsureLlamaBackend();
  // Opened once: the fingerprint is read through this descriptor, and the path must still name
  // the same file after llama.cpp's load, so the fingerprint is that of the weights in use.
  auto file = engine::ModelFile::Open(path);
  if (!file.ok()) return file.status();

  auto impl = std::make_unique<Impl>();
  impl->path = path;
  const auto start = std::chrono::steady_clock::now();
  llama_model_params params = llama_model_default_params();
  params.n_gpu_layers = options.n_gpu_layers;
  params.use_extra_bufts = options.repack_weights;
  impl->repack_weights = options.repack_weights;
  if (!options.repack_weights) setenv("GGML_NO_IQ_PANEL", "1", 0);  // model.h: one kernel path
  impl->on_gpu = options.n_gpu_layers != 0 && llama_supports_gpu_offload();
  engine::ClearLlamaError();
  impl->model = llama_model_load_from_file(path.c_str(), params);
  if (impl->model == nullptr) {
    const std::string why = engine::LastLlamaError();
    return Status::InvalidArgument("cannot load model '" + path + "'" +
                                   (why.empty() ? "" : " (llama.cpp: " + why + ")") +
                                   "; check that it is a complete GGUF model file");
  }
  impl->load_ms = MsSince(start);
  KVSTASH_RETURN_IF_ERROR((*file)->CheckPathUnchanged());

  const auto fp_start = std::chrono::steady_clock::now();
  auto fingerprint = engine::FingerprintModelFile(**file, engine::DefaultFingerprintCacheDir());
  if (!fingerprint.ok()) return fingerprint.status();
  impl->fingerprint = fingerprint->fingerprint;
  impl->fingerprint_from_cache = fingerprint->from_cache;
  impl->fingerprint_ms = MsSince(fp_start);
  impl->uses_long_rope = fingerprint->facts.has_rope_factors && !fingerprint->facts.has_rope_freqs;
  FillShape(impl.get());
  return std::shared_ptr<Model>(new Model(std::move(impl)));
}

format::ModelFacts FactsOf(const Model& model) {
  const ModelImpl& m = *ImplOf(model);
  format::ModelFacts facts;
  facts.path = model.path();
  facts.fingerprint = model.fingerprint();
  facts.arch = m.arch;
  facts.n_vocab = model.n_vocab();
  facts.n_layer = llama_model_n_layer(m.model);
  facts.n_embd = llama_model_n_embd(m.model);
  facts.n_head = llama_model_n_head(m.model);
  facts.n_head_kv = llama_model_n_head_kv(m.model);
  facts.n_embd_k_gqa = m.n_embd_k_gqa;
  facts.n_embd_v_gqa = m.n_embd_v_gqa;
  facts.n_swa = llama_model_n_swa(m.model);
  facts.n_ctx_train = model.n_ctx_train();
  facts.llama_state_version = LLAMA_STATE_SEQ_VERSION;
  facts.long_rope = model.uses_long_rope();
  facts.n_ctx_orig = model.n_ctx_orig();
  return facts;
}

const std::string& Model::path() const { return impl_->path; }
const ModelFingerprint& Model::fingerprint() const { return impl_->fingerprint; }
double Model::fingerprint_ms() const { return impl_->fingerprint_ms; }
double Model::load_ms() const { return impl_->load_ms; }
int32_t Model::n_vocab() const { return llama_vocab_n_tokens(impl_->vocab); }
int32_t Model::n_ctx_train() const { return llama_model_n_ctx_train(impl_->model); }
bool Model::uses_long_rope() const { return impl_->uses_long_rope; }
uint32_t Model::n_ctx_orig() const { return impl_->n_ctx_orig; }
bool Model::fingerprint_from_cache() const { return impl_->fingerprint_from_cache; }

std::string Model::Description() const {
  char buf[256] = {};
  llama_model_desc(impl_->model, buf, sizeof(buf));
  return buf;
}

Result<std::vector<Token>> Model::Tokenize(std::string_view text, bool add_bos) const {
  if (text.size() > static_cast<size_t>(INT32_MAX / 2)) {
    return Status::InvalidArgument("text of " + std::to_string(text.size()) +
                                   " bytes is too long to tokenize");
  }
  // add_special=false and BOS by hand: with add_special llama.cpp also appends EOS for
  // vocabularies that set add_eos, and a saved prefix must not end in an EOS nobody wrote.
  const bool bos = add_bos && llama_vocab_get_add_bos(impl_->vocab);
  std::vector<Token> tokens(text.size() + 2);
  const size_t offset = bos ? 1 : 0;
  for (int attempt = 0; attempt < 2; ++attempt) {
    const int32_t room = static_cast<int32_t>(tokens.size() - offset);
    const int32_t n =
        llama_tokenize(impl_->vocab, text.data(), static_cast<int32_t>(text.size()),
                       tokens.data() + offset, room, /*add_special=*/false, /*parse_special=*/true);
    if (n >= 0) {
      tokens.resize(offset + static_cast<size_t>(n));
      if (bos) tokens[0] = llama_vocab_bos(impl_->vocab);
      return tokens;
    }
    // Too small: -n is the size it needs. Only INT32_MIN means an overflow inside llama.cpp.
    if (n == INT32_MIN) break;
    tokens.resize(offset + static_cast<size_t>(-static_cast<int64_t>(n)));
  }
  return Status::Internal("llama.cpp could not tokenize " + std::to_string(text.size()) +
                          " bytes of text for model '" + impl_->path +
                          "'; report this with the text");
}

std::string Model::TokenToPiece(Token token) const {
  char buf[256];
  const int32_t n =
      llama_token_to_piece(impl_->vocab, token, buf, sizeof(buf), 0, /*special=*/false);
  if (n >= 0) return std::string(buf, n);
  std::string big(-n, '\0');
  const int32_t m = llama_token_to_piece(impl_->vocab, token, big.data(), -n, 0, false);
  big.resize(m > 0 ? m : 0);
  return big;
}

std::string Model::Detokenize(const std::vector<Token>& tokens) const {
  std::string text;
  for (Token t : tokens) text += TokenToPiece(t);
  return text;
}

bool Model::IsEndOfGeneration(Token token) const { return llama_vocab_is_eog(impl_->vocab, token); }

std::vector<std::string> Model::ChatTemplateNames() {
  const int32_t n = llama_chat_builtin_templates(nullptr, 0);
  std::vector<const char*> names(n > 0 ? n : 0);
  if (n > 0) llama_chat_builtin_templates(names.data(), names.size());
  return std::vector<std::string>(names.begin(), names.end());
}

Result<std::string> Model::ApplyChatTemplate(const std::vector<ChatMessage>& messages,
                                             const std::string& template_name,
                                             bool add_assistant) const {
  const char* tmpl = nullptr;
  std::string source;
  if (!template_name.empty()) {
    const auto names = ChatTemplateNames();
    if (std::find(names.begin(), names.end(), template_name) == names.end()) {
      std::string list;
      for (const auto& n : names) list += (list.empty() ? "" : ", ") + n;
      return Status::InvalidArgument("unknown chat template '" + template_name + "'; use one of " +
                                     list);
    }
    tmpl = template_name.c_str();
    source = "built-in template '" + template_name + "'";
  } else {
    tmpl = llama_model_chat_template(impl_->model, nullptr);
    source = "the chat template of model '" + path() + "'";
    if (tmpl == nullptr) {
      tmpl = "chatml";
      source = "the default chat template (chatml)";
    }
  }
  std::vector<llama_chat_message> chat;
  size_t bytes = 0;
  for (const auto& m : messages) {
    chat.push_back({m.role.c_str(), m.content.c_str()});
    bytes += m.role.size() + m.content.size();
  }
  // llama.cpp takes and returns int32 lengths: a longer conversation would come back empty.
  constexpr size_t kMaxText = std::numeric_limits<int32_t>::max();
  if (bytes > (kMaxText - 256) / 2) {
    return Status::InvalidArgument("the chat messages hold " + std::to_string(bytes) +
                                   " bytes, more than a chat template can format (at most " +
                                   std::to_string((kMaxText - 256) / 2) + ")");
  }
  std::string out(bytes * 2 + 256, '\0');
  for (int attempt = 0; attempt < 2; ++attempt) {
    const int32_t n = llama_chat_apply_template(tmpl, chat.data(), chat.size(), add_assistant,
                                                out.data(), static_cast<int32_t>(out.size()));
    if (n < 0) {
      return Status::InvalidArgument(
          source + " is not one llama.cpp knows; pick a built-in one with --chat-template (" +
          "e.g. chatml, llama3)");
    }
    if (static_cast<size_t>(n) <= out.size()) {
      out.resize(n);
      return out;
    }
    out.resize(n);
  }
  return Status::Internal("llama.cpp's chat template output changed size between two calls");
}

}  // namespace kvstash
