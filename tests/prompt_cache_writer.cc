// A stand-in for `llama-completion -m MODEL -p PROMPT --prompt-cache FILE` when llama.cpp's own
// tools are not built (tests/import_cli_test.sh): what llama-completion writes, through llama.h
// alone. The prompt (with BOS) is decoded as one batch, all but its last token, then
// llama_state_save_file records every prompt token: llama-completion saves the cache before it
// decodes the prompt's last token. Other llama-completion flags are accepted and ignored.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "llama.h"

namespace {

void Quiet(ggml_log_level, const char*, void*) {}

int Usage() {
  std::fprintf(stderr, "usage: prompt_cache_writer -m MODEL -p PROMPT --prompt-cache FILE\n");
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path, prompt, cache_path;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "-m") == 0)
      model_path = argv[++i];
    else if (std::strcmp(argv[i], "-p") == 0)
      prompt = argv[++i];
    else if (std::strcmp(argv[i], "--prompt-cache") == 0)
      cache_path = argv[++i];
  }
  if (model_path.empty() || prompt.empty() || cache_path.empty()) return Usage();
  llama_log_set(Quiet, nullptr);
  llama_backend_init();
  llama_model* model = llama_model_load_from_file(model_path.c_str(), llama_model_default_params());
  if (model == nullptr) return 1;
  const llama_vocab* vocab = llama_model_get_vocab(model);
  std::vector<llama_token> tokens(prompt.size() + 8);
  const int n = llama_tokenize(vocab, prompt.c_str(), static_cast<int32_t>(prompt.size()),
                               tokens.data(), static_cast<int32_t>(tokens.size()), true, true);
  if (n < 2) return 1;
  tokens.resize(n);
  llama_context_params cp = llama_context_default_params();
  cp.n_ctx = 4096;
  llama_context* ctx = llama_init_from_model(model, cp);
  if (ctx == nullptr) return 1;
  int rc = llama_decode(ctx, llama_batch_get_one(tokens.data(), n - 1)) == 0 &&
                   llama_state_save_file(ctx, cache_path.c_str(), tokens.data(), tokens.size())
               ? 0
               : 1;
  llama_free(ctx);
  llama_model_free(model);
  return rc;
}
