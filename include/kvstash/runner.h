// The two jobs users run, as one call each: save a prefix, and answer a prompt (warm from a
// session file, or cold). The CLI, the benchmark and the example use these, so timings and the
// tokenization rule mean the same everywhere.
#ifndef KVSTASH_RUNNER_H_
#define KVSTASH_RUNNER_H_

#include <functional>
#include <optional>
#include <string>

#include "kvstash/session.h"
#include "kvstash/store.h"

namespace kvstash {

struct SaveReport {
  size_t n_tokens = 0;
  uint32_t n_ctx = 0;  // the context size llama.cpp made (it rounds the one asked for up)
  uint64_t bytes = 0;
  double prefill_ms = 0;
  double save_ms = 0;
};

// Decodes `prefix` (with BOS) in a fresh session and saves it to `path`. A prefix too long for
// the context is refused before it is tokenized (a text of B bytes is at least B / (the longest
// token's text) tokens). save_options.cancel is also checked before the prefill.
Result<SaveReport> SavePrefix(std::shared_ptr<const Model> model, const std::string& prefix,
                              const std::string& path, const SessionOptions& options = {},
                              const SaveOptions& save_options = {},
                              const ProgressFn& progress = {});

struct RunRequest {
  std::optional<std::string> session_path;  // warm: open this file first
  std::optional<std::string> prefix;        // text before the prompt (the session's, if warm)
  std::string prompt;
  SessionOptions context;
  SampleOptions sample;
  // When *cancel turns true, a running prefill stops and RunPrompt returns kCancelled
  // (generation is stopped by the PieceCallback). nullptr: never.
  const std::atomic<bool>* cancel = nullptr;
  // A prefix store (not with session_path): the whole token sequence is synced through it
  // (Session::Sync(tokens, store)): the longest stored prefix is restored, the rest decoded in
  // chunk-aligned groups, new chunks published in the background.
  std::shared_ptr<Store> store;
  // llama-completion's --prompt-cache (not with session_path or store): `path` is a kvstash session
  // file, or nothing yet (or an empty file). Its longest common token prefix with the whole
  // sequence (prefix + prompt) is reused and the rest decoded; then, unless `read_only`, the
  // prompt's state is saved to `path` before generating (when it differs from what the file
  // held), and with `save_generated` once more after, with the generated tokens.
  struct PromptCache {
    std::string path;
    bool save_generated = false;  // --prompt-cache-all
    bool read_only = false;       // --prompt-cache-ro
  };
  std::optional<PromptCache> prompt_cache;
};

struct RunReport {
  Generation generation;
  size_t n_prompt_tokens = 0;          // prefix + prompt
  size_t n_reused_tokens = 0;          // taken from the session file or the store
  size_t n_decoded_prompt_tokens = 0;  // decoded in this run
  size_t n_published_tokens = 0;       // queued for the store in new chunks
  uint32_t n_ctx = 0;                  // the context size of the session that answered
  // Where the reused tokens came from: "session", "prompt cache", "store"; "" for a cold run.
  const char* reused_from = "";
  // Warm from a session file without a prefix: the prompt's tokens began with the session's (the
  // whole prompt was passed, as llama-completion users do), so they were reused, not appended.
  bool prompt_repeats_session = false;
  bool prompt_cache_saved = false;  // the prompt cache file was written
  double save_ms = 0;               // writing it
  double load_ms = 0;    // Open of the session file; with a store, fetching and restoring chunks
  double prompt_ms = 0;  // everything before generation (with a store: context, restore, decode)
  double ttft_ms = 0;  // from the start of load (or of prompt processing, cold) to the first token
  double generate_ms = 0;
};

struct PublishReport {
  size_t n_tokens = 0;
  size_t n_reused = 0;     // already in the store
  size_t n_decoded = 0;    // decoded now
  size_t n_published = 0;  // queued for the store in new chunks (see WriterStats for what landed)
  uint32_t n_ctx = 0;
  double prefill_ms = 0;  // restore + decode
  double publish_ms = 0;  // copying the chunks out and waiting until they are written
};

// Decodes `prefix` (with BOS) through `store` and waits until its whole chunks are written, so
// that every later prompt that starts with it restores them (the tokens after the last whole
// chunk are not stored). `cancel` as in RunRequest.
Result<PublishReport> PublishPrefix(std::shared_ptr<const Model> model, const std::string& prefix,
                                    Store& store, const SessionOptions& options = {},
                                    const std::atomic<bool>* cancel = nullptr,
                                    const ProgressFn& progress = {});

// The token sequence is tokens(prefix, BOS) + tokens(prompt, no BOS) (the prompt gets BOS when
// there is no prefix). With a store, the whole sequence goes through Session::Sync(tokens, store).
// Warm from a session file: the session's tokens stand for the prefix; with `prefix` given too,
// the longest common prefix is reused and only the rest is decoded. Without `prefix`, a prompt
// whose tokens (with BOS) begin with the session's is taken as the whole sequence: the session's
// tokens are reused, not followed by a second copy (RunReport::prompt_repeats_session). Decoding
// happens in the same groups as a cold run (prefix, then prompt), so warm and cold runs of the same
// tokens give the same text at temp 0. A store run decodes in chunk-aligned groups: it gives the
// same text as a store run with an empty store, which on long prompts may differ from a run without
// a store (both are right; llama.cpp's numbers depend on the grouping).
Result<RunReport> RunPrompt(std::shared_ptr<const Model> model, const RunRequest& request,
                            const PieceCallback& on_piece = {}, const ProgressFn& progress = {});

}  // namespace kvstash

#endif  // KVSTASH_RUNNER_H_
