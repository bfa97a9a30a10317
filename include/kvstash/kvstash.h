/* kvstash's C API: persist and reuse an LLM prompt's KV cache from any language.
 *
 * A thin layer over the C++ API (kvstash/model.h, session.h, store.h, session_file.h, import.h);
 * the comments there say what each operation does in full. This header says what crosses the
 * boundary and who owns what.
 *
 * Errors. Every call that can fail returns a kvstash_status. KVSTASH_OK is 0. On failure, the
 * calling thread's message (kvstash_last_error()) is one sentence naming the object, the cause
 * and the fix; output parameters are left as they were. A call that succeeds clears the message.
 * No call aborts or throws on bad input: NULL handles and out-pointers, bad options and hostile
 * files are errors (KVSTASH_INVALID_ARGUMENT, KVSTASH_CORRUPTION, ...).
 *
 * Ownership.
 *   - Handles (kvstash_model*, kvstash_session*, kvstash_store*, kvstash_file_info*) are made by
 *     the library and freed by their *_free function, which accepts NULL. A session keeps its
 *     model alive: freeing the model handle first is allowed.
 *   - A `char**`, `int32_t**` or `float**` out-parameter gives the caller a new buffer, to be
 *     released with kvstash_free(). Strings are NUL-terminated; their length is passed where text
 *     may contain NUL bytes.
 *   - A `const` pointer returned by an accessor is borrowed from its handle: valid until the next
 *     call that changes that handle, or its *_free.
 *   - Input pointers are only read during the call. Callbacks and their user_data are used during
 *     the call that takes them, except kvstash_session_set_progress's, which the session keeps
 *     until it is replaced or the session is freed.
 *
 * Options structs begin with `size`. Fill one with its *_init function first, passing the size of
 * your struct: `kvstash_sample_options o; kvstash_sample_options_init(&o, sizeof o);`. It writes
 * the defaults into at most that many bytes and sets `size`; the library later reads only the
 * fields that fit in `size`. So a program built against an older header keeps working with a
 * newer library, in both directions of the call. Passing NULL options means the defaults.
 *
 * Threads. A session is used by one thread at a time (kvstash_session_cancel() excepted); models
 * and stores may be shared by any number of threads and sessions.
 *
 * Stability. Within one major version (KVSTASH_VERSION_MAJOR; during 0.x, one minor version),
 * functions, enum values and struct fields are only added, never changed or removed; new struct
 * fields go at the end. The shared library's SONAME carries that version.
 */
#ifndef KVSTASH_KVSTASH_H_
#define KVSTASH_KVSTASH_H_

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvstash/version.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- Status and memory (the version: kvstash/version.h) --------------------------------- */

typedef enum kvstash_status {
  KVSTASH_OK = 0,
  KVSTASH_INVALID_ARGUMENT = 1, /* the caller asked for something impossible */
  KVSTASH_NOT_FOUND = 2,        /* a file or model is missing */
  KVSTASH_CORRUPTION = 3,       /* a file's bytes are wrong: bad magic, checksum, truncated */
  KVSTASH_INCOMPATIBLE = 4,     /* a valid file that does not fit this model or context */
  KVSTASH_IO_ERROR = 5,         /* the operating system refused (ENOSPC, EIO, EACCES, ...) */
  KVSTASH_CONTEXT_FULL = 6,     /* the context has no room for more tokens */
  KVSTASH_INTERNAL = 7,         /* llama.cpp failed where kvstash's checks said it would not */
  KVSTASH_CANCELLED = 8,        /* kvstash_session_cancel() or a callback asked to stop */
  KVSTASH_OUT_OF_MEMORY = 9,    /* an allocation failed */
} kvstash_status;

/* The calling thread's message for the last failed call ("" after a success). Borrowed: valid
 * until the thread's next kvstash call. Never NULL. */
KVSTASH_API const char* kvstash_last_error(void);
/* "ok", "invalid_argument", "not_found", ... ("unknown" for other values). Static storage. */
KVSTASH_API const char* kvstash_status_name(kvstash_status status);
/* Releases a buffer the library returned through an out-parameter. NULL is allowed. */
KVSTASH_API void kvstash_free(void* buffer);

/* ---- Process-wide settings --------------------------------------------------------------- */

/* llama.cpp logs through one process-wide callback. kvstash installs its own (on the first
 * model load) to read the reason of a failed llama.cpp call, and then passes each line on as
 * this setting says. */
typedef enum kvstash_llama_logs {
  /* To the callback that was installed before kvstash's (the host's own, else llama.cpp's
   * default, which prints to stderr). The default: kvstash does not change a host's logging. */
  KVSTASH_LLAMA_LOGS_HOST = 0,
  KVSTASH_LLAMA_LOGS_QUIET = 1,  /* nowhere (the kvstash CLI without -v) */
  KVSTASH_LLAMA_LOGS_STDERR = 2, /* to stderr */
} kvstash_llama_logs;
/* Without a call, the default comes from the environment variable KVSTASH_LLAMA_LOGS (host, quiet
 * or stderr), else HOST. */
KVSTASH_API kvstash_status kvstash_set_llama_logs(kvstash_llama_logs mode);
/* kvstash maps session files and installs a SIGBUS handler (chained to the previous one) on the
 * first mapping, so that a file truncated under it is an error, not a crash. false: no handler
 * is installed from now on, and files are read into memory instead (default: true). */
KVSTASH_API void kvstash_set_sigbus_guard(bool enabled);

/* ---- Model ------------------------------------------------------------------------------- */

typedef int32_t kvstash_token;
typedef struct kvstash_model kvstash_model;

typedef struct kvstash_model_options {
  uint32_t size;        /* sizeof(kvstash_model_options), set by kvstash_model_options_init */
  int32_t n_gpu_layers; /* layers offloaded to a GPU backend when llama.cpp has one (0) */
  bool repack_weights;  /* llama.cpp's repacked weights for some quantized types (true) */
} kvstash_model_options;
KVSTASH_API void kvstash_model_options_init(kvstash_model_options* options, size_t size);

/* Loads a GGUF model. options may be NULL. */
KVSTASH_API kvstash_status kvstash_model_load(const char* path,
                                              const kvstash_model_options* options,
                                              kvstash_model** out);
KVSTASH_API void kvstash_model_free(kvstash_model* model);

/* Borrowed strings, valid until kvstash_model_free ("" for NULL). */
KVSTASH_API const char* kvstash_model_path(const kvstash_model* model);
KVSTASH_API const char* kvstash_model_description(const kvstash_model* model); /* "llama 1B F16" */
/* 32 lowercase hex digits identifying the weights and metadata (xxh3-128 of the file). */
KVSTASH_API const char* kvstash_model_fingerprint(const kvstash_model* model);
KVSTASH_API int32_t kvstash_model_n_vocab(const kvstash_model* model);     /* 0 for NULL */
KVSTASH_API int32_t kvstash_model_n_ctx_train(const kvstash_model* model); /* 0 for NULL */

/* Tokens of `text` (len bytes). add_bos follows the model's vocabulary. Special tokens written
 * in the text (e.g. "<|eot_id|>", "</s>") are parsed as such, as in kvstash_session_append_text:
 * keep them out of untrusted text, or pass its tokens yourself. *tokens: kvstash_free. */
KVSTASH_API kvstash_status kvstash_model_tokenize(const kvstash_model* model, const char* text,
                                                  size_t len, bool add_bos, kvstash_token** tokens,
                                                  size_t* n_tokens);
/* Text of `tokens` (control tokens such as BOS and EOS have none). *text (NUL-terminated, *len
 * bytes before the NUL): kvstash_free. */
KVSTASH_API kvstash_status kvstash_model_detokenize(const kvstash_model* model,
                                                    const kvstash_token* tokens, size_t n_tokens,
                                                    char** text, size_t* len);
/* Whether `token` ends a generation (EOS, EOT, ...). false for NULL or out-of-range tokens. */
KVSTASH_API bool kvstash_model_is_end_of_generation(const kvstash_model* model,
                                                    kvstash_token token);

typedef struct kvstash_chat_message {
  const char* role; /* "system", "user", "assistant" */
  const char* content;
} kvstash_chat_message;
/* The prompt text of `messages` in a chat template: llama.cpp's built-in template
 * `template_name` (e.g. "chatml", "llama3") when not NULL or "", else the model's own. With
 * add_assistant the text ends with the opening of the assistant's turn. *text: kvstash_free. */
KVSTASH_API kvstash_status kvstash_model_apply_chat_template(const kvstash_model* model,
                                                             const kvstash_chat_message* messages,
                                                             size_t n_messages,
                                                             const char* template_name,
                                                             bool add_assistant, char** text);

/* ---- Store (a prefix cache directory shared by processes; docs/STORE.md) ---------------- */

typedef struct kvstash_store kvstash_store;

typedef struct kvstash_store_options {
  uint32_t size;
  uint32_t chunk_tokens;      /* tokens per chunk of a new store (0: 256) */
  uint64_t max_bytes;         /* byte budget, evicted least recently used first (0: none) */
  uint64_t max_pending_bytes; /* bytes queued for the background writer (1 GiB) */
  bool create;                /* create the directory when missing (true) */
  bool sync;                  /* fsync chunk files before publishing (true) */
  /* A Redis tier shared by several machines: "redis://[user:password@]host:port[/db]"; NULL or
     "": none. Redis being down or full never fails a lookup (README, "Several machines"). The
     password is never printed. Copied by kvstash_store_open. */
  const char* redis_url;
} kvstash_store_options;
KVSTASH_API void kvstash_store_options_init(kvstash_store_options* options, size_t size);

KVSTASH_API kvstash_status kvstash_store_open(const char* dir, const kvstash_store_options* options,
                                              kvstash_store** out);
/* Waits for queued writes, then releases the handle. Sessions that used it do not keep it. */
KVSTASH_API void kvstash_store_free(kvstash_store* store);
/* Blocks until every chunk queued so far was written or dropped. */
KVSTASH_API kvstash_status kvstash_store_wait_for_writes(kvstash_store* store);

typedef struct kvstash_store_stats {
  uint32_t chunk_tokens;
  uint64_t chunks;
  uint64_t bytes;
  uint64_t temp_files;
  uint64_t namespaces;
  /* This handle's background writer. */
  uint64_t chunks_written;
  uint64_t chunks_existing;
  uint64_t chunks_dropped;
  uint64_t bytes_written;
} kvstash_store_stats;
KVSTASH_API kvstash_status kvstash_store_stats_get(const kvstash_store* store,
                                                   kvstash_store_stats* out);

typedef struct kvstash_gc_report {
  uint64_t chunks_removed;
  uint64_t bytes_removed;
  uint64_t bytes_left;
  uint64_t temp_files_removed;
} kvstash_gc_report;
/* Removes dead writers' temp files, then least recently used chunks until at most max_bytes. */
KVSTASH_API kvstash_status kvstash_store_gc(kvstash_store* store, uint64_t max_bytes,
                                            kvstash_gc_report* out /* may be NULL */);
/* Reads and checks every chunk. *bad_report: one "path: why" line per bad chunk ("" when none);
 * kvstash_free. Either out-pointer may be NULL. */
KVSTASH_API kvstash_status kvstash_store_verify(const kvstash_store* store, uint64_t* chunks_ok,
                                                uint64_t* chunks_bad, char** bad_report);
/* Removes every chunk, or those of namespace `ns_hash` (hex) when not NULL or "". */
KVSTASH_API kvstash_status kvstash_store_clear(kvstash_store* store, const char* ns_hash,
                                               uint64_t* removed /* may be NULL */);

/* ---- Session ----------------------------------------------------------------------------- */

typedef struct kvstash_session kvstash_session;

typedef enum kvstash_flash_attn {
  KVSTASH_FLASH_ATTN_AUTO = 0,
  KVSTASH_FLASH_ATTN_OFF = 1,
  KVSTASH_FLASH_ATTN_ON = 2,
  KVSTASH_FLASH_ATTN_AS_SAVED = 3, /* kvstash_open_options only */
} kvstash_flash_attn;

typedef struct kvstash_session_options {
  uint32_t size;
  uint32_t n_ctx;                /* 4096; 0: the model's training context */
  int32_t n_threads;             /* 0: all cores */
  uint32_t n_batch;              /* 2048 */
  uint32_t n_ubatch;             /* 512 */
  kvstash_flash_attn flash_attn; /* AUTO */
  const char* cache_type_k;      /* "f16"; also f32 bf16 q8_0 q4_0 q4_1 iq4_nl q5_0 q5_1 */
  const char* cache_type_v;      /* "f16" */
  int32_t n_threads_batch;       /* threads for prompts (llama.cpp's -tb); 0: as n_threads */
} kvstash_session_options;
KVSTASH_API void kvstash_session_options_init(kvstash_session_options* options, size_t size);

/* Open takes every parameter that decides the meaning of the KV bytes from the file; the
 * defaults below mean "as saved". Setting one that disagrees with the file is refused by name. */
typedef struct kvstash_open_options {
  uint32_t size;
  uint32_t n_ctx;                /* 0: as saved, or just what n_room needs */
  uint32_t n_room;               /* tokens the caller will add after the saved ones (0: unknown) */
  int32_t n_threads;             /* 0: all cores */
  kvstash_flash_attn flash_attn; /* AS_SAVED */
  const char* cache_type_k;      /* NULL: as saved */
  const char* cache_type_v;      /* NULL: as saved */
  int32_t n_threads_batch;       /* threads for prompts; 0: as n_threads */
} kvstash_open_options;
KVSTASH_API void kvstash_open_options_init(kvstash_open_options* options, size_t size);

/* A fresh, empty session. options may be NULL. */
KVSTASH_API kvstash_status kvstash_session_create(const kvstash_model* model,
                                                  const kvstash_session_options* options,
                                                  kvstash_session** out);
/* Loads a session file saved from the same model; every check runs before a byte reaches
 * llama.cpp. options may be NULL. */
KVSTASH_API kvstash_status kvstash_session_open(const kvstash_model* model, const char* path,
                                                const kvstash_open_options* options,
                                                kvstash_session** out);
KVSTASH_API void kvstash_session_free(kvstash_session* session);

/* llama.cpp's files record no context parameter: these are the ones the session gets. The cache
 * types and flash attention come from the file. */
typedef struct kvstash_import_options {
  uint32_t size;
  uint32_t n_ctx;    /* 0: 4096, or the tokens held plus one rounded up to 256 when that is more */
  int32_t n_threads; /* 0: all cores */
  uint32_t n_batch;  /* 2048 */
  uint32_t n_ubatch; /* 512 */
} kvstash_import_options;
KVSTASH_API void kvstash_import_options_init(kvstash_import_options* options, size_t size);
/* A session holding what one of llama.cpp's own state files holds (llama_state_save_file's, e.g.
 * llama-completion's --prompt-cache, or llama_state_seq_save_file's), after every check a session
 * file gets and a decode of its last token that must reproduce the file's last cell: a cache from
 * another model is refused (KVSTASH_INCOMPATIBLE), as is a model that keeps a sliding window or a
 * recurrent state. kvstash_session_save then writes a kvstash session (kvstash/import.h).
 * options may be NULL. */
KVSTASH_API kvstash_status kvstash_session_import(const kvstash_model* model, const char* path,
                                                  const kvstash_import_options* options,
                                                  kvstash_session** out);

/* Decodes text (len bytes; the first text of an empty session gets BOS; special tokens in it are
 * parsed, see kvstash_model_tokenize) or tokens after what the session holds. On failure the
 * session is as it was before the call. */
KVSTASH_API kvstash_status kvstash_session_append_text(kvstash_session* session, const char* text,
                                                       size_t len);
KVSTASH_API kvstash_status kvstash_session_append_tokens(kvstash_session* session,
                                                         const kvstash_token* tokens,
                                                         size_t n_tokens);

typedef struct kvstash_sync_result {
  size_t n_reused;   /* tokens kept from the cache or restored from the store */
  size_t n_decoded;  /* tokens decoded now */
  size_t n_restored; /* of n_reused: loaded from the store */
  /* Tokens in new whole chunks for the store. They are copied out for its background writer at
   * the session's next generated token, next call that changes the cache, or free; until then a
   * kvstash_store_wait_for_writes does not wait for them, and freeing the store first drops them.
   */
  size_t n_published;
  double restore_ms;
  double decode_ms;
} kvstash_sync_result;
/* Makes the session hold exactly `tokens`, keeping the longest common prefix and decoding only
 * the tail. With a store (not NULL), the longest stored prefix of whole chunks is restored and
 * new chunks are published in the background (Session::Sync(tokens, store)). result may be NULL. */
KVSTASH_API kvstash_status kvstash_session_sync(kvstash_session* session,
                                                const kvstash_token* tokens, size_t n_tokens,
                                                kvstash_store* store, kvstash_sync_result* result);

typedef enum kvstash_stop_reason {
  KVSTASH_STOP_END_OF_GENERATION = 0,
  KVSTASH_STOP_MAX_TOKENS = 1,
  KVSTASH_STOP_STOP_STRING = 2,
  KVSTASH_STOP_CONTEXT_FULL = 3,
  KVSTASH_STOP_CANCELLED = 4, /* the piece callback returned false */
} kvstash_stop_reason;

typedef struct kvstash_sample_options {
  uint32_t size;
  int32_t n_predict;       /* 128; < 0: until end of generation or a full context */
  float temp;              /* 0 (greedy); <= 0: greedy */
  int32_t top_k;           /* 40; <= 0: off */
  float top_p;             /* 0.95; >= 1: off */
  float min_p;             /* 0.05; <= 0: off */
  uint32_t seed;           /* 0xFFFFFFFF: random */
  const char* const* stop; /* n_stop stop strings; the text stops before the first match */
  size_t n_stop;
  float repeat_penalty;  /* 1 (off); llama.cpp's --repeat-penalty over the session's last tokens */
  int32_t repeat_last_n; /* 64; 0: off, -1: the context */
  bool ignore_eos;       /* false; true: end-of-generation tokens are never sampled */
} kvstash_sample_options;
KVSTASH_API void kvstash_sample_options_init(kvstash_sample_options* options, size_t size);

/* Called with each piece of generated text (len bytes, not NUL-terminated) as soon as it is final
 * (text that may start a stop string is held back). Pieces are bytes as the tokens produce them:
 * a multi-byte UTF-8 character may be split across two pieces, so decode the concatenation, not
 * each piece. Return false to stop (stop reason CANCELLED). */
typedef bool (*kvstash_piece_fn)(const char* piece, size_t len, void* user_data);

typedef struct kvstash_generation {
  /* NUL-terminated, text_len bytes before the NUL. With STOP_STRING it ends right before the
   * match; when the match starts inside a token, that token is not kept (not in `tokens`, not in
   * the session) but its bytes before the match end `text`: at most one token's bytes of `text`
   * are not in the session. */
  char* text;
  size_t text_len;
  kvstash_token* tokens; /* the generated tokens the session keeps */
  size_t n_tokens;
  kvstash_stop_reason stop_reason;
} kvstash_generation;
/* Releases the buffers of a generation (not the struct itself) and zeroes it. NULL allowed. */
KVSTASH_API void kvstash_generation_clear(kvstash_generation* generation);

/* Samples until a stop condition; generated tokens become part of the session. options and
 * on_piece may be NULL; out may be NULL (the text then only reaches on_piece). On success *out is
 * overwritten, not released: kvstash_generation_clear a struct before passing it again. */
KVSTASH_API kvstash_status kvstash_session_generate(kvstash_session* session,
                                                    const kvstash_sample_options* options,
                                                    kvstash_piece_fn on_piece, void* user_data,
                                                    kvstash_generation* out);

typedef struct kvstash_save_options {
  uint32_t size;
  bool sync;        /* fsync file and directory before returning (true) */
  bool replace_any; /* replace an existing file that is not a kvstash session (false) */
} kvstash_save_options;
KVSTASH_API void kvstash_save_options_init(kvstash_save_options* options, size_t size);
/* Writes the session atomically and durably. On failure the previous file is untouched. */
KVSTASH_API kvstash_status kvstash_session_save(kvstash_session* session, const char* path,
                                                const kvstash_save_options* options);

/* The logits for the next token (n_vocab floats). *logits: kvstash_free. */
KVSTASH_API kvstash_status kvstash_session_logits(kvstash_session* session, float** logits,
                                                  size_t* n_logits);
/* The tokens the session holds. Borrowed: valid until the next call on the session. NULL session:
 * NULL and 0 tokens; n_tokens may be NULL. */
KVSTASH_API const kvstash_token* kvstash_session_tokens(const kvstash_session* session,
                                                        size_t* n_tokens);
KVSTASH_API uint32_t kvstash_session_n_ctx(const kvstash_session* session); /* 0 for NULL */
/* Tokens decoded by this session object (loading a file decodes none). 0 for NULL. */
KVSTASH_API size_t kvstash_session_n_decoded(const kvstash_session* session);

typedef struct kvstash_open_stats {
  double map_ms, verify_ms, context_ms, restore_ms, total_ms;
  uint64_t file_bytes;
} kvstash_open_stats;
/* Timings of the kvstash_session_open that made this session (zeros for create). */
KVSTASH_API kvstash_status kvstash_session_open_stats(const kvstash_session* session,
                                                      kvstash_open_stats* out);

/* Called after each llama_decode call of a long append, with tokens done and in all. NULL: none. */
typedef void (*kvstash_progress_fn)(uint64_t done, uint64_t total, void* user_data);
KVSTASH_API kvstash_status kvstash_session_set_progress(kvstash_session* session,
                                                        kvstash_progress_fn progress,
                                                        void* user_data);
/* Stops the session's running append, sync, generate or save within milliseconds, or else the
 * next such call: it returns KVSTASH_CANCELLED and the session is as before that call (a
 * generation is undone; to stop one and keep its tokens, return false from the piece callback).
 * Safe from any thread and from a signal handler. */
KVSTASH_API void kvstash_session_cancel(kvstash_session* session);

/* ---- Inspecting a session file without a model -------------------------------------------- */

typedef struct kvstash_file_info {
  uint32_t format_version;
  uint64_t file_size;
  uint32_t n_ctx; /* the context the KV was computed in */
  const kvstash_token* tokens;
  size_t n_tokens;
  uint64_t kv_bytes;
  bool has_logits;
  bool checksums_verified;
  const char* writer;            /* "kvstash 0.2.0" */
  const char* llama_build;       /* llama.cpp commit */
  const char* model_fingerprint; /* 32 hex digits */
  const char* model_description;
  const char* model_arch;
  const char* cache_type_k;
  const char* cache_type_v;
  bool flash_attn;
} kvstash_file_info;
/* Reads and checks a session file's structure (and checksums when verify_checksums). The struct
 * and everything it points to belong to the library until kvstash_file_info_free. */
KVSTASH_API kvstash_status kvstash_inspect(const char* path, bool verify_checksums,
                                           kvstash_file_info** out);
KVSTASH_API void kvstash_file_info_free(kvstash_file_info* info);

#ifdef __cplusplus
}
#endif

#endif /* KVSTASH_KVSTASH_H_ */
