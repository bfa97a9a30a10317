// Session: one sequence of tokens and the KV cache that holds them.
//
// The API has no positions, no batches and no buffer capacities: a Session knows how many tokens
// its cache holds and always continues at the right absolute position. That removes the classic
// session-file mistakes by construction:
//   - re-decoding the saved prefix: Sync() and the CLI keep what the cache already holds;
//   - wrong start position / n_cur: there is no position to pass;
//   - mismatched context parameters: Open() re-creates the context from the file;
//   - a too-small token buffer: tokens() is a vector sized by the file.
//
// Tokenization rule (docs/FORMAT.md): the first text appended to an empty session gets BOS (when
// the model wants one); every later text is tokenized without BOS; the sequence is the
// concatenation. Decode numerics depend on how tokens are grouped into llama_decode calls, so each
// Append is one group: a warm run (Open + Append(x)) is bit-identical to a cold run that
// appends the same prefix and then x.
//
// Threading: a Session is used by one thread at a time. Several Sessions may share one Model.
#ifndef KVSTASH_SESSION_H_
#define KVSTASH_SESSION_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "kvstash/model.h"
#include "kvstash/status.h"

namespace kvstash {

class Store;
struct SessionInternals;

enum class FlashAttention { kAuto, kOff, kOn };

// Progress of a long operation: units (tokens or bytes) done and in all. A callback should not
// throw; if the progress callback of an append does, the exception is caught, the append is undone
// and it fails with a Status.
using ProgressFn = std::function<void(uint64_t done, uint64_t total)>;

// How a session's llama.cpp context is made. Session::Create uses every field (an unset one takes
// the default its comment names). Session::Open takes every field that decides the meaning of the
// KV bytes or how later tokens are grouped into decode calls from the file (cache types, flash
// attention, batch sizes): one set here that disagrees with the file is refused by name. The
// context size and the thread counts are the caller's.
struct SessionOptions {
  static constexpr uint32_t kDefaultContext = 4096;
  // The context size. Create: unset kDefaultContext, 0 the model's training context. Open: unset
  // or 0 as saved, or, when `n_room` is set, just what the run needs.
  std::optional<uint32_t> n_ctx;
  // Open: tokens the caller will add after the saved ones (prompt + tokens to generate). With
  // n_ctx unset, the context holds n_tokens + n_room rounded up to 256, at most the saved size:
  // creating (and clearing) a 4,096-token context costs more than loading a 2,048-token session,
  // and the context size does not change numerics. 0: unknown, use the saved size.
  uint32_t n_room = 0;
  int n_threads = 0;  // 0: all cores
  // Threads for decoding prompts (llama.cpp's n_threads_batch, its -tb); 0: as n_threads.
  int n_threads_batch = 0;
  // Tokens per llama_decode call and per micro-batch (llama.cpp's -b, -ub). Create: unset 2048,
  // 512.
  std::optional<uint32_t> n_batch;
  std::optional<uint32_t> n_ubatch;
  std::optional<FlashAttention> flash_attn;  // Create: unset auto
  // f32, f16, bf16, q8_0, q4_0, q4_1, iq4_nl, q5_0, q5_1. Create: unset f16.
  std::optional<std::string> cache_type_k;
  std::optional<std::string> cache_type_v;
  // Open: bytes of the file: 0 before it is read, then (for a file not in the page cache) the
  // bytes checked so far, the file's size once it is restored.
  ProgressFn progress;
};

struct SaveOptions {
  // fsync the file and its directory before returning. Off only for benchmarks.
  bool sync = true;
  ProgressFn progress;  // bytes written
  // Save refuses to replace an existing file that is not a kvstash session (a model, a text)
  // unless this is set. The model file itself is never replaced, whatever this says.
  bool replace_any = false;
  // When it turns true (e.g. from a signal handler) the save stops with Status::Code::kCancelled
  // and the destination keeps its previous bytes. nullptr: never.
  const std::atomic<bool>* cancel = nullptr;
};

// A file a save must never replace, whatever name the destination gives it.
struct ProtectedFile {
  std::string path;
  std::string name;  // how messages call it, e.g. "the prefix file"
};

// Refuses, without writing anything, a destination that Session::Save would refuse whatever the
// session (not a regular file; an existing file that is not a kvstash session, unless
// options.replace_any) or that is one of `protected_files` under any name (same device and
// inode): for callers that want to fail before loading a model or decoding a prompt. Follows
// symbolic links as Save does. Of `options`, only replace_any and env are read.
Status CheckSaveDestination(const std::string& path, const SaveOptions& options = {},
                            const std::vector<ProtectedFile>& protected_files = {});

struct SampleOptions {
  int32_t n_predict = 128;        // < 0: until end of generation or a full context
  float temp = 0.0f;              // <= 0: greedy
  int32_t top_k = 40;             // <= 0: off
  float top_p = 0.95f;            // >= 1: off
  float min_p = 0.05f;            // <= 0: off
  uint32_t seed = 0xFFFFFFFF;     // 0xFFFFFFFF: random
  std::vector<std::string> stop;  // stop strings; the text stops before the first match
  // llama.cpp's repetition penalty over the last repeat_last_n tokens of the session (prompt
  // included, as llama-completion counts them). 1: off; repeat_last_n 0: off, -1: the context.
  float repeat_penalty = 1.0f;
  int32_t repeat_last_n = 64;
  // Never stop at end of generation: end-of-generation tokens get a -inf logit bias, as
  // llama.cpp's --ignore-eos does.
  bool ignore_eos = false;
};

enum class StopReason { kEndOfGeneration, kMaxTokens, kStopString, kContextFull, kCancelled };
const char* StopReasonName(StopReason reason);  // "eog", "n_predict", "stop", "context_full", ...

// `tokens` are the generated tokens the session keeps. On a stop string, `text` ends right before
// the match and the session is rolled back to the tokens whose text lies wholly before it, so the
// next Append continues after the returned text. When the match starts inside a token, that
// token's bytes before the match end `text` but are not in the session (at most one token's).
struct Generation {
  std::string text;
  std::vector<Token> tokens;
  StopReason stop_reason = StopReason::kMaxTokens;
};

// Called with each piece of generated text as soon as it is final (text that might be the start
// of a stop string, or half a UTF-8 character, is held back). Return false to stop. Should not
// throw: an exception is caught, the whole generation is undone and Generate fails with a Status.
using PieceCallback = std::function<bool(std::string_view piece)>;

// Where the time of Session::Open went (milliseconds).
struct OpenStats {
  double map_ms = 0;  // open + lease + map of the file, or reading it into memory
  // Parse, ranges, checksums, compatibility checks. The KV checksum of a file in the page cache
  // runs on a second thread during context creation and counts here only where it outlasts it; a
  // cold file's is computed before, alone, and counts in full.
  double verify_ms = 0;
  double context_ms = 0;  // llama_init_from_model
  double restore_ms = 0;  // copying the KV bytes into the cache
  double total_ms = 0;
  uint64_t file_bytes = 0;
  bool leased = false;  // held by a read lease while verified and restored (else a private copy)
};

struct SyncResult {
  size_t n_reused = 0;   // tokens kept from the cache (the session's own, or restored from a store)
  size_t n_decoded = 0;  // tokens decoded now
  size_t n_restored = 0;  // of n_reused: loaded from the store (Sync with a store)
  // Tokens in new whole chunks for the store (Sync with a store). They are copied out of llama.cpp
  // for the store's background writer after the first token Generate produces (or at the next
  // call that changes the cache, or when the session ends), so the answer never waits for the
  // copy; the writer may still drop them (Store::writer_stats says what landed).
  size_t n_published = 0;
  // Where the time of a Sync with a store went (ms): finding, reading, checking and restoring
  // chunks; decoding.
  double restore_ms = 0;
  double decode_ms = 0;
};

// For Session::Create(model, options, tokens, store, ...).
struct StoreSyncOptions {
  ProgressFn progress;                        // as Session::SetProgressCallback, for the decode
  const std::atomic<bool>* cancel = nullptr;  // as Session::SetCancelFlag
};

class Session {
 public:
  // A fresh, empty session on `model`: any memory llama.cpp keeps (attention KV cache, sliding
  // window, recurrent state, hybrid; README "Supported model families"). Only a hybrid whose
  // attention layers also slide is refused (kIncompatible), before any prefill.
  static Result<std::unique_ptr<Session>> Create(std::shared_ptr<const Model> model,
                                                 const SessionOptions& options = {});
  // Loads a session file saved from the same model. Checksums, the model fingerprint and every
  // KV-deciding parameter are checked before a byte reaches llama.cpp.
  static Result<std::unique_ptr<Session>> Open(std::shared_ptr<const Model> model,
                                               const std::string& path,
                                               const SessionOptions& options = {});
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;

  // Decodes `text` (or tokens) after what the session holds.
  Status Append(std::string_view text);
  Status AppendTokens(const std::vector<Token>& tokens);

  // Makes the session hold exactly `tokens`: keeps the longest common prefix with what it holds,
  // drops the rest from the cache and decodes only the tail. Passing the saved prefix again
  // decodes nothing. Tokens that do not fit the context are refused before anything is dropped.
  // A sliding window or a recurrent state cannot always go back to the common prefix (a window
  // only to its last token or while no token has left it, a recurrent state never): then
  // everything is decoded again, and n_reused says 0. Never a state that does not match.
  Result<SyncResult> Sync(const std::vector<Token>& tokens);

  // Sync through a prefix store (kvstash/store.h): makes the session hold exactly `tokens`,
  // keeping or restoring the longest prefix of whole chunks that the session or the store already
  // holds, decoding the rest in groups that never cross a chunk boundary, and queueing the new
  // whole chunks for the store's background writer. The last token is always decoded (never
  // restored), so the logits after it are the ones a cold run computes.
  // Warm == cold: the same tokens give bit-identical logits whether the store held none, some or
  // all of their chunks, because every token is decoded in the same group either way. (Plain
  // Append/Sync group tokens differently; mix them with store syncs only past the prompt.)
  // A bad chunk is a miss; a store that cannot be written is skipped with a warning: only the
  // session's own failures (context full, decode errors, cancellation) fail the call, and then
  // the session holds a prefix of `tokens` (what was kept or restored before the failure).
  Result<SyncResult> Sync(const std::vector<Token>& tokens, Store& store);

  // Create() then Sync(tokens, store), the store's counterpart of Open(): the chunks are read,
  // checked and assembled on a second thread while llama.cpp creates the context (which needs
  // none of them). `result` (optional) gets the Sync's report.
  static Result<std::unique_ptr<Session>> Create(std::shared_ptr<const Model> model,
                                                 const SessionOptions& options,
                                                 const std::vector<Token>& tokens, Store& store,
                                                 const StoreSyncOptions& sync = {},
                                                 SyncResult* result = nullptr);

  // Samples until a stop condition; generated tokens become part of the session.
  Result<Generation> Generate(const SampleOptions& options, const PieceCallback& on_piece = {});

  // Writes the session atomically and durably: temp file, fsync, rename, fsync of the directory.
  // On failure the previous file at `path` is untouched and no temp file remains (a failed fsync
  // of the directory, after the rename, is the one exception: see env/atomic_file.h). A symbolic
  // link at `path` stays and its target is written. Refused: a destination that is not a regular
  // file, that is the model file (under any name), or that exists and is not a kvstash session
  // (unless options.replace_any).
  Status Save(const std::string& path, const SaveOptions& options = {});

  // The model's logits for the next token (n_vocab floats), after everything appended so far.
  Result<std::vector<float>> Logits();

  const std::vector<Token>& tokens() const;
  uint32_t n_ctx() const;
  const Model& model() const;
  // Timings of the Open() that made this session (zeros for Create()).
  const OpenStats& open_stats() const;
  // Tokens decoded by this Session object so far (loading a file decodes none).
  size_t n_decoded_total() const;
  // Called after each llama_decode call of a multi-call append (long prefills), with tokens done
  // and total of that append. Empty: none.
  void SetProgressCallback(ProgressFn progress);
  // When *cancel turns true (e.g. from a signal handler), a running decode stops within
  // milliseconds and its call returns Status::Code::kCancelled, the session as it was before the
  // call. nullptr: never. The flag must outlive the session or be reset with nullptr.
  void SetCancelFlag(const std::atomic<bool>* cancel);

 private:
  struct Impl;
  friend struct SessionInternals;  // src/engine/session_internals.h: the benchmark's llama.cpp side
  explicit Session(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvstash

#endif  // KVSTASH_SESSION_H_
