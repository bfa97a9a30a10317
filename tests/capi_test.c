/* The C API (include/kvstash/kvstash.h), from C: every function, its error paths, and warm ==
 * cold through the boundary. Usage: capi_test A.gguf B.gguf SCRATCH_DIR LLAMA_FILE
 * (tests/capi_test.sh makes them; B has other weights of the same shape; LLAMA_FILE is a prompt
 * cache that llama_state_save_file wrote with A, as llama-completion --prompt-cache does). */
/* nftw, to find a chunk file of the store. */
#define _XOPEN_SOURCE 700
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kvstash/kvstash.h"
/* Only to install a host log callback before kvstash's, for KVSTASH_LLAMA_LOGS_HOST. */
#include "llama.h"

static int g_passed = 0;

/* Stops at the first failure, before anything the condition guards is dereferenced. */
#define ASSERT(cond)                                                                              \
  do {                                                                                            \
    if (!(cond)) {                                                                                \
      fprintf(stderr, "%s:%d: ASSERT(%s) failed; kvstash_last_error: '%s'\n", __FILE__, __LINE__, \
              #cond, kvstash_last_error());                                                       \
      fprintf(stderr, "capi_test: %d passed, 1 failed\n", g_passed);                              \
      exit(1);                                                                                    \
    }                                                                                             \
    ++g_passed;                                                                                   \
  } while (0)

/* `expr` returns `want`; a failure also leaves a message, a success none. */
#define EXPECT_STATUS(expr, want)                                                             \
  do {                                                                                        \
    kvstash_status got_ = (expr);                                                             \
    if (got_ != (want)) {                                                                     \
      fprintf(stderr, "%s:%d: %s returned %s, want %s; kvstash_last_error: '%s'\n", __FILE__, \
              __LINE__, #expr, kvstash_status_name(got_), kvstash_status_name(want),          \
              kvstash_last_error());                                                          \
      fprintf(stderr, "capi_test: %d passed, 1 failed\n", g_passed);                          \
      exit(1);                                                                                \
    }                                                                                         \
    ASSERT((want) == KVSTASH_OK ? kvstash_last_error()[0] == '\0'                             \
                                : kvstash_last_error()[0] != '\0');                           \
  } while (0)
#define ASSERT_OK(expr) EXPECT_STATUS(expr, KVSTASH_OK)

static const char* g_model_a;
static const char* g_model_b;
static const char* g_llama_file;
static char g_dir[4096];

static const char kPrefix[] =
    "You are a careful assistant. The following document describes the kvstash project, "
    "which stores the KV cache of a prompt so that later runs skip the prefill.";
static const char kSuffix[] = " Question: what does kvstash store? Answer:";

static void PathIn(char* out, size_t size, const char* name) {
  int n = snprintf(out, size, "%s/%s", g_dir, name);
  ASSERT(n > 0 && (size_t)n < size);
}

static void WriteFile(const char* path, const char* text) {
  FILE* f = fopen(path, "wb");
  ASSERT(f != NULL);
  ASSERT(fwrite(text, 1, strlen(text), f) == strlen(text));
  ASSERT(fclose(f) == 0);
}

static int FileExists(const char* path) {
  FILE* f = fopen(path, "rb");
  if (f == NULL) return 0;
  fclose(f);
  return 1;
}

/* Copies `from` to `to`, with the byte in the middle inverted. */
static void CopyFlippingMiddle(const char* from, const char* to) {
  FILE* in = fopen(from, "rb");
  ASSERT(in != NULL);
  ASSERT(fseek(in, 0, SEEK_END) == 0);
  long size = ftell(in);
  ASSERT(size > 0);
  ASSERT(fseek(in, 0, SEEK_SET) == 0);
  unsigned char* bytes = malloc((size_t)size);
  ASSERT(bytes != NULL);
  ASSERT(fread(bytes, 1, (size_t)size, in) == (size_t)size);
  fclose(in);
  bytes[size / 2] ^= 0xFF;
  FILE* out = fopen(to, "wb");
  ASSERT(out != NULL);
  ASSERT(fwrite(bytes, 1, (size_t)size, out) == (size_t)size);
  ASSERT(fclose(out) == 0);
  free(bytes);
}

/* ---- status, memory, version ---------------------------------------------------------------- */

static void TestBasics(void) {
  ASSERT(strcmp(kvstash_version(), KVSTASH_VERSION_STRING) == 0);
  ASSERT(strcmp(kvstash_last_error(), "") == 0);
  ASSERT(strcmp(kvstash_status_name(KVSTASH_OK), "ok") == 0);
  ASSERT(strcmp(kvstash_status_name(KVSTASH_INVALID_ARGUMENT), "invalid_argument") == 0);
  ASSERT(strcmp(kvstash_status_name(KVSTASH_NOT_FOUND), "not_found") == 0);
  ASSERT(strcmp(kvstash_status_name(KVSTASH_CORRUPTION), "corruption") == 0);
  ASSERT(strcmp(kvstash_status_name(KVSTASH_INCOMPATIBLE), "incompatible") == 0);
  ASSERT(strcmp(kvstash_status_name(KVSTASH_IO_ERROR), "io_error") == 0);
  ASSERT(strcmp(kvstash_status_name(KVSTASH_CONTEXT_FULL), "context_full") == 0);
  ASSERT(strcmp(kvstash_status_name(KVSTASH_INTERNAL), "internal") == 0);
  ASSERT(strcmp(kvstash_status_name(KVSTASH_CANCELLED), "cancelled") == 0);
  ASSERT(strcmp(kvstash_status_name(KVSTASH_OUT_OF_MEMORY), "out_of_memory") == 0);
  ASSERT(strcmp(kvstash_status_name((kvstash_status)1234), "unknown") == 0);
  kvstash_free(NULL);
  kvstash_generation_clear(NULL);
  kvstash_model_free(NULL);
  kvstash_session_free(NULL);
  kvstash_store_free(NULL);
  kvstash_file_info_free(NULL);
  kvstash_session_cancel(NULL);
  /* The options' *_init functions accept NULL too. */
  kvstash_model_options_init(NULL, 64);
  kvstash_store_options_init(NULL, 64);
  kvstash_session_options_init(NULL, 64);
  kvstash_open_options_init(NULL, 64);
  kvstash_sample_options_init(NULL, 64);
  kvstash_save_options_init(NULL, 64);
}

/* ---- llama.cpp's logs ------------------------------------------------------------------------ */

static int g_host_lines = 0;
static void HostLog(enum ggml_log_level level, const char* text, void* user_data) {
  (void)level;
  (void)text;
  ASSERT(user_data == &g_host_lines);
  ++g_host_lines;
}

/* Runs before any other kvstash call that touches llama.cpp, so that the host's callback is the
 * one kvstash finds when it installs its own. Returns model A. */
static kvstash_model* TestLogs(void) {
  llama_log_set(HostLog, &g_host_lines);
  ASSERT_OK(kvstash_set_llama_logs(KVSTASH_LLAMA_LOGS_HOST));
  kvstash_model* model = NULL;
  ASSERT_OK(kvstash_model_load(g_model_a, NULL, &model));
  ASSERT(model != NULL);
  ASSERT(g_host_lines > 0); /* the load's lines reached the host's callback */
  kvstash_model_free(model);

  ASSERT_OK(kvstash_set_llama_logs(KVSTASH_LLAMA_LOGS_QUIET));
  const int before = g_host_lines;
  model = NULL;
  ASSERT_OK(kvstash_model_load(g_model_a, NULL, &model));
  ASSERT(model != NULL);
  ASSERT(g_host_lines == before);

  ASSERT_OK(kvstash_set_llama_logs(KVSTASH_LLAMA_LOGS_STDERR));
  EXPECT_STATUS(kvstash_set_llama_logs((kvstash_llama_logs)77), KVSTASH_INVALID_ARGUMENT);
  ASSERT(strstr(kvstash_last_error(), "kvstash_set_llama_logs") != NULL);
  ASSERT_OK(kvstash_set_llama_logs(KVSTASH_LLAMA_LOGS_QUIET));
  ASSERT(g_host_lines == before);
  return model;
}

/* ---- model ----------------------------------------------------------------------------------- */

static void TestModelLoadErrors(void) {
  kvstash_model* model = (kvstash_model*)&g_passed; /* must be left as it was */
  kvstash_model* const untouched = model;
  EXPECT_STATUS(kvstash_model_load(NULL, NULL, &model), KVSTASH_INVALID_ARGUMENT);
  ASSERT(strstr(kvstash_last_error(), "kvstash_model_load") != NULL);
  ASSERT(strstr(kvstash_last_error(), "path") != NULL);
  EXPECT_STATUS(kvstash_model_load(g_model_a, NULL, NULL), KVSTASH_INVALID_ARGUMENT);
  ASSERT(strstr(kvstash_last_error(), "out") != NULL);
  char missing[4200];
  PathIn(missing, sizeof missing, "missing.gguf");
  EXPECT_STATUS(kvstash_model_load(missing, NULL, &model), KVSTASH_NOT_FOUND);
  ASSERT(model == untouched);
  kvstash_model_options options;
  kvstash_model_options_init(&options, sizeof options);
  ASSERT(options.size == sizeof options && options.n_gpu_layers == 0 && options.repack_weights);
  options.size = 0;
  EXPECT_STATUS(kvstash_model_load(g_model_a, &options, &model), KVSTASH_INVALID_ARGUMENT);
  ASSERT(model == untouched);
  /* An older header's struct: only n_gpu_layers; repack_weights (garbage here) is not read. */
  kvstash_model_options_init(&options, sizeof options);
  options.size = (uint32_t)(offsetof(kvstash_model_options, n_gpu_layers) + sizeof(int32_t));
  memset(&options.repack_weights, 0x5A, sizeof options.repack_weights);
  ASSERT_OK(kvstash_model_load(g_model_a, &options, &model));
  ASSERT(model != untouched);
  kvstash_model_free(model);
  /* A newer header's larger struct is accepted. */
  kvstash_model_options_init(&options, sizeof options);
  options.size = 4096;
  model = NULL;
  ASSERT_OK(kvstash_model_load(g_model_a, &options, &model));
  kvstash_model_free(model);
}

static void TestModelAccessors(const kvstash_model* model, const kvstash_model* other) {
  ASSERT(strstr(kvstash_model_path(model), "a.gguf") != NULL);
  ASSERT(strlen(kvstash_model_description(model)) > 0);
  const char* fp = kvstash_model_fingerprint(model);
  ASSERT(strlen(fp) == 32 && strspn(fp, "0123456789abcdef") == 32);
  ASSERT(strcmp(fp, kvstash_model_fingerprint(other)) != 0);
  ASSERT(kvstash_model_n_vocab(model) > 0);
  ASSERT(kvstash_model_n_ctx_train(model) > 0);
  ASSERT(kvstash_model_n_vocab(NULL) == 0);
  ASSERT(kvstash_model_n_ctx_train(NULL) == 0);
  ASSERT(kvstash_model_path(NULL) != NULL && kvstash_model_description(NULL) != NULL &&
         kvstash_model_fingerprint(NULL) != NULL);
  int n_eog = 0;
  for (kvstash_token t = 0; t < kvstash_model_n_vocab(model); ++t)
    n_eog += kvstash_model_is_end_of_generation(model, t);
  ASSERT(n_eog > 0);
  ASSERT(!kvstash_model_is_end_of_generation(NULL, 0));
  ASSERT(!kvstash_model_is_end_of_generation(model, -1));
  ASSERT(!kvstash_model_is_end_of_generation(model, kvstash_model_n_vocab(model)));
}

static void TestTokenize(const kvstash_model* model) {
  static const char kText[] = "Hello world, this is kvstash.";
  kvstash_token* tokens = NULL;
  size_t n = 0;
  ASSERT_OK(kvstash_model_tokenize(model, kText, strlen(kText), false, &tokens, &n));
  ASSERT(tokens != NULL && n > 3);
  char* text = NULL;
  size_t len = 0;
  ASSERT_OK(kvstash_model_detokenize(model, tokens, n, &text, &len));
  ASSERT(text != NULL && len == strlen(text));
  /* An SPM vocabulary puts a space before the first word. */
  const char* start = (len > 0 && text[0] == ' ') ? text + 1 : text;
  ASSERT(strcmp(start, kText) == 0);
  kvstash_free(text);
  kvstash_token* with_bos = NULL;
  size_t n_bos = 0;
  ASSERT_OK(kvstash_model_tokenize(model, kText, strlen(kText), true, &with_bos, &n_bos));
  ASSERT(with_bos != NULL && n_bos == n + 1 &&
         memcmp(with_bos + 1, tokens, n * sizeof *tokens) == 0);
  kvstash_free(with_bos);
  /* Text with a NUL byte inside is passed by length. */
  kvstash_free(tokens);
  tokens = NULL;
  ASSERT_OK(kvstash_model_tokenize(model, "a\0b", 3, false, &tokens, &n));
  ASSERT(tokens != NULL && n >= 2);
  kvstash_free(tokens);
  tokens = NULL;
  ASSERT_OK(kvstash_model_tokenize(model, NULL, 0, false, &tokens, &n));
  ASSERT(tokens != NULL && n == 0);
  kvstash_free(tokens);

  EXPECT_STATUS(kvstash_model_tokenize(NULL, "x", 1, false, &tokens, &n), KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_model_tokenize(model, NULL, 1, false, &tokens, &n),
                KVSTASH_INVALID_ARGUMENT);
  ASSERT(strstr(kvstash_last_error(), "kvstash_model_tokenize") != NULL);
  ASSERT(strstr(kvstash_last_error(), "text") != NULL);
  EXPECT_STATUS(kvstash_model_tokenize(model, "x", 1, false, NULL, &n), KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_model_tokenize(model, "x", 1, false, &tokens, NULL),
                KVSTASH_INVALID_ARGUMENT);
  const kvstash_token bad[] = {1, -1};
  EXPECT_STATUS(kvstash_model_detokenize(model, bad, 2, &text, &len), KVSTASH_INVALID_ARGUMENT);
  const kvstash_token too_big[] = {kvstash_model_n_vocab(model)};
  EXPECT_STATUS(kvstash_model_detokenize(model, too_big, 1, &text, &len), KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_model_detokenize(NULL, bad, 1, &text, &len), KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_model_detokenize(model, NULL, 1, &text, &len), KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_model_detokenize(model, bad, 1, NULL, &len), KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_model_detokenize(model, bad, 1, &text, NULL), KVSTASH_INVALID_ARGUMENT);
  text = NULL;
  ASSERT_OK(kvstash_model_detokenize(model, NULL, 0, &text, &len));
  ASSERT(text != NULL && len == 0 && text[0] == '\0');
  kvstash_free(text);
}

static void TestChatTemplate(const kvstash_model* model) {
  const kvstash_chat_message messages[] = {{"system", "Be brief."}, {"user", "Hi there"}};
  char* own = NULL;
  ASSERT_OK(kvstash_model_apply_chat_template(model, messages, 2, NULL, true, &own));
  ASSERT(own != NULL);
  ASSERT(strstr(own, "Be brief.") != NULL && strstr(own, "Hi there") != NULL);
  ASSERT(strstr(own, "<|im_start|>user") != NULL);
  const char* tail = "<|im_start|>assistant\n";
  ASSERT(strlen(own) > strlen(tail) && strcmp(own + strlen(own) - strlen(tail), tail) == 0);
  char* chatml = NULL;
  ASSERT_OK(kvstash_model_apply_chat_template(model, messages, 2, "chatml", true, &chatml));
  ASSERT(chatml != NULL && strcmp(own, chatml) == 0);
  kvstash_free(chatml);
  char* no_assistant = NULL;
  ASSERT_OK(kvstash_model_apply_chat_template(model, messages, 2, "", false, &no_assistant));
  ASSERT(no_assistant != NULL && strstr(no_assistant, tail) == NULL);
  kvstash_free(no_assistant);
  kvstash_free(own);

  char* text = NULL;
  EXPECT_STATUS(
      kvstash_model_apply_chat_template(model, messages, 2, "no-such-template", true, &text),
      KVSTASH_INVALID_ARGUMENT);
  ASSERT(strstr(kvstash_last_error(), "no-such-template") != NULL);
  const kvstash_chat_message null_role[] = {{NULL, "x"}};
  EXPECT_STATUS(kvstash_model_apply_chat_template(model, null_role, 1, NULL, true, &text),
                KVSTASH_INVALID_ARGUMENT);
  ASSERT(strstr(kvstash_last_error(), "role") != NULL);
  const kvstash_chat_message null_content[] = {{"user", NULL}};
  EXPECT_STATUS(kvstash_model_apply_chat_template(model, null_content, 1, NULL, true, &text),
                KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_model_apply_chat_template(NULL, messages, 2, NULL, true, &text),
                KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_model_apply_chat_template(model, NULL, 2, NULL, true, &text),
                KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_model_apply_chat_template(model, messages, 2, NULL, true, NULL),
                KVSTASH_INVALID_ARGUMENT);
  ASSERT(text == NULL);
}

/* ---- sessions -------------------------------------------------------------------------------- */

static kvstash_session* NewSession(const kvstash_model* model, uint32_t n_ctx) {
  kvstash_session_options options;
  kvstash_session_options_init(&options, sizeof options);
  options.n_ctx = n_ctx;
  options.n_threads = 2;
  kvstash_session* session = NULL;
  ASSERT_OK(kvstash_session_create(model, &options, &session));
  ASSERT(session != NULL);
  return session;
}

static float* Logits(kvstash_session* session, size_t* n) {
  float* logits = NULL;
  ASSERT_OK(kvstash_session_logits(session, &logits, n));
  ASSERT(logits != NULL);
  return logits;
}

static kvstash_generation Greedy(kvstash_session* session, int32_t n_predict) {
  kvstash_sample_options options;
  kvstash_sample_options_init(&options, sizeof options);
  options.n_predict = n_predict;
  options.temp = 0.0f;
  kvstash_generation generation;
  memset(&generation, 0, sizeof generation);
  ASSERT_OK(kvstash_session_generate(session, &options, NULL, NULL, &generation));
  ASSERT(generation.text != NULL && generation.text_len == strlen(generation.text));
  return generation;
}

static void TestSessionCreateErrors(const kvstash_model* model) {
  kvstash_session_options options;
  kvstash_session_options_init(&options, sizeof options);
  ASSERT(options.size == sizeof options && options.n_ctx == 4096 && options.n_batch == 2048 &&
         options.n_ubatch == 512 && options.flash_attn == KVSTASH_FLASH_ATTN_AUTO &&
         strcmp(options.cache_type_k, "f16") == 0 && strcmp(options.cache_type_v, "f16") == 0);
  kvstash_session* session = NULL;
  EXPECT_STATUS(kvstash_session_create(NULL, NULL, &session), KVSTASH_INVALID_ARGUMENT);
  ASSERT(strstr(kvstash_last_error(), "kvstash_session_create") != NULL);
  ASSERT(strstr(kvstash_last_error(), "model") != NULL);
  EXPECT_STATUS(kvstash_session_create(model, NULL, NULL), KVSTASH_INVALID_ARGUMENT);
  options.cache_type_k = "q9_9";
  EXPECT_STATUS(kvstash_session_create(model, &options, &session), KVSTASH_INVALID_ARGUMENT);
  ASSERT(strstr(kvstash_last_error(), "q9_9") != NULL);
  kvstash_session_options_init(&options, sizeof options);
  options.flash_attn = KVSTASH_FLASH_ATTN_AS_SAVED;
  EXPECT_STATUS(kvstash_session_create(model, &options, &session), KVSTASH_INVALID_ARGUMENT);
  kvstash_session_options_init(&options, sizeof options);
  options.size = 0;
  EXPECT_STATUS(kvstash_session_create(model, &options, &session), KVSTASH_INVALID_ARGUMENT);
  ASSERT(session == NULL);
  /* An older header's struct ends after n_ctx: the fields after it are not read. */
  kvstash_session_options_init(&options, sizeof options);
  options.size = (uint32_t)(offsetof(kvstash_session_options, n_ctx) + sizeof(uint32_t));
  options.n_ctx = 512;
  options.n_ubatch = 0;
  options.cache_type_k = "q9_9";
  ASSERT_OK(kvstash_session_create(model, &options, &session));
  ASSERT(session != NULL && kvstash_session_n_ctx(session) == 512);
  kvstash_session_free(session);
  /* A NULL options struct means the defaults. */
  session = NULL;
  ASSERT_OK(kvstash_session_create(model, NULL, &session));
  ASSERT(session != NULL && kvstash_session_n_ctx(session) == 4096);
  kvstash_open_stats stats;
  ASSERT_OK(kvstash_session_open_stats(session, &stats));
  ASSERT(stats.file_bytes == 0 && stats.total_ms == 0);
  kvstash_session_free(session);
}

/* Saves the prefix; checks warm == cold (logits bit for bit, greedy text). */
static void TestWarmEqualsCold(const kvstash_model* model, const char* saved) {
  kvstash_session* cold = NewSession(model, 512);
  ASSERT_OK(kvstash_session_append_text(cold, kPrefix, strlen(kPrefix)));
  size_t n_prefix = 0;
  const kvstash_token* prefix_tokens = kvstash_session_tokens(cold, &n_prefix);
  ASSERT(prefix_tokens != NULL && n_prefix > 10);
  ASSERT(kvstash_session_n_decoded(cold) == n_prefix);
  kvstash_save_options save;
  kvstash_save_options_init(&save, sizeof save);
  ASSERT(save.size == sizeof save && save.sync && !save.replace_any);
  ASSERT_OK(kvstash_session_save(cold, saved, &save));
  ASSERT_OK(kvstash_session_append_text(cold, kSuffix, strlen(kSuffix)));
  size_t n_cold = 0, n_all = 0;
  float* cold_logits = Logits(cold, &n_cold);
  ASSERT(n_cold == (size_t)kvstash_model_n_vocab(model));
  kvstash_session_tokens(cold, &n_all);

  kvstash_session* warm = NULL;
  ASSERT_OK(kvstash_session_open(model, saved, NULL, &warm));
  ASSERT(warm != NULL && kvstash_session_n_decoded(warm) == 0);
  size_t n_warm_prefix = 0;
  kvstash_session_tokens(warm, &n_warm_prefix);
  ASSERT(n_warm_prefix == n_prefix);
  kvstash_open_stats stats;
  ASSERT_OK(kvstash_session_open_stats(warm, &stats));
  ASSERT(stats.file_bytes > 0 && stats.total_ms > 0);
  ASSERT_OK(kvstash_session_append_text(warm, kSuffix, strlen(kSuffix)));
  ASSERT(kvstash_session_n_decoded(warm) == n_all - n_prefix);
  size_t n_warm = 0;
  float* warm_logits = Logits(warm, &n_warm);
  ASSERT(n_warm == n_cold);
  ASSERT(memcmp(warm_logits, cold_logits, n_cold * sizeof(float)) == 0);
  kvstash_free(warm_logits);
  kvstash_free(cold_logits);

  kvstash_generation g_cold = Greedy(cold, 24);
  kvstash_generation g_warm = Greedy(warm, 24);
  ASSERT(g_cold.n_tokens > 0 && g_cold.n_tokens == g_warm.n_tokens);
  ASSERT(memcmp(g_cold.tokens, g_warm.tokens, g_cold.n_tokens * sizeof(kvstash_token)) == 0);
  ASSERT(g_cold.text_len == g_warm.text_len && strcmp(g_cold.text, g_warm.text) == 0);
  kvstash_generation_clear(&g_cold);
  ASSERT(g_cold.text == NULL && g_cold.tokens == NULL && g_cold.n_tokens == 0);
  kvstash_generation_clear(&g_warm);
  kvstash_session_free(warm);
  kvstash_session_free(cold);
}

static void TestOpenErrors(const kvstash_model* model, const kvstash_model* other,
                           const char* saved) {
  kvstash_session* session = NULL;
  char path[4200];
  PathIn(path, sizeof path, "missing.kvs");
  EXPECT_STATUS(kvstash_session_open(model, path, NULL, &session), KVSTASH_NOT_FOUND);
  EXPECT_STATUS(kvstash_session_open(other, saved, NULL, &session), KVSTASH_INCOMPATIBLE);
  PathIn(path, sizeof path, "flipped.kvs");
  CopyFlippingMiddle(saved, path);
  EXPECT_STATUS(kvstash_session_open(model, path, NULL, &session), KVSTASH_CORRUPTION);
  PathIn(path, sizeof path, "text.kvs");
  WriteFile(path, "this is a text file, not a kvstash session\n");
  EXPECT_STATUS(kvstash_session_open(model, path, NULL, &session), KVSTASH_CORRUPTION);
  EXPECT_STATUS(kvstash_session_open(NULL, saved, NULL, &session), KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_session_open(model, NULL, NULL, &session), KVSTASH_INVALID_ARGUMENT);
  ASSERT(strstr(kvstash_last_error(), "path") != NULL);
  EXPECT_STATUS(kvstash_session_open(model, saved, NULL, NULL), KVSTASH_INVALID_ARGUMENT);
  kvstash_open_options options;
  kvstash_open_options_init(&options, sizeof options);
  ASSERT(options.size == sizeof options && options.flash_attn == KVSTASH_FLASH_ATTN_AS_SAVED &&
         options.cache_type_k == NULL && options.cache_type_v == NULL && options.n_ctx == 0);
  options.cache_type_k = "q8_0";
  ASSERT(kvstash_session_open(model, saved, &options, &session) != KVSTASH_OK);
  ASSERT(strstr(kvstash_last_error(), "q8_0") != NULL);
  kvstash_open_options_init(&options, sizeof options);
  options.flash_attn = (kvstash_flash_attn)99;
  EXPECT_STATUS(kvstash_session_open(model, saved, &options, &session), KVSTASH_INVALID_ARGUMENT);
  options.size = 0;
  EXPECT_STATUS(kvstash_session_open(model, saved, &options, &session), KVSTASH_INVALID_ARGUMENT);
  ASSERT(session == NULL);
  /* An older header's struct ends after n_room: the cache type after it is not read. */
  kvstash_open_options_init(&options, sizeof options);
  options.size = (uint32_t)(offsetof(kvstash_open_options, n_room) + sizeof(uint32_t));
  options.n_room = 100;
  options.cache_type_k = "q9_9";
  ASSERT_OK(kvstash_session_open(model, saved, &options, &session));
  ASSERT(session != NULL && kvstash_session_n_ctx(session) >= 100);
  kvstash_session_free(session);
}

static void TestInspect(const kvstash_model* model, const char* saved) {
  kvstash_file_info* info = NULL;
  ASSERT_OK(kvstash_inspect(saved, true, &info));
  ASSERT(info != NULL);
  ASSERT(info->format_version > 0 && info->file_size > info->kv_bytes && info->kv_bytes > 0);
  ASSERT(info->n_ctx == 512 && info->checksums_verified && info->has_logits);
  ASSERT(info->tokens != NULL && info->n_tokens > 10);
  kvstash_session* session = NULL;
  ASSERT_OK(kvstash_session_open(model, saved, NULL, &session));
  size_t n = 0;
  const kvstash_token* tokens = kvstash_session_tokens(session, &n);
  ASSERT(n == info->n_tokens && memcmp(tokens, info->tokens, n * sizeof *tokens) == 0);
  kvstash_session_free(session);
  ASSERT(strncmp(info->writer, "kvstash ", 8) == 0);
  ASSERT(info->llama_build != NULL && strlen(info->llama_build) > 0);
  ASSERT(strcmp(info->model_fingerprint, kvstash_model_fingerprint(model)) == 0);
  ASSERT(strcmp(info->model_description, kvstash_model_description(model)) == 0);
  ASSERT(strcmp(info->model_arch, "llama") == 0);
  ASSERT(strcmp(info->cache_type_k, "f16") == 0 && strcmp(info->cache_type_v, "f16") == 0);
  kvstash_file_info_free(info);
  info = NULL;
  ASSERT_OK(kvstash_inspect(saved, false, &info));
  ASSERT(info != NULL && !info->checksums_verified);
  kvstash_file_info_free(info);

  info = NULL;
  char path[4200];
  PathIn(path, sizeof path, "flipped.kvs");
  EXPECT_STATUS(kvstash_inspect(path, true, &info), KVSTASH_CORRUPTION);
  PathIn(path, sizeof path, "text.kvs");
  EXPECT_STATUS(kvstash_inspect(path, true, &info), KVSTASH_CORRUPTION);
  PathIn(path, sizeof path, "missing.kvs");
  EXPECT_STATUS(kvstash_inspect(path, true, &info), KVSTASH_NOT_FOUND);
  EXPECT_STATUS(kvstash_inspect(NULL, true, &info), KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_inspect(saved, true, NULL), KVSTASH_INVALID_ARGUMENT);
  ASSERT(info == NULL);
}

/* kvstash_session_import: llama.cpp's own prompt cache becomes a session that continues as a cold
 * session over the same tokens does, saves and opens as a kvstash file; refusals by status. */
static void TestImport(const kvstash_model* model, const kvstash_model* other, const char* saved) {
  kvstash_import_options options;
  kvstash_import_options_init(&options, sizeof options);
  ASSERT(options.size == sizeof options && options.n_ctx == 0 && options.n_threads == 0 &&
         options.n_batch == 2048 && options.n_ubatch == 512);
  options.n_ctx = 1024;
  options.n_threads = 2;
  kvstash_session* imported = NULL;
  ASSERT_OK(kvstash_session_import(model, g_llama_file, &options, &imported));
  ASSERT(imported != NULL && kvstash_session_n_ctx(imported) == 1024);
  size_t n = 0;
  const kvstash_token* held = kvstash_session_tokens(imported, &n);
  ASSERT(n > 10);
  kvstash_session* cold = NewSession(model, 1024);
  ASSERT_OK(kvstash_session_append_tokens(cold, held, n));
  kvstash_generation warm_text = Greedy(imported, 8);
  kvstash_generation cold_text = Greedy(cold, 8);
  ASSERT(strcmp(warm_text.text, cold_text.text) == 0);
  kvstash_generation_clear(&warm_text);
  kvstash_generation_clear(&cold_text);
  kvstash_session_free(cold);
  char path[4200];
  PathIn(path, sizeof path, "imported.kvs");
  ASSERT_OK(kvstash_session_save(imported, path, NULL));
  kvstash_session_free(imported);
  kvstash_session* reopened = NULL;
  ASSERT_OK(kvstash_session_open(model, path, NULL, &reopened));
  ASSERT(kvstash_session_n_ctx(reopened) == 1024);
  kvstash_session_free(reopened);

  kvstash_session* session = NULL;
  ASSERT_OK(kvstash_session_import(model, g_llama_file, NULL, &session));
  ASSERT(session != NULL && kvstash_session_n_ctx(session) == 4096);
  kvstash_session_free(session);
  session = NULL;
  EXPECT_STATUS(kvstash_session_import(other, g_llama_file, NULL, &session), KVSTASH_INCOMPATIBLE);
  ASSERT(strstr(kvstash_last_error(), "was not computed by model") != NULL);
  PathIn(path, sizeof path, "missing.bin");
  EXPECT_STATUS(kvstash_session_import(model, path, NULL, &session), KVSTASH_NOT_FOUND);
  PathIn(path, sizeof path, "text.kvs");
  EXPECT_STATUS(kvstash_session_import(model, path, NULL, &session), KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_session_import(model, saved, NULL, &session), KVSTASH_INVALID_ARGUMENT);
  ASSERT(strstr(kvstash_last_error(), "already a kvstash session") != NULL);
  EXPECT_STATUS(kvstash_session_import(NULL, g_llama_file, NULL, &session),
                KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_session_import(model, NULL, NULL, &session), KVSTASH_INVALID_ARGUMENT);
  ASSERT(strstr(kvstash_last_error(), "path") != NULL);
  EXPECT_STATUS(kvstash_session_import(model, g_llama_file, NULL, NULL), KVSTASH_INVALID_ARGUMENT);
  options.size = 0;
  EXPECT_STATUS(kvstash_session_import(model, g_llama_file, &options, &session),
                KVSTASH_INVALID_ARGUMENT);
  ASSERT(session == NULL);
}

static void TestSessionNullArguments(kvstash_session* session) {
  const kvstash_token token = 1;
  float* logits = NULL;
  size_t n = 0;
  EXPECT_STATUS(kvstash_session_append_text(NULL, "x", 1), KVSTASH_INVALID_ARGUMENT);
  ASSERT(strstr(kvstash_last_error(), "kvstash_session_append_text") != NULL);
  ASSERT(strstr(kvstash_last_error(), "session") != NULL);
  EXPECT_STATUS(kvstash_session_append_text(session, NULL, 1), KVSTASH_INVALID_ARGUMENT);
  ASSERT(strstr(kvstash_last_error(), "text") != NULL);
  ASSERT_OK(kvstash_session_append_text(session, NULL, 0));
  EXPECT_STATUS(kvstash_session_append_tokens(NULL, &token, 1), KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_session_append_tokens(session, NULL, 1), KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_session_sync(NULL, &token, 1, NULL, NULL), KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_session_sync(session, NULL, 1, NULL, NULL), KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_session_generate(NULL, NULL, NULL, NULL, NULL), KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_session_save(NULL, "x.kvs", NULL), KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_session_save(session, NULL, NULL), KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_session_logits(NULL, &logits, &n), KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_session_logits(session, NULL, &n), KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_session_logits(session, &logits, NULL), KVSTASH_INVALID_ARGUMENT);
  ASSERT(logits == NULL);
  EXPECT_STATUS(kvstash_session_open_stats(NULL, NULL), KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_session_open_stats(session, NULL), KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_session_set_progress(NULL, NULL, NULL), KVSTASH_INVALID_ARGUMENT);
  n = 7;
  ASSERT(kvstash_session_tokens(NULL, &n) == NULL && n == 0);
  ASSERT(kvstash_session_n_ctx(NULL) == 0);
  ASSERT(kvstash_session_n_decoded(NULL) == 0);
  const kvstash_token bad = -5;
  EXPECT_STATUS(kvstash_session_append_tokens(session, &bad, 1), KVSTASH_INVALID_ARGUMENT);
}

static void TestContextFull(const kvstash_model* model) {
  kvstash_session* session = NewSession(model, 256);
  const uint32_t n_ctx = kvstash_session_n_ctx(session);
  ASSERT(n_ctx >= 256);
  kvstash_token* tokens = malloc((n_ctx + 1) * sizeof *tokens);
  ASSERT(tokens != NULL);
  for (uint32_t i = 0; i <= n_ctx; ++i) tokens[i] = (kvstash_token)(100 + i % 500);
  EXPECT_STATUS(kvstash_session_append_tokens(session, tokens, n_ctx + 1), KVSTASH_CONTEXT_FULL);
  size_t n = 9;
  kvstash_session_tokens(session, &n);
  ASSERT(n == 0); /* unchanged */
  EXPECT_STATUS(kvstash_session_sync(session, tokens, n_ctx + 1, NULL, NULL), KVSTASH_CONTEXT_FULL);
  ASSERT_OK(kvstash_session_append_tokens(session, tokens, n_ctx - 3));
  kvstash_sample_options options;
  kvstash_sample_options_init(&options, sizeof options);
  options.n_predict = -1;
  kvstash_generation generation;
  memset(&generation, 0, sizeof generation);
  ASSERT_OK(kvstash_session_generate(session, &options, NULL, NULL, &generation));
  ASSERT(generation.stop_reason == KVSTASH_STOP_CONTEXT_FULL);
  ASSERT(generation.n_tokens == 3);
  kvstash_session_tokens(session, &n);
  ASSERT(n == n_ctx);
  EXPECT_STATUS(kvstash_session_append_tokens(session, tokens, 1), KVSTASH_CONTEXT_FULL);
  kvstash_generation_clear(&generation);
  free(tokens);
  kvstash_session_free(session);
}

struct Pieces {
  char text[4096];
  size_t len;
  int calls;
  int stop_after; /* return false on this call (0: never) */
};

static bool OnPiece(const char* piece, size_t len, void* user_data) {
  struct Pieces* p = user_data;
  ASSERT(p->len + len < sizeof p->text);
  memcpy(p->text + p->len, piece, len);
  p->len += len;
  p->text[p->len] = '\0';
  ++p->calls;
  return p->stop_after == 0 || p->calls < p->stop_after;
}

static kvstash_session* PrefixSession(const kvstash_model* model) {
  kvstash_session* session = NewSession(model, 512);
  ASSERT_OK(kvstash_session_append_text(session, kPrefix, strlen(kPrefix)));
  return session;
}

static void TestGenerate(const kvstash_model* model) {
  kvstash_session* session = PrefixSession(model);
  struct Pieces pieces;
  memset(&pieces, 0, sizeof pieces);
  kvstash_sample_options options;
  kvstash_sample_options_init(&options, sizeof options);
  ASSERT(options.size == sizeof options && options.n_predict == 128 && options.temp == 0.0f &&
         options.top_k == 40 && options.seed == 0xFFFFFFFFu && options.n_stop == 0);
  options.n_predict = 32;
  kvstash_generation full;
  memset(&full, 0, sizeof full);
  ASSERT_OK(kvstash_session_generate(session, &options, OnPiece, &pieces, &full));
  ASSERT(full.stop_reason == KVSTASH_STOP_MAX_TOKENS && full.n_tokens == 32);
  ASSERT(pieces.calls > 0 && pieces.len == full.text_len);
  ASSERT(memcmp(pieces.text, full.text, full.text_len) == 0);
  ASSERT(full.text_len >= 12 && strlen(full.text) == full.text_len);
  kvstash_session_free(session);

  /* A stop string from the middle of that text: the text ends right before it. */
  char stop[4] = {0};
  memcpy(stop, full.text + full.text_len / 2, 3);
  const size_t expected_len = (size_t)(strstr(full.text, stop) - full.text);
  const char* stops[] = {"never appears \x01", stop};
  options.stop = stops;
  options.n_stop = 2;
  session = PrefixSession(model);
  kvstash_generation cut;
  memset(&cut, 0, sizeof cut);
  ASSERT_OK(kvstash_session_generate(session, &options, NULL, NULL, &cut));
  ASSERT(cut.stop_reason == KVSTASH_STOP_STOP_STRING);
  ASSERT(cut.text_len == expected_len && memcmp(cut.text, full.text, expected_len) == 0);
  kvstash_generation_clear(&cut);
  kvstash_session_free(session);

  /* The piece callback returns false on its first call. */
  session = PrefixSession(model);
  memset(&pieces, 0, sizeof pieces);
  pieces.stop_after = 1;
  kvstash_sample_options_init(&options, sizeof options);
  options.n_predict = 32;
  ASSERT_OK(kvstash_session_generate(session, &options, OnPiece, &pieces, &cut));
  ASSERT(cut.stop_reason == KVSTASH_STOP_CANCELLED && pieces.calls == 1);
  ASSERT(cut.n_tokens >= 1 && cut.n_tokens < 32);
  ASSERT(cut.text_len >= pieces.len && memcmp(cut.text, pieces.text, pieces.len) == 0);
  kvstash_generation_clear(&cut);
  /* out may be NULL: the text only reaches the callback. */
  memset(&pieces, 0, sizeof pieces);
  options.n_predict = 4;
  ASSERT_OK(kvstash_session_generate(session, &options, OnPiece, &pieces, NULL));
  ASSERT(pieces.calls > 0);
  kvstash_session_free(session);
  kvstash_generation_clear(&full);
}

static void TestSampleOptionErrors(const kvstash_model* model) {
  kvstash_session* session = PrefixSession(model);
  kvstash_sample_options options;
  kvstash_sample_options_init(&options, sizeof options);
  kvstash_generation generation;
  memset(&generation, 0, sizeof generation);
  options.n_stop = 1;
  EXPECT_STATUS(kvstash_session_generate(session, &options, NULL, NULL, &generation),
                KVSTASH_INVALID_ARGUMENT);
  ASSERT(strstr(kvstash_last_error(), "stop") != NULL);
  const char* stops[] = {"ok", NULL};
  options.stop = stops;
  options.n_stop = 2;
  EXPECT_STATUS(kvstash_session_generate(session, &options, NULL, NULL, &generation),
                KVSTASH_INVALID_ARGUMENT);
  ASSERT(strstr(kvstash_last_error(), "stop[1]") != NULL);
  kvstash_sample_options_init(&options, sizeof options);
  options.size = 0;
  EXPECT_STATUS(kvstash_session_generate(session, &options, NULL, NULL, &generation),
                KVSTASH_INVALID_ARGUMENT);
  ASSERT(generation.text == NULL);
  /* An older header's struct ends after temp: stop (garbage here) is not read. */
  kvstash_sample_options_init(&options, sizeof options);
  options.size = (uint32_t)(offsetof(kvstash_sample_options, temp) + sizeof(float));
  options.n_predict = 3;
  options.stop = (const char* const*)&g_passed;
  options.n_stop = 1000;
  ASSERT_OK(kvstash_session_generate(session, &options, NULL, NULL, &generation));
  ASSERT(generation.n_tokens <= 3);
  kvstash_generation_clear(&generation);
  /* NULL options: the defaults. */
  ASSERT_OK(kvstash_session_generate(session, NULL, NULL, NULL, &generation));
  ASSERT(generation.n_tokens <= 128);
  kvstash_generation_clear(&generation);
  /* The fields after n_stop: llama.cpp's penalties and --ignore-eos, defaults off; a struct that
   * ends before them (an older header) leaves them off whatever lies beyond its size. */
  kvstash_sample_options_init(&options, sizeof options);
  ASSERT(options.repeat_penalty == 1.0f && options.repeat_last_n == 64 && !options.ignore_eos);
  options.n_predict = 3;
  options.repeat_penalty = 1.5f;
  options.ignore_eos = true;
  ASSERT_OK(kvstash_session_generate(session, &options, NULL, NULL, &generation));
  ASSERT(generation.n_tokens == 3);
  kvstash_generation_clear(&generation);
  options.size = (uint32_t)(offsetof(kvstash_sample_options, n_stop) + sizeof(size_t));
  options.repeat_last_n = -12345; /* not read */
  ASSERT_OK(kvstash_session_generate(session, &options, NULL, NULL, &generation));
  kvstash_generation_clear(&generation);
  kvstash_session_free(session);
}

static void TestCancel(const kvstash_model* model) {
  kvstash_session* session = PrefixSession(model);
  size_t before = 0, after = 0;
  kvstash_session_tokens(session, &before);
  kvstash_session_cancel(session);
  EXPECT_STATUS(kvstash_session_append_text(session, kSuffix, strlen(kSuffix)), KVSTASH_CANCELLED);
  kvstash_session_tokens(session, &after);
  ASSERT(after == before);
  /* The request was used up: the next append runs. */
  ASSERT_OK(kvstash_session_append_text(session, kSuffix, strlen(kSuffix)));
  kvstash_session_tokens(session, &after);
  ASSERT(after > before);

  char path[4200];
  PathIn(path, sizeof path, "cancelled.kvs");
  kvstash_session_cancel(session);
  EXPECT_STATUS(kvstash_session_save(session, path, NULL), KVSTASH_CANCELLED);
  ASSERT(!FileExists(path));
  ASSERT_OK(kvstash_session_save(session, path, NULL));
  ASSERT(FileExists(path));

  size_t n = 0;
  const kvstash_token* tokens = kvstash_session_tokens(session, &n);
  kvstash_token* copy = malloc(n * sizeof *copy);
  ASSERT(copy != NULL);
  memcpy(copy, tokens, n * sizeof *copy);
  kvstash_session_cancel(session);
  EXPECT_STATUS(kvstash_session_sync(session, copy, n - 2, NULL, NULL), KVSTASH_CANCELLED);
  kvstash_session_tokens(session, &after);
  ASSERT(after == n);
  kvstash_sync_result result;
  ASSERT_OK(kvstash_session_sync(session, copy, n - 2, NULL, &result));
  /* Shrinking keeps the cache; its last token is decoded again for the logits. */
  ASSERT(result.n_reused + result.n_decoded == n - 2 && result.n_decoded <= 1);
  ASSERT_OK(kvstash_session_sync(session, copy, n, NULL, &result));
  ASSERT(result.n_reused == n - 2 && result.n_decoded == 2 && result.n_restored == 0);
  free(copy);
  kvstash_session_free(session);
}

struct Progress {
  int calls;
  uint64_t last_done, last_total;
};

static void OnProgress(uint64_t done, uint64_t total, void* user_data) {
  struct Progress* p = user_data;
  ++p->calls;
  p->last_done = done;
  p->last_total = total;
}

/* A 512-token session that decodes in 32-token calls, so that a 100-token append makes several
 * llama_decode calls (progress reports, a cancel between two of them). */
static kvstash_session* SmallBatchSession(const kvstash_model* model) {
  kvstash_session_options options;
  kvstash_session_options_init(&options, sizeof options);
  options.n_ctx = 512;
  options.n_batch = 32;
  options.n_ubatch = 32;
  kvstash_session* session = NULL;
  ASSERT_OK(kvstash_session_create(model, &options, &session));
  return session;
}

static void TestProgressAndSave(const kvstash_model* model) {
  kvstash_session* session = SmallBatchSession(model);
  struct Progress progress = {0, 0, 0};
  ASSERT_OK(kvstash_session_set_progress(session, OnProgress, &progress));
  kvstash_token tokens[100];
  for (int i = 0; i < 100; ++i) tokens[i] = 200 + i;
  ASSERT_OK(kvstash_session_append_tokens(session, tokens, 100));
  ASSERT(progress.calls >= 3 && progress.last_done == 100 && progress.last_total == 100);
  const int calls = progress.calls;
  ASSERT_OK(kvstash_session_set_progress(session, NULL, NULL));
  ASSERT_OK(kvstash_session_append_tokens(session, tokens, 100));
  ASSERT(progress.calls == calls);

  /* Save refuses to replace a file that is not a session, unless replace_any. */
  char path[4200];
  PathIn(path, sizeof path, "notes.txt");
  WriteFile(path, "precious notes\n");
  ASSERT(kvstash_session_save(session, path, NULL) != KVSTASH_OK);
  ASSERT(strlen(kvstash_last_error()) > 0);
  kvstash_save_options save;
  kvstash_save_options_init(&save, sizeof save);
  save.size = 0;
  EXPECT_STATUS(kvstash_session_save(session, path, &save), KVSTASH_INVALID_ARGUMENT);
  /* An older header's struct ends after sync: replace_any (set here) is not read. */
  kvstash_save_options_init(&save, sizeof save);
  save.size = (uint32_t)(offsetof(kvstash_save_options, sync) + sizeof(bool));
  save.replace_any = true;
  ASSERT(kvstash_session_save(session, path, &save) != KVSTASH_OK);
  kvstash_save_options_init(&save, sizeof save);
  save.replace_any = true;
  save.sync = false;
  ASSERT_OK(kvstash_session_save(session, path, &save));
  kvstash_file_info* info = NULL;
  ASSERT_OK(kvstash_inspect(path, true, &info));
  ASSERT(info != NULL && info->n_tokens == 200);
  kvstash_file_info_free(info);
  kvstash_session_free(session);
}

static void CancelOnProgress(uint64_t done, uint64_t total, void* user_data) {
  (void)done;
  (void)total;
  kvstash_session_cancel(user_data);
}

/* kvstash_session_cancel while an append runs (from its progress callback, between two
 * llama_decode calls): the append stops, the session is as before, the next append runs. */
static void TestCancelDuringAppend(const kvstash_model* model) {
  kvstash_session* session = SmallBatchSession(model);
  kvstash_token tokens[100];
  for (int i = 0; i < 100; ++i) tokens[i] = 200 + i;
  ASSERT_OK(kvstash_session_append_tokens(session, tokens, 10));
  ASSERT_OK(kvstash_session_set_progress(session, CancelOnProgress, session));
  EXPECT_STATUS(kvstash_session_append_tokens(session, tokens + 10, 90), KVSTASH_CANCELLED);
  size_t n = 0;
  kvstash_session_tokens(session, &n);
  ASSERT(n == 10);
  ASSERT_OK(kvstash_session_set_progress(session, NULL, NULL));
  ASSERT_OK(kvstash_session_append_tokens(session, tokens + 10, 90));
  size_t n_logits = 0;
  float* logits = Logits(session, &n_logits);
  kvstash_session_free(session);
  /* Same logits as a session that was never cancelled. */
  session = SmallBatchSession(model);
  ASSERT_OK(kvstash_session_append_tokens(session, tokens, 10));
  ASSERT_OK(kvstash_session_append_tokens(session, tokens + 10, 90));
  float* expected = Logits(session, &n_logits);
  ASSERT(memcmp(logits, expected, n_logits * sizeof(float)) == 0);
  kvstash_free(expected);
  kvstash_free(logits);
  kvstash_session_free(session);
}

/* A session keeps its model alive. */
static void TestModelFreedFirst(void) {
  kvstash_model* model = NULL;
  ASSERT_OK(kvstash_model_load(g_model_a, NULL, &model));
  kvstash_session* session = PrefixSession(model);
  kvstash_model_free(model);
  kvstash_generation generation = Greedy(session, 4);
  ASSERT(generation.n_tokens > 0);
  kvstash_generation_clear(&generation);
  kvstash_session_free(session);
}

/* ---- store ----------------------------------------------------------------------------------- */

static void TestStoreErrors(const char* dir) {
  kvstash_store* store = NULL;
  EXPECT_STATUS(kvstash_store_open(NULL, NULL, &store), KVSTASH_INVALID_ARGUMENT);
  ASSERT(strstr(kvstash_last_error(), "dir") != NULL);
  EXPECT_STATUS(kvstash_store_open(dir, NULL, NULL), KVSTASH_INVALID_ARGUMENT);
  kvstash_store_options options;
  kvstash_store_options_init(&options, sizeof options);
  ASSERT(options.size == sizeof options && options.chunk_tokens == 0 && options.create &&
         options.sync && options.max_pending_bytes == (uint64_t)1 << 30 &&
         options.redis_url == NULL);
  options.size = 0;
  EXPECT_STATUS(kvstash_store_open(dir, &options, &store), KVSTASH_INVALID_ARGUMENT);
  kvstash_store_options_init(&options, sizeof options);
  options.chunk_tokens = 17;
  EXPECT_STATUS(kvstash_store_open(dir, &options, &store), KVSTASH_INVALID_ARGUMENT);
  ASSERT(store == NULL);
  /* A Redis URL that cannot be parsed is refused, without its password; a Redis that is not
   * there is not an error (a miss on each lookup); an older header's struct ends before
   * redis_url (garbage here): not read. Each in a store of its own (default chunk size). */
  char other[4200];
  PathIn(other, sizeof other, "store-redis");
  kvstash_store_options_init(&options, sizeof options);
  options.redis_url = "http://user:pa55word@127.0.0.1:1";
  EXPECT_STATUS(kvstash_store_open(other, &options, &store), KVSTASH_INVALID_ARGUMENT);
  ASSERT(store == NULL && strstr(kvstash_last_error(), "redis://") != NULL &&
         strstr(kvstash_last_error(), "pa55word") == NULL);
  options.redis_url = "redis://:pa55word@127.0.0.1:1";
  ASSERT_OK(kvstash_store_open(other, &options, &store));
  kvstash_store_free(store);
  store = NULL;
  options.size = (uint32_t)offsetof(kvstash_store_options, redis_url);
  options.redis_url = (const char*)(uintptr_t)0x10;
  ASSERT_OK(kvstash_store_open(other, &options, &store));
  kvstash_store_free(store);
  store = NULL;
  EXPECT_STATUS(kvstash_store_wait_for_writes(NULL), KVSTASH_INVALID_ARGUMENT);
  kvstash_store_stats stats;
  EXPECT_STATUS(kvstash_store_stats_get(NULL, &stats), KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_store_gc(NULL, 0, NULL), KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_store_verify(NULL, NULL, NULL, NULL), KVSTASH_INVALID_ARGUMENT);
  EXPECT_STATUS(kvstash_store_clear(NULL, NULL, NULL), KVSTASH_INVALID_ARGUMENT);
}

static kvstash_store* OpenStore(const char* dir) {
  /* An older header's struct ends after chunk_tokens: create (false here) is not read. */
  kvstash_store_options options;
  kvstash_store_options_init(&options, sizeof options);
  options.size = (uint32_t)(offsetof(kvstash_store_options, chunk_tokens) + sizeof(uint32_t));
  options.chunk_tokens = 16;
  options.create = false;
  kvstash_store* store = NULL;
  ASSERT_OK(kvstash_store_open(dir, &options, &store));
  ASSERT(store != NULL);
  EXPECT_STATUS(kvstash_store_stats_get(store, NULL), KVSTASH_INVALID_ARGUMENT);
  return store;
}

static char g_chunk[4200];
static int FindChunk(const char* path, const struct stat* st, int type, struct FTW* ftw) {
  (void)st;
  (void)ftw;
  const size_t len = strlen(path);
  if (type != FTW_F || len < 4 || strcmp(path + len - 4, ".kvc") != 0) return 0;
  ASSERT(len < sizeof g_chunk);
  strcpy(g_chunk, path);
  return 1;
}

/* A chunk with a flipped byte: verify names it, and a sync treats it as a miss (same logits). */
static void TestStoreBadChunk(const kvstash_model* model, kvstash_store* store, const char* dir,
                              const kvstash_token* tokens, const float* cold) {
  g_chunk[0] = '\0';
  ASSERT(nftw(dir, FindChunk, 16, FTW_PHYS) == 1);
  char copy[4200]; /* outside the store, where verify would count it as a stray file */
  PathIn(copy, sizeof copy, "chunk.orig");
  ASSERT(rename(g_chunk, copy) == 0);
  CopyFlippingMiddle(copy, g_chunk);
  uint64_t ok = 0, bad = 0;
  char* report = NULL;
  ASSERT_OK(kvstash_store_verify(store, &ok, &bad, &report));
  ASSERT(ok == 1 && bad == 1 && report != NULL && strstr(report, ".kvc") != NULL);
  ASSERT(report[strlen(report) - 1] == '\n');
  kvstash_free(report);
  kvstash_session* session = NewSession(model, 256);
  kvstash_sync_result result;
  ASSERT_OK(kvstash_session_sync(session, tokens, 40, store, &result));
  ASSERT(result.n_reused + result.n_decoded == 40 && result.n_restored < 32);
  size_t n = 0;
  float* logits = Logits(session, &n);
  ASSERT(memcmp(logits, cold, n * sizeof(float)) == 0);
  kvstash_free(logits);
  kvstash_session_free(session);
  ASSERT_OK(kvstash_store_wait_for_writes(store));
  ASSERT(rename(copy, g_chunk) == 0);
}

static void TestStore(const kvstash_model* model) {
  char dir[4200];
  PathIn(dir, sizeof dir, "store");
  TestStoreErrors(dir);
  kvstash_store* store = OpenStore(dir);
  kvstash_token tokens[40];
  for (int i = 0; i < 40; ++i) tokens[i] = 300 + i;
  kvstash_session* session = NewSession(model, 256);
  kvstash_sync_result result;
  ASSERT_OK(kvstash_session_sync(session, tokens, 40, store, &result));
  ASSERT(result.n_reused == 0 && result.n_decoded == 40 && result.n_published == 32);
  size_t n_cold = 0;
  float* cold = Logits(session, &n_cold);
  kvstash_session_free(session); /* hands the pending chunks to the writer */
  ASSERT_OK(kvstash_store_wait_for_writes(store));
  kvstash_store_stats stats;
  ASSERT_OK(kvstash_store_stats_get(store, &stats));
  ASSERT(stats.chunk_tokens == 16 && stats.chunks == 2 && stats.bytes > 0 && stats.namespaces == 1);
  ASSERT(stats.chunks_written == 2 && stats.chunks_dropped == 0 && stats.bytes_written > 0);

  session = NewSession(model, 256);
  ASSERT_OK(kvstash_session_sync(session, tokens, 40, store, &result));
  ASSERT(result.n_restored == 32 && result.n_reused == 32 && result.n_decoded == 8);
  size_t n_warm = 0;
  float* warm = Logits(session, &n_warm);
  ASSERT(n_warm == n_cold && memcmp(warm, cold, n_cold * sizeof(float)) == 0);
  kvstash_free(warm);
  kvstash_session_free(session);

  uint64_t ok = 0, bad = 99;
  char* report = NULL;
  ASSERT_OK(kvstash_store_verify(store, &ok, &bad, &report));
  ASSERT(ok == 2 && bad == 0 && report != NULL && report[0] == '\0');
  kvstash_free(report);
  ASSERT_OK(kvstash_store_verify(store, NULL, NULL, NULL));
  TestStoreBadChunk(model, store, dir, tokens, cold);
  kvstash_gc_report gc;
  ASSERT_OK(kvstash_store_gc(store, UINT64_MAX, &gc));
  ASSERT(gc.chunks_removed == 0 && gc.bytes_left == stats.bytes);
  uint64_t removed = 0;
  kvstash_free(cold);
  ASSERT_OK(kvstash_store_clear(store, "", &removed));
  ASSERT(removed == 2);
  ASSERT_OK(kvstash_store_clear(store, NULL, NULL));
  ASSERT_OK(kvstash_store_gc(store, 0, NULL));
  ASSERT_OK(kvstash_store_stats_get(store, &stats));
  ASSERT(stats.chunks == 0);
  kvstash_store_free(store);
}

/* ---- the thread's message -------------------------------------------------------------------- */

static void TestLastError(const kvstash_model* model) {
  kvstash_session* session = NULL;
  EXPECT_STATUS(kvstash_session_create(model, NULL, NULL), KVSTASH_INVALID_ARGUMENT);
  ASSERT(strlen(kvstash_last_error()) > 0);
  /* Functions that cannot fail leave it alone, so that it can be printed with the status name. */
  ASSERT(strcmp(kvstash_status_name(KVSTASH_NOT_FOUND), "not_found") == 0);
  ASSERT(kvstash_model_n_vocab(model) > 0);
  ASSERT(strlen(kvstash_last_error()) > 0);
  ASSERT_OK(kvstash_session_create(model, NULL, &session));
  ASSERT(strcmp(kvstash_last_error(), "") == 0);
  kvstash_session_free(session);
}

/* An older header's smaller struct: *_init writes nothing past the size it is given. */
static void TestInitWritesOnlyWithinSize(void) {
  unsigned char buffer[sizeof(kvstash_sample_options) + 16];
  memset(buffer, 0xAB, sizeof buffer);
  const size_t old_size = offsetof(kvstash_sample_options, temp) + sizeof(float);
  kvstash_sample_options_init((kvstash_sample_options*)(void*)buffer, old_size);
  kvstash_sample_options head;
  memcpy(&head, buffer, old_size);
  ASSERT(head.size == old_size);
  ASSERT(head.n_predict == 128 && head.temp == 0.0f);
  for (size_t i = old_size; i < sizeof buffer; ++i) ASSERT(buffer[i] == 0xAB);
  /* A newer header's larger struct: the library fills what it knows and says so in size. */
  unsigned char large[sizeof(kvstash_save_options) + 32];
  memset(large, 0xCD, sizeof large);
  kvstash_save_options_init((kvstash_save_options*)(void*)large, sizeof large);
  kvstash_save_options save;
  memcpy(&save, large, sizeof save);
  ASSERT(save.size == sizeof save && save.sync && !save.replace_any);
  for (size_t i = sizeof save; i < sizeof large; ++i) ASSERT(large[i] == 0xCD);
  /* Too small to hold even `size`: nothing is written. */
  memset(buffer, 0xAB, sizeof buffer);
  kvstash_sample_options_init((kvstash_sample_options*)(void*)buffer, 2);
  for (size_t i = 0; i < sizeof buffer; ++i) ASSERT(buffer[i] == 0xAB);
}

/* kvstash_session_cancel during a generation (here from its piece callback, as another thread
 * would): CANCELLED, the generation undone, the request used up. */
static bool CancelAfterTwoPieces(const char* piece, size_t len, void* user_data) {
  (void)piece;
  (void)len;
  kvstash_session* session = user_data;
  static int pieces = 0;
  if (++pieces == 2) kvstash_session_cancel(session);
  return true;
}

static void TestCancelDuringGenerate(const kvstash_model* model) {
  kvstash_session* session = PrefixSession(model);
  size_t before = 0, after = 0;
  kvstash_session_tokens(session, &before);
  size_t n_vocab = 0;
  float* logits_before = Logits(session, &n_vocab);
  kvstash_sample_options options;
  kvstash_sample_options_init(&options, sizeof options);
  options.n_predict = 64;
  kvstash_generation generation;
  memset(&generation, 0, sizeof generation);
  EXPECT_STATUS(
      kvstash_session_generate(session, &options, CancelAfterTwoPieces, session, &generation),
      KVSTASH_CANCELLED);
  ASSERT(generation.text == NULL);
  kvstash_session_tokens(session, &after);
  ASSERT(after == before);
  size_t n = 0;
  float* logits_after = Logits(session, &n);
  ASSERT(n == n_vocab && memcmp(logits_before, logits_after, n * sizeof(float)) == 0);
  kvstash_free(logits_before);
  kvstash_free(logits_after);
  /* Used up: the next generation runs. */
  options.n_predict = 4;
  ASSERT_OK(kvstash_session_generate(session, &options, NULL, NULL, &generation));
  ASSERT(generation.stop_reason != KVSTASH_STOP_CANCELLED);
  kvstash_generation_clear(&generation);
  kvstash_session_free(session);
}

/* A cancel before a call that decodes nothing (a one-token generation, logits already there) is
 * still that call's: CANCELLED, and not left over for the next, unrelated call. */
static void TestCancelBeforeCallsWithoutDecoding(const kvstash_model* model) {
  kvstash_session* session = PrefixSession(model);
  kvstash_sample_options options;
  kvstash_sample_options_init(&options, sizeof options);
  options.n_predict = 1;
  kvstash_generation generation;
  memset(&generation, 0, sizeof generation);
  kvstash_session_cancel(session);
  EXPECT_STATUS(kvstash_session_generate(session, &options, NULL, NULL, &generation),
                KVSTASH_CANCELLED);
  ASSERT(generation.text == NULL);
  ASSERT_OK(kvstash_session_append_text(session, kSuffix, strlen(kSuffix)));
  float* logits = NULL;
  size_t n = 0;
  kvstash_session_cancel(session);
  EXPECT_STATUS(kvstash_session_logits(session, &logits, &n), KVSTASH_CANCELLED);
  ASSERT(logits == NULL);
  ASSERT_OK(kvstash_session_generate(session, &options, NULL, NULL, &generation));
  ASSERT(generation.n_tokens == 1);
  kvstash_generation_clear(&generation);
  kvstash_session_free(session);
}

/* Without the SIGBUS guard a session is read into memory instead of mapped: same logits. */
static void TestSigbusGuardOff(const kvstash_model* model, const char* saved) {
  kvstash_session* mapped = NULL;
  ASSERT_OK(kvstash_session_open(model, saved, NULL, &mapped));
  kvstash_set_sigbus_guard(false);
  kvstash_session* copied = NULL;
  ASSERT_OK(kvstash_session_open(model, saved, NULL, &copied));
  kvstash_set_sigbus_guard(true);
  size_t n_mapped = 0, n_copied = 0;
  float* a = Logits(mapped, &n_mapped);
  float* b = Logits(copied, &n_copied);
  ASSERT(n_mapped == n_copied && memcmp(a, b, n_mapped * sizeof *a) == 0);
  kvstash_free(a);
  kvstash_free(b);
  kvstash_session_free(mapped);
  kvstash_session_free(copied);
}

int main(int argc, char** argv) {
  if (argc != 5) {
    fprintf(stderr, "usage: %s A.gguf B.gguf SCRATCH_DIR LLAMA_FILE\n", argv[0]);
    return 2;
  }
  g_model_a = argv[1];
  g_model_b = argv[2];
  g_llama_file = argv[4];
  ASSERT(strlen(argv[3]) < sizeof g_dir);
  strcpy(g_dir, argv[3]);
  TestBasics();
  TestInitWritesOnlyWithinSize();
  kvstash_model* model = TestLogs();
  kvstash_model* other = NULL;
  ASSERT_OK(kvstash_model_load(g_model_b, NULL, &other));
  TestModelLoadErrors();
  TestModelAccessors(model, other);
  TestTokenize(model);
  TestChatTemplate(model);
  TestSessionCreateErrors(model);
  char saved[4200];
  PathIn(saved, sizeof saved, "prefix.kvs");
  TestWarmEqualsCold(model, saved);
  TestOpenErrors(model, other, saved);
  TestInspect(model, saved);
  TestImport(model, other, saved);
  kvstash_session* session = NewSession(model, 256);
  TestSessionNullArguments(session);
  kvstash_session_free(session);
  TestContextFull(model);
  TestGenerate(model);
  TestSampleOptionErrors(model);
  TestCancel(model);
  TestCancelDuringGenerate(model);
  TestCancelBeforeCallsWithoutDecoding(model);
  TestSigbusGuardOff(model, saved);
  TestProgressAndSave(model);
  TestCancelDuringAppend(model);
  TestModelFreedFirst();
  TestStore(model);
  TestLastError(model);
  kvstash_model_free(other);
  kvstash_model_free(model);
  printf("capi_test: %d passed, 0 failed\n", g_passed);
  return 0;
}
