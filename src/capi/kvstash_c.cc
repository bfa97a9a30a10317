// The C API (include/kvstash/kvstash.h) over the C++ one. Every entry point catches everything:
// an exception unwinding into a C caller's frames is undefined behaviour.
#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#include "kvstash/import.h"
#include "kvstash/kvstash.h"
#include "kvstash/model.h"
#include "kvstash/process.h"
#include "kvstash/session.h"
#include "kvstash/session_file.h"
#include "kvstash/store.h"

struct kvstash_model {
  std::shared_ptr<kvstash::Model> model;
  // The borrowed strings of the accessors.
  std::string path;
  std::string description;
  std::string fingerprint;
};

struct kvstash_session {
  // Declared before `session` so that it outlives it: the session's llama.cpp abort callback
  // points here.
  std::atomic<bool> cancel{false};
  std::unique_ptr<kvstash::Session> session;
};

struct kvstash_store {
  std::shared_ptr<kvstash::Store> store;
};

namespace {

using kvstash::Status;

thread_local std::string t_error;
// Set when even the message could not be allocated; kvstash_last_error then says so.
thread_local bool t_error_oom = false;

void SetError(const char* function, const std::string& message) noexcept {
  t_error_oom = false;
  try {
    t_error.assign(function).append(": ").append(message);
  } catch (...) {
    t_error.clear();
    t_error_oom = true;
  }
}

void ClearError() noexcept {
  t_error.clear();
  t_error_oom = false;
}

kvstash_status Fail(kvstash_status status, const char* function, const std::string& message) {
  SetError(function, message);
  return status;
}

kvstash_status Null(const char* function, const char* argument) {
  return Fail(KVSTASH_INVALID_ARGUMENT, function,
              std::string(argument) + " is NULL; pass a valid pointer");
}

kvstash_status ToC(Status::Code code) {
  switch (code) {
    case Status::Code::kOk:
      return KVSTASH_OK;
    case Status::Code::kInvalidArgument:
      return KVSTASH_INVALID_ARGUMENT;
    case Status::Code::kNotFound:
      return KVSTASH_NOT_FOUND;
    case Status::Code::kCorruption:
      return KVSTASH_CORRUPTION;
    case Status::Code::kIncompatible:
      return KVSTASH_INCOMPATIBLE;
    case Status::Code::kIOError:
      return KVSTASH_IO_ERROR;
    case Status::Code::kContextFull:
      return KVSTASH_CONTEXT_FULL;
    case Status::Code::kInternal:
      return KVSTASH_INTERNAL;
    case Status::Code::kCancelled:
      return KVSTASH_CANCELLED;
  }
  return KVSTASH_INTERNAL;
}

// The C++ messages already name the object, the cause and the fix: passed on as they are.
kvstash_status FromStatus(const Status& status) {
  if (status.ok()) return KVSTASH_OK;
  t_error_oom = false;
  try {
    t_error = status.message();
  } catch (...) {
    t_error.clear();
    t_error_oom = true;
  }
  return ToC(status.code());
}

// Runs `body` (which returns a kvstash_status) so that no exception leaves it, and clears the
// thread's message when it succeeds.
template <typename Body>
kvstash_status Guard(const char* function, Body&& body) noexcept {
  kvstash_status status;
  try {
    status = body();
  } catch (const std::bad_alloc&) {
    status = Fail(KVSTASH_OUT_OF_MEMORY, function, "out of memory");
  } catch (const std::exception& e) {
    status = Fail(KVSTASH_INTERNAL, function,
                  std::string("internal error (") + e.what() + "); please report it");
  } catch (...) {
    status =
        Fail(KVSTASH_INTERNAL, function, "internal error (unknown exception); please report it");
  }
  if (status == KVSTASH_OK) ClearError();
  return status;
}

// Whether `field` of the caller's options struct lies wholly within its `size` (and within the
// struct this library knows: a newer header's larger size is fine).
#define KVSTASH_HAS_FIELD(options, field)                                        \
  (offsetof(std::remove_cv_t<std::remove_pointer_t<decltype(options)>>, field) + \
       sizeof((options)->field) <=                                               \
   std::min<size_t>((options)->size, sizeof(*(options))))

// Copies `field` from the caller's options into `out` (which holds the defaults) when present.
// memcpy: an enum field from C may hold any int, which C++ may not load as the enum type.
#define KVSTASH_READ_FIELD(out, options, field)                          \
  do {                                                                   \
    if (KVSTASH_HAS_FIELD(options, field))                               \
      std::memcpy(&(out).field, &(options)->field, sizeof((out).field)); \
  } while (0)

// A C enum's value as the int C passed: C allows values outside the enumerators, C++ does not
// promise to load them as the enum type (clang's -fsanitize=enum stops on them).
template <typename E>
int EnumValue(const E& value) {
  static_assert(std::is_enum_v<E> && sizeof(E) == sizeof(int), "a C enum");
  int result;
  std::memcpy(&result, &value, sizeof result);
  return result;
}

// A size of 0 is a struct that its *_init never filled: its other fields are garbage too.
template <typename T>
kvstash_status CheckSize(const char* function, const T* options) {
  if (options != nullptr && options->size == 0) {
    return Fail(KVSTASH_INVALID_ARGUMENT, function,
                "options->size is 0; call the options' *_init function first");
  }
  return KVSTASH_OK;
}

// A malloc'd copy of `n` elements (at least one byte, so that success never returns NULL).
template <typename T>
T* MallocCopy(const T* data, size_t n) {
  void* buffer = std::malloc(std::max<size_t>(n * sizeof(T), 1));
  if (buffer == nullptr) throw std::bad_alloc();
  if (n > 0) std::memcpy(buffer, data, n * sizeof(T));
  return static_cast<T*>(buffer);
}

char* MallocString(const std::string& text) {
  char* buffer = static_cast<char*>(std::malloc(text.size() + 1));
  if (buffer == nullptr) throw std::bad_alloc();
  std::memcpy(buffer, text.data(), text.size());
  buffer[text.size()] = '\0';
  return buffer;
}

kvstash_status ToFlashAttn(const char* function, const kvstash_flash_attn& field, bool as_saved_ok,
                           std::optional<kvstash::FlashAttention>* out) {
  const int value = EnumValue(field);
  switch (value) {
    case KVSTASH_FLASH_ATTN_AUTO:
      *out = kvstash::FlashAttention::kAuto;
      return KVSTASH_OK;
    case KVSTASH_FLASH_ATTN_OFF:
      *out = kvstash::FlashAttention::kOff;
      return KVSTASH_OK;
    case KVSTASH_FLASH_ATTN_ON:
      *out = kvstash::FlashAttention::kOn;
      return KVSTASH_OK;
    case KVSTASH_FLASH_ATTN_AS_SAVED:
      if (!as_saved_ok) break;
      out->reset();
      return KVSTASH_OK;
  }
  return Fail(KVSTASH_INVALID_ARGUMENT, function,
              "flash_attn " + std::to_string(value) + " is not a " +
                  (as_saved_ok ? "kvstash_flash_attn value"
                               : "value for a new session (AS_SAVED "
                                 "is for kvstash_open_options only)"));
}

// A session call's result: a cancelled call consumed the cancel request.
kvstash_status SessionStatus(kvstash_session* session, const Status& status) {
  if (status.code() == Status::Code::kCancelled) session->cancel.store(false);
  return FromStatus(status);
}

// kvstash_session_cancel before an append, sync, generate, save or logits call stops that call
// before it starts (even one that would decode nothing, which llama.cpp's abort check never sees).
kvstash_status CancelledBefore(kvstash_session* session, const char* function) {
  if (!session->cancel.load()) return KVSTASH_OK;
  session->cancel.store(false);
  return Fail(KVSTASH_CANCELLED, function,
              "cancelled by kvstash_session_cancel before it started; the session is unchanged");
}

kvstash_stop_reason ToC(kvstash::StopReason reason) {
  switch (reason) {
    case kvstash::StopReason::kEndOfGeneration:
      return KVSTASH_STOP_END_OF_GENERATION;
    case kvstash::StopReason::kMaxTokens:
      return KVSTASH_STOP_MAX_TOKENS;
    case kvstash::StopReason::kStopString:
      return KVSTASH_STOP_STOP_STRING;
    case kvstash::StopReason::kContextFull:
      return KVSTASH_STOP_CONTEXT_FULL;
    case kvstash::StopReason::kCancelled:
      return KVSTASH_STOP_CANCELLED;
  }
  return KVSTASH_STOP_CANCELLED;
}

// kvstash_file_info and the storage it points into; kvstash_file_info_free deletes it through
// the base, which static_cast makes well defined (a first member would need standard layout).
struct FileInfoHolder : kvstash_file_info {
  std::vector<kvstash::Token> token_storage;
  std::string writer_storage, llama_build_storage, fingerprint_storage, description_storage,
      arch_storage, type_k_storage, type_v_storage;
};

// Writes the first `size` bytes of `defaults` (at most all of it) and sets `size` to what was
// written. A program built against an older header passes its smaller struct's size, so nothing
// past its struct is written, and the library later reads only the fields it set.
template <typename T>
void FillDefaults(T* options, size_t size, T* defaults) {
  if (options == nullptr || size < sizeof(options->size)) return;
  const size_t n = size < sizeof(T) ? size : sizeof(T);
  defaults->size = static_cast<uint32_t>(n);
  std::memcpy(static_cast<void*>(options), defaults, n);
}

}  // namespace

// ---- Status and memory ----------------------------------------------------------------------

extern "C" {

const char* kvstash_version(void) { return KVSTASH_VERSION_STRING; }

const char* kvstash_last_error(void) {
  return t_error_oom ? "out of memory (while writing the error message)" : t_error.c_str();
}

const char* kvstash_status_name(kvstash_status status) {
  switch (EnumValue(status)) {
    case KVSTASH_OK:
      return "ok";
    case KVSTASH_INVALID_ARGUMENT:
      return "invalid_argument";
    case KVSTASH_NOT_FOUND:
      return "not_found";
    case KVSTASH_CORRUPTION:
      return "corruption";
    case KVSTASH_INCOMPATIBLE:
      return "incompatible";
    case KVSTASH_IO_ERROR:
      return "io_error";
    case KVSTASH_CONTEXT_FULL:
      return "context_full";
    case KVSTASH_INTERNAL:
      return "internal";
    case KVSTASH_CANCELLED:
      return "cancelled";
    case KVSTASH_OUT_OF_MEMORY:
      return "out_of_memory";
  }
  return "unknown";
}

void kvstash_free(void* buffer) { std::free(buffer); }

void kvstash_set_sigbus_guard(bool enabled) { kvstash::SetSigbusGuard(enabled); }

kvstash_status kvstash_set_llama_logs(kvstash_llama_logs mode) {
  constexpr const char* kFn = "kvstash_set_llama_logs";
  return Guard(kFn, [&] {
    switch (EnumValue(mode)) {
      case KVSTASH_LLAMA_LOGS_HOST:
        kvstash::SetLlamaLogs(kvstash::LlamaLogs::kHost);
        return KVSTASH_OK;
      case KVSTASH_LLAMA_LOGS_QUIET:
        kvstash::SetLlamaLogs(kvstash::LlamaLogs::kQuiet);
        return KVSTASH_OK;
      case KVSTASH_LLAMA_LOGS_STDERR:
        kvstash::SetLlamaLogs(kvstash::LlamaLogs::kStderr);
        return KVSTASH_OK;
    }
    return Fail(KVSTASH_INVALID_ARGUMENT, kFn,
                "mode " + std::to_string(EnumValue(mode)) +
                    " is not a kvstash_llama_logs value (HOST, QUIET or STDERR)");
  });
}

// ---- Model ----------------------------------------------------------------------------------

void kvstash_model_options_init(kvstash_model_options* options, size_t size) {
  kvstash_model_options d{};
  d.n_gpu_layers = 0;
  d.repack_weights = true;
  FillDefaults(options, size, &d);
}

kvstash_status kvstash_model_load(const char* path, const kvstash_model_options* options,
                                  kvstash_model** out) {
  constexpr const char* kFn = "kvstash_model_load";
  return Guard(kFn, [&] {
    if (path == nullptr) return Null(kFn, "path");
    if (out == nullptr) return Null(kFn, "out");
    if (kvstash_status s = CheckSize(kFn, options)) return s;
    kvstash_model_options o;
    kvstash_model_options_init(&o, sizeof o);
    if (options != nullptr) {
      KVSTASH_READ_FIELD(o, options, n_gpu_layers);
      KVSTASH_READ_FIELD(o, options, repack_weights);
    }
    kvstash::ModelOptions mo;
    mo.n_gpu_layers = o.n_gpu_layers;
    mo.repack_weights = o.repack_weights;
    auto model = kvstash::Model::Load(path, mo);
    if (!model.ok()) return FromStatus(model.status());
    auto handle = std::make_unique<kvstash_model>();
    handle->model = std::move(*model);
    handle->path = handle->model->path();
    handle->description = handle->model->Description();
    handle->fingerprint = handle->model->fingerprint().Hex();
    *out = handle.release();
    return KVSTASH_OK;
  });
}

void kvstash_model_free(kvstash_model* model) { delete model; }

const char* kvstash_model_path(const kvstash_model* model) {
  return model == nullptr ? "" : model->path.c_str();
}
const char* kvstash_model_description(const kvstash_model* model) {
  return model == nullptr ? "" : model->description.c_str();
}
const char* kvstash_model_fingerprint(const kvstash_model* model) {
  return model == nullptr ? "" : model->fingerprint.c_str();
}
int32_t kvstash_model_n_vocab(const kvstash_model* model) {
  return model == nullptr ? 0 : model->model->n_vocab();
}
int32_t kvstash_model_n_ctx_train(const kvstash_model* model) {
  return model == nullptr ? 0 : model->model->n_ctx_train();
}

kvstash_status kvstash_model_tokenize(const kvstash_model* model, const char* text, size_t len,
                                      bool add_bos, kvstash_token** tokens, size_t* n_tokens) {
  constexpr const char* kFn = "kvstash_model_tokenize";
  return Guard(kFn, [&] {
    if (model == nullptr) return Null(kFn, "model");
    if (text == nullptr && len > 0) return Null(kFn, "text");
    if (tokens == nullptr) return Null(kFn, "tokens");
    if (n_tokens == nullptr) return Null(kFn, "n_tokens");
    auto result =
        model->model->Tokenize(std::string_view(text == nullptr ? "" : text, len), add_bos);
    if (!result.ok()) return FromStatus(result.status());
    *tokens = MallocCopy(result->data(), result->size());
    *n_tokens = result->size();
    return KVSTASH_OK;
  });
}

kvstash_status kvstash_model_detokenize(const kvstash_model* model, const kvstash_token* tokens,
                                        size_t n_tokens, char** text, size_t* len) {
  constexpr const char* kFn = "kvstash_model_detokenize";
  return Guard(kFn, [&] {
    if (model == nullptr) return Null(kFn, "model");
    if (tokens == nullptr && n_tokens > 0) return Null(kFn, "tokens");
    if (text == nullptr) return Null(kFn, "text");
    if (len == nullptr) return Null(kFn, "len");
    const int32_t n_vocab = model->model->n_vocab();
    for (size_t i = 0; i < n_tokens; ++i) {
      // llama.cpp indexes its vocabulary with the id unchecked.
      if (tokens[i] < 0 || tokens[i] >= n_vocab) {
        return Fail(KVSTASH_INVALID_ARGUMENT, kFn,
                    "tokens[" + std::to_string(i) + "] = " + std::to_string(tokens[i]) +
                        " is not a token of this model (0.." + std::to_string(n_vocab - 1) + ")");
      }
    }
    const std::string result =
        model->model->Detokenize(std::vector<kvstash::Token>(tokens, tokens + n_tokens));
    *text = MallocString(result);
    *len = result.size();
    return KVSTASH_OK;
  });
}

bool kvstash_model_is_end_of_generation(const kvstash_model* model, kvstash_token token) {
  if (model == nullptr || token < 0 || token >= model->model->n_vocab()) return false;
  try {
    return model->model->IsEndOfGeneration(token);
  } catch (...) {
    return false;
  }
}

kvstash_status kvstash_model_apply_chat_template(const kvstash_model* model,
                                                 const kvstash_chat_message* messages,
                                                 size_t n_messages, const char* template_name,
                                                 bool add_assistant, char** text) {
  constexpr const char* kFn = "kvstash_model_apply_chat_template";
  return Guard(kFn, [&] {
    if (model == nullptr) return Null(kFn, "model");
    if (messages == nullptr && n_messages > 0) return Null(kFn, "messages");
    if (text == nullptr) return Null(kFn, "text");
    std::vector<kvstash::ChatMessage> list;
    for (size_t i = 0; i < n_messages; ++i) {
      if (messages[i].role == nullptr || messages[i].content == nullptr) {
        return Fail(KVSTASH_INVALID_ARGUMENT, kFn,
                    "messages[" + std::to_string(i) + "]." +
                        (messages[i].role == nullptr ? "role" : "content") + " is NULL");
      }
      list.push_back({messages[i].role, messages[i].content});
    }
    auto result = model->model->ApplyChatTemplate(
        list, template_name == nullptr ? "" : template_name, add_assistant);
    if (!result.ok()) return FromStatus(result.status());
    *text = MallocString(*result);
    return KVSTASH_OK;
  });
}

// ---- Store ----------------------------------------------------------------------------------

void kvstash_store_options_init(kvstash_store_options* options, size_t size) {
  kvstash_store_options d{};
  d.chunk_tokens = 0;
  d.max_bytes = 0;
  d.max_pending_bytes = uint64_t{1} << 30;
  d.create = true;
  d.sync = true;
  d.redis_url = nullptr;
  FillDefaults(options, size, &d);
}

kvstash_status kvstash_store_open(const char* dir, const kvstash_store_options* options,
                                  kvstash_store** out) {
  constexpr const char* kFn = "kvstash_store_open";
  return Guard(kFn, [&] {
    if (dir == nullptr) return Null(kFn, "dir");
    if (out == nullptr) return Null(kFn, "out");
    if (kvstash_status s = CheckSize(kFn, options)) return s;
    kvstash_store_options o;
    kvstash_store_options_init(&o, sizeof o);
    if (options != nullptr) {
      KVSTASH_READ_FIELD(o, options, chunk_tokens);
      KVSTASH_READ_FIELD(o, options, max_bytes);
      KVSTASH_READ_FIELD(o, options, max_pending_bytes);
      KVSTASH_READ_FIELD(o, options, create);
      KVSTASH_READ_FIELD(o, options, sync);
      KVSTASH_READ_FIELD(o, options, redis_url);
    }
    kvstash::StoreOptions so;
    so.chunk_tokens = o.chunk_tokens;
    so.max_bytes = o.max_bytes;
    so.max_pending_bytes = o.max_pending_bytes;
    so.create = o.create;
    so.sync = o.sync;
    if (o.redis_url != nullptr) so.redis_url = o.redis_url;
    auto store = kvstash::Store::Open(dir, so);
    if (!store.ok()) return FromStatus(store.status());
    auto handle = std::make_unique<kvstash_store>();
    handle->store = std::move(*store);
    *out = handle.release();
    return KVSTASH_OK;
  });
}

void kvstash_store_free(kvstash_store* store) {
  try {
    delete store;
  } catch (...) {  // ~Store waits for the writer; nothing can be reported from here
  }
}

kvstash_status kvstash_store_wait_for_writes(kvstash_store* store) {
  constexpr const char* kFn = "kvstash_store_wait_for_writes";
  return Guard(kFn, [&] {
    if (store == nullptr) return Null(kFn, "store");
    store->store->WaitForWrites();
    return KVSTASH_OK;
  });
}

kvstash_status kvstash_store_stats_get(const kvstash_store* store, kvstash_store_stats* out) {
  constexpr const char* kFn = "kvstash_store_stats_get";
  return Guard(kFn, [&] {
    if (store == nullptr) return Null(kFn, "store");
    if (out == nullptr) return Null(kFn, "out");
    auto stats = store->store->Stats();
    if (!stats.ok()) return FromStatus(stats.status());
    const kvstash::WriterStats writer = store->store->writer_stats();
    kvstash_store_stats s{};
    s.chunk_tokens = stats->chunk_tokens;
    s.chunks = stats->chunks;
    s.bytes = stats->bytes;
    s.temp_files = stats->temp_files;
    s.namespaces = stats->namespaces.size();
    s.chunks_written = writer.chunks_written;
    s.chunks_existing = writer.chunks_existing;
    s.chunks_dropped = writer.chunks_dropped;
    s.bytes_written = writer.bytes_written;
    *out = s;
    return KVSTASH_OK;
  });
}

kvstash_status kvstash_store_gc(kvstash_store* store, uint64_t max_bytes, kvstash_gc_report* out) {
  constexpr const char* kFn = "kvstash_store_gc";
  return Guard(kFn, [&] {
    if (store == nullptr) return Null(kFn, "store");
    auto report = store->store->Gc(max_bytes);
    if (!report.ok()) return FromStatus(report.status());
    if (out != nullptr) {
      out->chunks_removed = report->chunks_removed;
      out->bytes_removed = report->bytes_removed;
      out->bytes_left = report->bytes_left;
      out->temp_files_removed = report->temp_files_removed;
    }
    return KVSTASH_OK;
  });
}

kvstash_status kvstash_store_verify(const kvstash_store* store, uint64_t* chunks_ok,
                                    uint64_t* chunks_bad, char** bad_report) {
  constexpr const char* kFn = "kvstash_store_verify";
  return Guard(kFn, [&] {
    if (store == nullptr) return Null(kFn, "store");
    auto report = store->store->Verify();
    if (!report.ok()) return FromStatus(report.status());
    std::string lines;
    for (const std::string& line : report->bad) lines.append(line).append("\n");
    // Allocated first: a failed allocation leaves every out-parameter as it was.
    if (bad_report != nullptr) *bad_report = MallocString(lines);
    if (chunks_ok != nullptr) *chunks_ok = report->chunks_ok;
    if (chunks_bad != nullptr) *chunks_bad = report->bad.size();
    return KVSTASH_OK;
  });
}

kvstash_status kvstash_store_clear(kvstash_store* store, const char* ns_hash, uint64_t* removed) {
  constexpr const char* kFn = "kvstash_store_clear";
  return Guard(kFn, [&] {
    if (store == nullptr) return Null(kFn, "store");
    auto result = store->store->Clear(ns_hash == nullptr ? "" : ns_hash);
    if (!result.ok()) return FromStatus(result.status());
    if (removed != nullptr) *removed = *result;
    return KVSTASH_OK;
  });
}

// ---- Session --------------------------------------------------------------------------------

void kvstash_session_options_init(kvstash_session_options* options, size_t size) {
  kvstash_session_options d{};
  d.n_ctx = 4096;
  d.n_threads = 0;
  d.n_batch = 2048;
  d.n_ubatch = 512;
  d.flash_attn = KVSTASH_FLASH_ATTN_AUTO;
  d.cache_type_k = "f16";
  d.cache_type_v = "f16";
  FillDefaults(options, size, &d);
}

void kvstash_open_options_init(kvstash_open_options* options, size_t size) {
  kvstash_open_options d{};
  d.n_ctx = 0;
  d.n_room = 0;
  d.n_threads = 0;
  d.flash_attn = KVSTASH_FLASH_ATTN_AS_SAVED;
  d.cache_type_k = nullptr;
  d.cache_type_v = nullptr;
  FillDefaults(options, size, &d);
}

namespace {

// A handle around a new session, its cancel flag wired in.
kvstash_session* NewSessionHandle(std::unique_ptr<kvstash::Session> session) {
  auto handle = std::make_unique<kvstash_session>();
  handle->session = std::move(session);
  handle->session->SetCancelFlag(&handle->cancel);
  return handle.release();
}

kvstash_status ReadSessionOptions(const char* fn, const kvstash_session_options* options,
                                  kvstash::SessionOptions* out) {
  if (kvstash_status s = CheckSize(fn, options)) return s;
  kvstash_session_options o;
  kvstash_session_options_init(&o, sizeof o);
  if (options != nullptr) {
    KVSTASH_READ_FIELD(o, options, n_ctx);
    KVSTASH_READ_FIELD(o, options, n_threads);
    KVSTASH_READ_FIELD(o, options, n_threads_batch);
    KVSTASH_READ_FIELD(o, options, n_batch);
    KVSTASH_READ_FIELD(o, options, n_ubatch);
    KVSTASH_READ_FIELD(o, options, flash_attn);
    KVSTASH_READ_FIELD(o, options, cache_type_k);
    KVSTASH_READ_FIELD(o, options, cache_type_v);
  }
  if (kvstash_status s = ToFlashAttn(fn, o.flash_attn, false, &out->flash_attn)) return s;
  out->n_ctx = o.n_ctx;
  out->n_threads = o.n_threads;
  out->n_threads_batch = o.n_threads_batch;
  out->n_batch = o.n_batch;
  out->n_ubatch = o.n_ubatch;
  // NULL cache types mean the defaults, like a NULL options struct.
  if (o.cache_type_k != nullptr) out->cache_type_k = o.cache_type_k;
  if (o.cache_type_v != nullptr) out->cache_type_v = o.cache_type_v;
  return KVSTASH_OK;
}

kvstash_status ReadOpenOptions(const char* fn, const kvstash_open_options* options,
                               kvstash::SessionOptions* out) {
  if (kvstash_status s = CheckSize(fn, options)) return s;
  kvstash_open_options o;
  kvstash_open_options_init(&o, sizeof o);
  if (options != nullptr) {
    KVSTASH_READ_FIELD(o, options, n_ctx);
    KVSTASH_READ_FIELD(o, options, n_room);
    KVSTASH_READ_FIELD(o, options, n_threads);
    KVSTASH_READ_FIELD(o, options, n_threads_batch);
    KVSTASH_READ_FIELD(o, options, flash_attn);
    KVSTASH_READ_FIELD(o, options, cache_type_k);
    KVSTASH_READ_FIELD(o, options, cache_type_v);
  }
  if (kvstash_status s = ToFlashAttn(fn, o.flash_attn, true, &out->flash_attn)) return s;
  out->n_ctx = o.n_ctx;
  out->n_room = o.n_room;
  out->n_threads = o.n_threads;
  out->n_threads_batch = o.n_threads_batch;
  if (o.cache_type_k != nullptr) out->cache_type_k = std::string(o.cache_type_k);
  if (o.cache_type_v != nullptr) out->cache_type_v = std::string(o.cache_type_v);
  return KVSTASH_OK;
}

}  // namespace

kvstash_status kvstash_session_create(const kvstash_model* model,
                                      const kvstash_session_options* options,
                                      kvstash_session** out) {
  constexpr const char* kFn = "kvstash_session_create";
  return Guard(kFn, [&] {
    if (model == nullptr) return Null(kFn, "model");
    if (out == nullptr) return Null(kFn, "out");
    kvstash::SessionOptions so;
    if (kvstash_status s = ReadSessionOptions(kFn, options, &so)) return s;
    auto session = kvstash::Session::Create(model->model, so);
    if (!session.ok()) return FromStatus(session.status());
    *out = NewSessionHandle(std::move(*session));
    return KVSTASH_OK;
  });
}

kvstash_status kvstash_session_open(const kvstash_model* model, const char* path,
                                    const kvstash_open_options* options, kvstash_session** out) {
  constexpr const char* kFn = "kvstash_session_open";
  return Guard(kFn, [&] {
    if (model == nullptr) return Null(kFn, "model");
    if (path == nullptr) return Null(kFn, "path");
    if (out == nullptr) return Null(kFn, "out");
    kvstash::SessionOptions oo;
    if (kvstash_status s = ReadOpenOptions(kFn, options, &oo)) return s;
    auto session = kvstash::Session::Open(model->model, path, oo);
    if (!session.ok()) return FromStatus(session.status());
    *out = NewSessionHandle(std::move(*session));
    return KVSTASH_OK;
  });
}

void kvstash_import_options_init(kvstash_import_options* options, size_t size) {
  const kvstash::ImportOptions cpp;
  kvstash_import_options d{};
  d.n_ctx = cpp.n_ctx;
  d.n_threads = cpp.n_threads;
  d.n_batch = cpp.n_batch;
  d.n_ubatch = cpp.n_ubatch;
  FillDefaults(options, size, &d);
}

kvstash_status kvstash_session_import(const kvstash_model* model, const char* path,
                                      const kvstash_import_options* options,
                                      kvstash_session** out) {
  constexpr const char* kFn = "kvstash_session_import";
  return Guard(kFn, [&] {
    if (model == nullptr) return Null(kFn, "model");
    if (path == nullptr) return Null(kFn, "path");
    if (out == nullptr) return Null(kFn, "out");
    if (kvstash_status s = CheckSize(kFn, options)) return s;
    kvstash_import_options o;
    kvstash_import_options_init(&o, sizeof o);
    if (options != nullptr) {
      KVSTASH_READ_FIELD(o, options, n_ctx);
      KVSTASH_READ_FIELD(o, options, n_threads);
      KVSTASH_READ_FIELD(o, options, n_batch);
      KVSTASH_READ_FIELD(o, options, n_ubatch);
    }
    kvstash::ImportOptions io;
    io.n_ctx = o.n_ctx;
    io.n_threads = o.n_threads;
    io.n_batch = o.n_batch;
    io.n_ubatch = o.n_ubatch;
    auto session = kvstash::ImportLlamaFile(model->model, path, io);
    if (!session.ok()) return FromStatus(session.status());
    *out = NewSessionHandle(std::move(*session));
    return KVSTASH_OK;
  });
}

void kvstash_session_free(kvstash_session* session) {
  try {
    delete session;
  } catch (...) {  // the destructor hands pending chunks to a store's writer; nothing to report
  }
}

kvstash_status kvstash_session_append_text(kvstash_session* session, const char* text, size_t len) {
  constexpr const char* kFn = "kvstash_session_append_text";
  return Guard(kFn, [&] {
    if (session == nullptr) return Null(kFn, "session");
    if (text == nullptr && len > 0) return Null(kFn, "text");
    if (kvstash_status s = CancelledBefore(session, kFn)) return s;
    return SessionStatus(
        session, session->session->Append(std::string_view(text == nullptr ? "" : text, len)));
  });
}

kvstash_status kvstash_session_append_tokens(kvstash_session* session, const kvstash_token* tokens,
                                             size_t n_tokens) {
  constexpr const char* kFn = "kvstash_session_append_tokens";
  return Guard(kFn, [&] {
    if (session == nullptr) return Null(kFn, "session");
    if (tokens == nullptr && n_tokens > 0) return Null(kFn, "tokens");
    if (kvstash_status s = CancelledBefore(session, kFn)) return s;
    std::vector<kvstash::Token> list(tokens, tokens + n_tokens);
    return SessionStatus(session, session->session->AppendTokens(list));
  });
}

kvstash_status kvstash_session_sync(kvstash_session* session, const kvstash_token* tokens,
                                    size_t n_tokens, kvstash_store* store,
                                    kvstash_sync_result* result) {
  constexpr const char* kFn = "kvstash_session_sync";
  return Guard(kFn, [&] {
    if (session == nullptr) return Null(kFn, "session");
    if (tokens == nullptr && n_tokens > 0) return Null(kFn, "tokens");
    if (kvstash_status s = CancelledBefore(session, kFn)) return s;
    std::vector<kvstash::Token> list(tokens, tokens + n_tokens);
    auto synced = store == nullptr ? session->session->Sync(list)
                                   : session->session->Sync(list, *store->store);
    if (!synced.ok()) return SessionStatus(session, synced.status());
    if (result != nullptr) {
      result->n_reused = synced->n_reused;
      result->n_decoded = synced->n_decoded;
      result->n_restored = synced->n_restored;
      result->n_published = synced->n_published;
      result->restore_ms = synced->restore_ms;
      result->decode_ms = synced->decode_ms;
    }
    return KVSTASH_OK;
  });
}

void kvstash_sample_options_init(kvstash_sample_options* options, size_t size) {
  kvstash_sample_options d{};
  d.n_predict = 128;
  d.temp = 0.0f;
  d.top_k = 40;
  d.top_p = 0.95f;
  d.min_p = 0.05f;
  d.seed = 0xFFFFFFFFu;
  d.stop = nullptr;
  d.n_stop = 0;
  d.repeat_penalty = 1.0f;
  d.repeat_last_n = 64;
  d.ignore_eos = false;
  FillDefaults(options, size, &d);
}

void kvstash_generation_clear(kvstash_generation* generation) {
  if (generation == nullptr) return;
  std::free(generation->text);
  std::free(generation->tokens);
  *generation = kvstash_generation{};
}

namespace {

kvstash_status ReadSampleOptions(const char* fn, const kvstash_sample_options* options,
                                 kvstash::SampleOptions* out) {
  if (kvstash_status s = CheckSize(fn, options)) return s;
  kvstash_sample_options o;
  kvstash_sample_options_init(&o, sizeof o);
  if (options != nullptr) {
    KVSTASH_READ_FIELD(o, options, n_predict);
    KVSTASH_READ_FIELD(o, options, temp);
    KVSTASH_READ_FIELD(o, options, top_k);
    KVSTASH_READ_FIELD(o, options, top_p);
    KVSTASH_READ_FIELD(o, options, min_p);
    KVSTASH_READ_FIELD(o, options, seed);
    KVSTASH_READ_FIELD(o, options, repeat_penalty);
    KVSTASH_READ_FIELD(o, options, repeat_last_n);
    KVSTASH_READ_FIELD(o, options, ignore_eos);
    // stop and n_stop only make sense together.
    if (KVSTASH_HAS_FIELD(options, n_stop)) {
      o.stop = options->stop;
      o.n_stop = options->n_stop;
    }
  }
  if (o.stop == nullptr && o.n_stop > 0) return Null(fn, "options->stop");
  for (size_t i = 0; i < o.n_stop; ++i) {
    if (o.stop[i] == nullptr) return Null(fn, ("options->stop[" + std::to_string(i) + "]").c_str());
    out->stop.emplace_back(o.stop[i]);
  }
  out->n_predict = o.n_predict;
  out->temp = o.temp;
  out->top_k = o.top_k;
  out->top_p = o.top_p;
  out->min_p = o.min_p;
  out->seed = o.seed;
  out->repeat_penalty = o.repeat_penalty;
  out->repeat_last_n = o.repeat_last_n;
  out->ignore_eos = o.ignore_eos;
  return KVSTASH_OK;
}

}  // namespace

kvstash_status kvstash_session_generate(kvstash_session* session,
                                        const kvstash_sample_options* options,
                                        kvstash_piece_fn on_piece, void* user_data,
                                        kvstash_generation* out) {
  constexpr const char* kFn = "kvstash_session_generate";
  return Guard(kFn, [&] {
    if (session == nullptr) return Null(kFn, "session");
    if (kvstash_status s = CancelledBefore(session, kFn)) return s;
    kvstash::SampleOptions so;
    if (kvstash_status s = ReadSampleOptions(kFn, options, &so)) return s;
    kvstash::PieceCallback callback;
    if (on_piece != nullptr) {
      callback = [&](std::string_view piece) {
        return on_piece(piece.data(), piece.size(), user_data);
      };
    }
    auto generation = session->session->Generate(so, callback);
    if (!generation.ok()) return SessionStatus(session, generation.status());
    if (out != nullptr) {
      kvstash_generation g{};
      std::unique_ptr<char, decltype(&std::free)> text(MallocString(generation->text), &std::free);
      g.tokens = MallocCopy(generation->tokens.data(), generation->tokens.size());
      g.text = text.release();
      g.text_len = generation->text.size();
      g.n_tokens = generation->tokens.size();
      g.stop_reason = ToC(generation->stop_reason);
      *out = g;
    }
    return KVSTASH_OK;
  });
}

void kvstash_save_options_init(kvstash_save_options* options, size_t size) {
  kvstash_save_options d{};
  d.sync = true;
  d.replace_any = false;
  FillDefaults(options, size, &d);
}

kvstash_status kvstash_session_save(kvstash_session* session, const char* path,
                                    const kvstash_save_options* options) {
  constexpr const char* kFn = "kvstash_session_save";
  return Guard(kFn, [&] {
    if (session == nullptr) return Null(kFn, "session");
    if (path == nullptr) return Null(kFn, "path");
    if (kvstash_status s = CheckSize(kFn, options)) return s;
    kvstash_save_options o;
    kvstash_save_options_init(&o, sizeof o);
    if (options != nullptr) {
      KVSTASH_READ_FIELD(o, options, sync);
      KVSTASH_READ_FIELD(o, options, replace_any);
    }
    if (kvstash_status s = CancelledBefore(session, kFn)) return s;
    kvstash::SaveOptions so;
    so.sync = o.sync;
    so.replace_any = o.replace_any;
    so.cancel = &session->cancel;
    return SessionStatus(session, session->session->Save(path, so));
  });
}

kvstash_status kvstash_session_logits(kvstash_session* session, float** logits, size_t* n_logits) {
  constexpr const char* kFn = "kvstash_session_logits";
  return Guard(kFn, [&] {
    if (session == nullptr) return Null(kFn, "session");
    if (logits == nullptr) return Null(kFn, "logits");
    if (n_logits == nullptr) return Null(kFn, "n_logits");
    if (kvstash_status s = CancelledBefore(session, kFn)) return s;
    auto result = session->session->Logits();
    if (!result.ok()) return SessionStatus(session, result.status());
    *logits = MallocCopy(result->data(), result->size());
    *n_logits = result->size();
    return KVSTASH_OK;
  });
}

const kvstash_token* kvstash_session_tokens(const kvstash_session* session, size_t* n_tokens) {
  if (session == nullptr) {
    if (n_tokens != nullptr) *n_tokens = 0;
    return nullptr;
  }
  const std::vector<kvstash::Token>& tokens = session->session->tokens();
  if (n_tokens != nullptr) *n_tokens = tokens.size();
  return tokens.data();
}

uint32_t kvstash_session_n_ctx(const kvstash_session* session) {
  return session == nullptr ? 0 : session->session->n_ctx();
}

size_t kvstash_session_n_decoded(const kvstash_session* session) {
  return session == nullptr ? 0 : session->session->n_decoded_total();
}

kvstash_status kvstash_session_open_stats(const kvstash_session* session, kvstash_open_stats* out) {
  constexpr const char* kFn = "kvstash_session_open_stats";
  return Guard(kFn, [&] {
    if (session == nullptr) return Null(kFn, "session");
    if (out == nullptr) return Null(kFn, "out");
    const kvstash::OpenStats& s = session->session->open_stats();
    out->map_ms = s.map_ms;
    out->verify_ms = s.verify_ms;
    out->context_ms = s.context_ms;
    out->restore_ms = s.restore_ms;
    out->total_ms = s.total_ms;
    out->file_bytes = s.file_bytes;
    return KVSTASH_OK;
  });
}

kvstash_status kvstash_session_set_progress(kvstash_session* session, kvstash_progress_fn progress,
                                            void* user_data) {
  constexpr const char* kFn = "kvstash_session_set_progress";
  return Guard(kFn, [&] {
    if (session == nullptr) return Null(kFn, "session");
    kvstash::ProgressFn fn;
    if (progress != nullptr) {
      fn = [progress, user_data](uint64_t done, uint64_t total) {
        progress(done, total, user_data);
      };
    }
    session->session->SetProgressCallback(std::move(fn));
    return KVSTASH_OK;
  });
}

// Lock-free atomic store only: callable from a signal handler.
void kvstash_session_cancel(kvstash_session* session) {
  if (session != nullptr) session->cancel.store(true);
}

// ---- Inspect --------------------------------------------------------------------------------

kvstash_status kvstash_inspect(const char* path, bool verify_checksums, kvstash_file_info** out) {
  constexpr const char* kFn = "kvstash_inspect";
  return Guard(kFn, [&] {
    if (path == nullptr) return Null(kFn, "path");
    if (out == nullptr) return Null(kFn, "out");
    auto info = kvstash::InspectSessionFile(path, verify_checksums);
    if (!info.ok()) return FromStatus(info.status());
    auto h = std::make_unique<FileInfoHolder>();
    const kvstash::SessionInfo& m = info->meta;
    h->token_storage = std::move(info->tokens);
    h->writer_storage = m.writer;
    h->llama_build_storage = m.llama_build;
    h->fingerprint_storage = m.model_fingerprint.Hex();
    h->description_storage = m.model_description;
    h->arch_storage = m.model_arch;
    h->type_k_storage = m.type_k;
    h->type_v_storage = m.type_v;
    kvstash_file_info& p = *h;
    p = kvstash_file_info{};
    p.format_version = info->format_version;
    p.file_size = info->file_size;
    p.n_ctx = m.n_ctx;
    p.tokens = h->token_storage.data();
    p.n_tokens = h->token_storage.size();
    p.kv_bytes = info->kv_bytes;
    p.has_logits = m.has_logits;
    p.checksums_verified = info->checksums_verified;
    p.writer = h->writer_storage.c_str();
    p.llama_build = h->llama_build_storage.c_str();
    p.model_fingerprint = h->fingerprint_storage.c_str();
    p.model_description = h->description_storage.c_str();
    p.model_arch = h->arch_storage.c_str();
    p.cache_type_k = h->type_k_storage.c_str();
    p.cache_type_v = h->type_v_storage.c_str();
    p.flash_attn = m.flash_attn;
    *out = h.release();
    return KVSTASH_OK;
  });
}

void kvstash_file_info_free(kvstash_file_info* info) { delete static_cast<FileInfoHolder*>(info); }

}  // extern "C"
