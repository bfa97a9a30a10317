#include "commands.h"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "kvstash/messages.h"
#include "kvstash/process.h"
#include "kvstash/session_file.h"
#include "llama_flags.h"
#include "run_summary.h"
#include "testmodel/test_model.h"

namespace kvstash::cli {
namespace {

using nlohmann::json;

// Set by the SIGINT/SIGTERM handler; long work checks it and stops cleanly. A lock-free atomic is
// the only kind of object a handler may touch.
static_assert(std::atomic<bool>::is_always_lock_free);
std::atomic<bool> g_cancel{false};
volatile std::sig_atomic_t g_signal = 0;
bool g_json_errors = false;
int g_stdout_errno = 0;  // the first failed write to stdout, 0 if none

void OnSignal(int sig) {
  if (g_signal != 0) {  // a second signal before ClearSignal: the user means it, stop now
    std::signal(sig, SIG_DFL);
    std::raise(sig);
    return;
  }
  g_signal = sig;
  g_cancel.store(true);
}

// Exit code of a run stopped by a signal: the shell's 128 + signal number.
int SignalExitCode() { return g_signal != 0 ? 128 + g_signal : 1; }

// Writes to stdout; false (and remembers why) when it fails, e.g. on a full disk or closed pipe.
bool WriteStdout(std::string_view text) {
  if (std::fwrite(text.data(), 1, text.size(), stdout) != text.size() || std::fflush(stdout) != 0) {
    if (g_stdout_errno == 0) g_stdout_errno = errno != 0 ? errno : EIO;
    return false;
  }
  return true;
}

const char* CodeName(Status::Code code) {
  switch (code) {
    case Status::Code::kOk:
      return "ok";
    case Status::Code::kInvalidArgument:
      return "invalid_argument";
    case Status::Code::kNotFound:
      return "not_found";
    case Status::Code::kCorruption:
      return "corruption";
    case Status::Code::kIncompatible:
      return "incompatible";
    case Status::Code::kIOError:
      return "io_error";
    case Status::Code::kContextFull:
      return "context_full";
    case Status::Code::kInternal:
      return "internal";
    case Status::Code::kCancelled:
      return "cancelled";
  }
  return "internal";
}

// Generated text need not be valid UTF-8 (a token can end mid-character): replace, never throw.
std::string Dump(const json& j, int indent = -1) {
  return j.dump(indent, ' ', false, json::error_handler_t::replace);
}

Result<std::string> ReadTextFile(const std::string& path, const char* what) {
  // A directory opens as an ifstream and reads as empty: refuse it instead of running on "".
  std::error_code error;
  if (std::filesystem::is_directory(path, error)) {
    return Status::InvalidArgument(std::string(what) + " file '" + path +
                                   "' is a directory; pass a text file");
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return Status::NotFound(std::string(what) + " file '" + path +
                            "' cannot be read; check the path");
  }
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return Status::IOError(std::string("cannot read ") + what + " file '" + path + "'");
  return buffer.str();
}

// Exactly one of text / file, or none.
Result<std::optional<std::string>> TextOrFile(const std::optional<std::string>& text,
                                              const std::optional<std::string>& file,
                                              const char* what) {
  if (text) return std::optional<std::string>(*text);
  if (file) {
    auto read = ReadTextFile(*file, what);
    if (!read.ok()) return read.status();
    return std::optional<std::string>(std::move(read.value()));
  }
  return std::optional<std::string>();
}

// A prompt file as llama.cpp reads one: "-" is standard input, and one trailing newline is
// dropped (editors end files with one; llama-completion's -f never sees it).
Result<std::string> ReadPromptFile(const std::string& path, const char* what) {
  if (path != "-") {
    auto text = ReadTextFile(path, what);
    if (!text.ok()) return text.status();
    return DropTrailingNewline(std::move(text.value()));
  }
  std::ostringstream buffer;
  buffer << std::cin.rdbuf();
  if (std::cin.bad()) {
    return Status::IOError(std::string("cannot read the ") + what + " from standard input");
  }
  return DropTrailingNewline(buffer.str());
}

// The prefix: --prefix / --prefix-file as they are, or llama.cpp's -sys (escapes processed unless
// --no-escape) / -sysf (one trailing newline dropped). main.cc lets at most one through.
Result<std::optional<std::string>> PrefixText(const std::optional<std::string>& prefix,
                                              const std::optional<std::string>& prefix_file,
                                              const LlamaTextFlags& llama) {
  if (llama.system_prompt) {
    return std::optional<std::string>(llama.no_escape ? *llama.system_prompt
                                                      : ProcessEscapes(*llama.system_prompt));
  }
  if (llama.system_prompt_file) {
    auto text = ReadPromptFile(*llama.system_prompt_file, "system prompt");
    if (!text.ok()) return text.status();
    return std::optional<std::string>(std::move(text.value()));
  }
  return TextOrFile(prefix, prefix_file, "prefix");
}

// The prompt of -p or -f, as llama.cpp makes it: escapes processed in both unless --no-escape.
Result<std::string> PromptText(const RunFlags& flags) {
  std::string text;
  if (flags.prompt) {
    text = *flags.prompt;
  } else if (flags.prompt_file) {
    auto read = ReadPromptFile(*flags.prompt_file, "prompt");
    if (!read.ok()) return read.status();
    text = std::move(read.value());
  }
  return flags.llama.no_escape ? text : ProcessEscapes(text);
}

// "1.2 s", "3 min": an ETA that reads at a glance.
std::string Duration(double seconds) {
  char buf[32];
  if (seconds < 60) {
    std::snprintf(buf, sizeof(buf), "%.0f s", seconds);
  } else {
    std::snprintf(buf, sizeof(buf), "%.0f min", seconds / 60);
  }
  return buf;
}

// A one-line progress bar on stderr, only when stderr is a terminal and the work is large
// enough (`min_total` units) to be worth watching. Tokens show their rate and an ETA once the
// first batch is done; bytes show MiB. Redrawn at most every 100 ms.
ProgressFn MakeProgress(const char* label, const char* unit, uint64_t min_total) {
  if (!isatty(STDERR_FILENO)) return {};
  using Clock = std::chrono::steady_clock;
  struct State {
    Clock::time_point start = Clock::now();
    Clock::time_point drawn;
    uint64_t first = 0;  // units done at the first report (the rate counts from there)
    bool started = false;
  };
  auto state = std::make_shared<State>();
  const bool bytes = std::string_view(unit) == "bytes";
  return [label, unit, min_total, state, bytes](uint64_t done, uint64_t total) {
    if (total < min_total) return;
    const auto now = Clock::now();
    if (!state->started) *state = State{now, now, done, true};
    const bool last = done >= total;
    if (!last && done != state->first && now - state->drawn < std::chrono::milliseconds(100)) {
      return;
    }
    state->drawn = now;
    const int width = 30;
    const int filled = total ? static_cast<int>(width * std::min(done, total) / total) : width;
    std::string counts;
    char buf[128];
    if (bytes) {
      std::snprintf(buf, sizeof(buf), "%.1f/%.1f MiB", done / 1048576.0, total / 1048576.0);
      counts = buf;
    } else {
      std::snprintf(buf, sizeof(buf), "%llu/%llu %s", static_cast<unsigned long long>(done),
                    static_cast<unsigned long long>(total), unit);
      counts = buf;
      const double seconds = std::chrono::duration<double>(now - state->start).count();
      if (done > state->first && seconds > 0) {
        const double rate = (done - state->first) / seconds;
        counts += ", " + std::to_string(static_cast<long long>(rate)) + " t/s, ETA " +
                  Duration((total - std::min(done, total)) / rate);
      }
    }
    std::fprintf(stderr, "\r%s [%-*s] %s\033[K", label, width, std::string(filled, '=').c_str(),
                 counts.c_str());
    if (last) std::fprintf(stderr, "\r\033[K");
    std::fflush(stderr);
  };
}

constexpr uint64_t kBarTokens = 1;           // prefills report only when split (> n_ubatch)
constexpr uint64_t kBarBytes = 64ull << 20;  // files get a bar from 64 MiB on

// Fail, with `fields` added to the JSON object (which always has "error").
int FailWith(const Status& status, json fields) {
  std::fprintf(stderr, "error: %s\n", status.message().c_str());
  if (g_json_errors) {
    fields["error"] = {{"code", CodeName(status.code())}, {"message", status.message()}};
    WriteStdout(Dump(fields) + "\n");
  }
  return status.code() == Status::Code::kCancelled ? SignalExitCode() : 1;
}

// llama.cpp rounds a context size up (to a multiple of 256, at least 256); say so, never silently.
void NoteContextSize(std::optional<uint32_t> asked, uint32_t got) {
  if (asked.value_or(0) == 0 || *asked == got) return;
  std::fprintf(stderr,
               "note: -c %u became a %u-token context: llama.cpp rounds context sizes up (to a "
               "multiple of 256, at least 256)\n",
               *asked, got);
}

// PublishPrefix's n_published counts the chunks it queued; a full or read-only disk drops them
// after that (with a warning). This process's Store published this prefix only, so its writer's
// counters tell how many are in the store now.
size_t StoredTokens(size_t queued, const Store& store) {
  const WriterStats w = store.writer_stats();
  return std::min<size_t>(queued, (w.chunks_written + w.chunks_existing) * store.chunk_tokens());
}

void PrintPublished(const PublishReport& r, const Store& store) {
  std::fprintf(stderr,
               "published %zu of %zu tokens to store '%s' (%zu were there already, %zu decoded; "
               "the %zu after the last whole %u-token chunk are not stored): prefill %.1f ms, "
               "write %.1f ms\n",
               StoredTokens(r.n_published, store), r.n_tokens, store.dir().c_str(), r.n_reused,
               r.n_decoded, r.n_tokens % store.chunk_tokens(), store.chunk_tokens(), r.prefill_ms,
               r.publish_ms);
}

// The text of save's --prefix or --prefix-file.
Result<std::string> SavePrefixText(const SaveFlags& flags) {
  auto prefix = PrefixText(flags.prefix, flags.prefix_file, flags.llama);
  if (!prefix.ok()) return prefix.status();
  if (!prefix->has_value()) return Status::InvalidArgument("save needs --prefix or --prefix-file");
  return std::move(**prefix);
}

// save --cache-dir without -o: publish the prefix's chunks only.
int RunPublish(const SaveFlags& flags, Store& store) {
  auto prefix = SavePrefixText(flags);
  if (!prefix.ok()) return Fail(prefix.status());
  auto model = LoadModel(flags.common, &flags.context);
  if (!model.ok()) return Fail(model.status());
  auto report = PublishPrefix(*model, *prefix, store, flags.session, &g_cancel,
                              MakeProgress("prefill", "tokens", kBarTokens));
  if (!report.ok()) return Fail(report.status());
  NoteContextSize(flags.session.n_ctx, report->n_ctx);
  const WriterStats written = store.writer_stats();
  if (flags.common.json) {
    WriteStdout(Dump({{"cache_dir", store.dir()},
                      {"n_tokens", report->n_tokens},
                      {"n_reused_tokens", report->n_reused},
                      {"n_decoded_tokens", report->n_decoded},
                      {"n_published_tokens", StoredTokens(report->n_published, store)},
                      {"chunks_written", written.chunks_written},
                      {"chunks_dropped", written.chunks_dropped},
                      {"n_ctx", report->n_ctx},
                      {"prefill_ms", report->prefill_ms},
                      {"publish_ms", report->publish_ms}}) +
                "\n");
  } else {
    PrintPublished(*report, store);
  }
  return 0;
}

// The library's request for run's flags: texts read and escape-processed, -r as stop strings.
Result<RunRequest> MakeRunRequest(const RunFlags& flags, std::shared_ptr<Store> store) {
  RunRequest request;
  auto prefix = PrefixText(flags.prefix, flags.prefix_file, flags.llama);
  if (!prefix.ok()) return prefix.status();
  request.prefix = *prefix;
  auto prompt = PromptText(flags);
  if (!prompt.ok()) return prompt.status();
  request.prompt = std::move(prompt.value());
  request.session_path = flags.session;
  request.store = store;
  request.sample = flags.sample;
  // llama.cpp's reverse prompts end the answer where they appear: stop strings here.
  for (const std::string& r : flags.reverse_prompts) {
    request.sample.stop.push_back(flags.llama.no_escape ? r : ProcessEscapes(r));
  }
  if (flags.prompt_cache) {
    request.prompt_cache =
        RunRequest::PromptCache{*flags.prompt_cache, flags.prompt_cache_all, flags.prompt_cache_ro};
  }
  request.cancel = &g_cancel;
  ApplyContextFlags(flags.context, &request.context);
  request.context.progress = MakeProgress("load", "bytes", kBarBytes);
  return request;
}

int RunRunWith(const RunFlags& flags, std::shared_ptr<Store> store) {
  InstallSignalHandlers();
  auto made = MakeRunRequest(flags, store);
  if (!made.ok()) return Fail(made.status());
  const RunRequest& request = *made;
  auto model = LoadModel(flags.common, &flags.context);
  if (!model.ok()) return Fail(model.status());
  // Generation stops at the next piece after SIGINT/SIGTERM, or when stdout cannot be written.
  const bool json_out = flags.common.json;
  PieceCallback stream = [json_out](std::string_view piece) {
    if (g_cancel.load()) return false;
    return json_out || WriteStdout(piece);
  };
  auto report = RunPrompt(*model, request, stream, MakeProgress("prompt", "tokens", kBarTokens));
  if (!report.ok() && report.status().code() == Status::Code::kCancelled && g_signal != 0) {
    // Stopped during the prompt: nothing was generated, and the answer says so like any other.
    RunReport cancelled;
    cancelled.generation.stop_reason = StopReason::kCancelled;
    report = std::move(cancelled);
  }
  if (!report.ok()) return Fail(report.status());
  NoteContextSize(flags.context.n_ctx, report->n_ctx);
  if (report->prompt_repeats_session) {
    std::fprintf(stderr, "%s\n", RepeatedSessionNote(*report).c_str());
  }
  // What was generated before a signal is printed like a finished answer, then the exit code
  // says it was cut short.
  const int rc = g_signal != 0 && report->generation.stop_reason == StopReason::kCancelled
                     ? SignalExitCode()
                     : 0;
  if (store) {
    // The answer is out (streamed, or about to be printed whole); the chunks are written before
    // the process ends anyway, and --json then says how many reached the store (not just queued).
    store->WaitForWrites();
    report->n_published_tokens = StoredTokens(report->n_published_tokens, *store);
  }
  if (flags.common.json) {
    std::cout << Dump({{"text", report->generation.text},
                       {"tokens", report->generation.tokens},
                       {"n_prompt_tokens", report->n_prompt_tokens},
                       {"n_reused_tokens", report->n_reused_tokens},
                       {"n_decoded_prompt_tokens", report->n_decoded_prompt_tokens},
                       {"n_published_tokens", report->n_published_tokens},
                       {"load_ms", report->load_ms},
                       {"prompt_ms", report->prompt_ms},
                       {"ttft_ms", report->ttft_ms},
                       {"generate_ms", report->generate_ms},
                       {"n_ctx", report->n_ctx},
                       {"prompt_repeats_session", report->prompt_repeats_session},
                       {"prompt_cache_saved", report->prompt_cache_saved},
                       {"save_ms", report->save_ms},
                       {"stop_reason", StopReasonName(report->generation.stop_reason)}})
              << "\n";
  } else {
    WriteStdout("\n");
    std::fprintf(stderr, "%s\n", RunSummary(*report).c_str());
  }
  return rc;
}

// The first tokens inspect shows.
std::vector<Token> FirstTokens(const SessionFileInfo& info) {
  const size_t shown = std::min<size_t>(info.tokens.size(), 16);
  return std::vector<Token>(info.tokens.begin(), info.tokens.begin() + shown);
}

// The payload's parts (docs/FORMAT.md, "The KV payload"): bytes are each part's own, headers
// included; a kind's missing parts are left out.
json MemoryJson(const SessionInfo& m, const SessionMemoryInfo& memory) {
  auto kv_part = [](const SessionKvPart& kv) {
    return json{{"cells", kv.cells}, {"first_pos", kv.first_pos}, {"bytes", kv.bytes}};
  };
  json mem = {{"kind", memory.kind}, {"reuse", memory.reuse}};
  if (memory.has_window) mem["n_swa"] = m.n_swa;
  if (memory.has_kv) mem["kv"] = kv_part(memory.kv);
  if (memory.has_window) mem["window"] = kv_part(memory.window);
  if (memory.has_recurrent) {
    const SessionRecurrentPart& rs = memory.recurrent;
    mem["recurrent"] = {{"bytes", rs.bytes},         {"pos", rs.pos},
                        {"r_records", rs.r_records}, {"r_row_bytes", rs.r_row_bytes},
                        {"s_records", rs.s_records}, {"s_row_bytes", rs.s_row_bytes}};
  }
  return mem;
}

json InspectJson(const SessionFileInfo& info) {
  const SessionInfo& m = info.meta;
  return {{"path", info.path},
          {"format_version", info.format_version},
          {"min_reader_version", info.min_reader_version},
          {"file_bytes", info.file_size},
          {"kv_bytes", info.kv_bytes},
          {"logits_bytes", info.logits_bytes},
          {"checksums", info.checksums_verified ? "ok" : "not verified"},
          {"writer", m.writer},
          {"llama_build", m.llama_build},
          {"llama_state_version", m.llama_state_version},
          {"model",
           {{"fingerprint", m.model_fingerprint.Hex()},
            {"description", m.model_description},
            {"arch", m.model_arch},
            {"n_params", m.model_n_params},
            {"n_vocab", m.n_vocab},
            {"n_layer", m.n_layer},
            {"n_embd", m.n_embd},
            {"n_head", m.n_head},
            {"n_head_kv", m.n_head_kv},
            {"n_ctx_train", m.n_ctx_train}}},
          {"context",
           {{"n_ctx", m.n_ctx},
            {"n_batch", m.n_batch},
            {"n_ubatch", m.n_ubatch},
            {"cache_type_k", m.type_k},
            {"cache_type_v", m.type_v},
            {"flash_attn", m.flash_attn},
            {"rope_freq_base", m.rope_freq_base},
            {"rope_freq_scale", m.rope_freq_scale},
            {"yarn_orig_ctx", m.yarn_orig_ctx}}},
          {"n_tokens", m.n_tokens},
          {"first_tokens", FirstTokens(info)},
          {"preview", m.preview},
          {"memory", MemoryJson(m, info.memory)}};
}

void PrintInspect(const SessionFileInfo& info) {
  const SessionInfo& m = info.meta;
  const SessionMemoryInfo& memory = info.memory;
  std::printf("session      %s\n", info.path.c_str());
  std::printf("format       v%u (readers >= v%u), %llu bytes, checksums %s\n", info.format_version,
              info.min_reader_version, static_cast<unsigned long long>(info.file_size),
              info.checksums_verified ? "ok" : "not verified");
  // Strings from the file reach a terminal only escaped (no control sequences).
  std::printf("written by   %s, llama.cpp %s (state v%u)\n", PrintableText(m.writer).c_str(),
              PrintableText(m.llama_build).c_str(), m.llama_state_version);
  std::printf("model        %s (%s), fingerprint %s\n", PrintableText(m.model_description).c_str(),
              PrintableText(m.model_arch).c_str(), m.model_fingerprint.Hex().c_str());
  std::printf("             %d layers, n_embd %d, %d heads (%d KV), vocab %d\n", m.n_layer,
              m.n_embd, m.n_head, m.n_head_kv, m.n_vocab);
  std::printf("context      n_ctx %u, n_batch %u, n_ubatch %u, K %s, V %s, flash attention %s\n",
              m.n_ctx, m.n_batch, m.n_ubatch, m.type_k.c_str(), m.type_v.c_str(),
              m.flash_attn ? "on" : "off");
  std::printf("tokens       %u (KV %.2f MiB, logits %s)\n", m.n_tokens, info.kv_bytes / 1048576.0,
              m.has_logits ? "stored" : "none");
  std::printf("memory       %s", memory.kind.c_str());
  if (memory.has_window) std::printf(", window of %d tokens", m.n_swa);
  std::printf(": %s\n", memory.parts.c_str());
  std::printf("reuse        %s\n", memory.reuse.c_str());
  std::printf("first tokens");
  for (Token t : FirstTokens(info)) std::printf(" %d", t);
  std::printf("\npreview      %s\n", Dump(m.preview).c_str());
}

// Truncates the session by its last token and decodes that token again.
Status DecodeLastTokenAgain(Session& session) {
  std::vector<Token> tokens = session.tokens();
  const Token last = tokens.back();
  tokens.pop_back();
  auto synced = session.Sync(tokens);
  if (!synced.ok()) return synced.status();
  return session.AppendTokens({last});
}

}  // namespace

int Fail(const Status& status) { return FailWith(status, json::object()); }

int UsageError(const std::string& message) {
  std::fprintf(stderr, "error: %s\n", message.c_str());
  if (g_json_errors) {
    WriteStdout(Dump({{"error", {{"code", "usage"}, {"message", message}}}}) + "\n");
  }
  return 2;
}

void SetJsonErrors(bool on) { g_json_errors = on; }

void InstallSignalHandlers(bool restart_calls) {
  for (int sig : {SIGINT, SIGTERM}) {
    struct sigaction old;
    // A signal ignored by whoever started us (nohup, a shell's background job) stays ignored.
    if (sigaction(sig, nullptr, &old) == 0 && old.sa_handler == SIG_IGN) continue;
    struct sigaction action = {};
    action.sa_handler = OnSignal;
    sigemptyset(&action.sa_mask);
    action.sa_flags = restart_calls ? SA_RESTART : 0;
    sigaction(sig, &action, nullptr);
  }
}

std::atomic<bool>& CancelFlag() { return g_cancel; }

int SignalCaught() { return g_signal; }

void ClearSignal() {
  g_cancel.store(false);
  g_signal = 0;
}

FlashAttention ParseFlashAttention(const std::string& value) {
  if (value == "on") return FlashAttention::kOn;
  if (value == "off") return FlashAttention::kOff;
  return FlashAttention::kAuto;
}

void ApplyContextFlags(const ContextFlags& flags, SessionOptions* options) {
  if (flags.flash_attn) options->flash_attn = ParseFlashAttention(*flags.flash_attn);
  options->n_ctx = flags.n_ctx;
  options->n_threads = flags.n_threads;
  options->n_threads_batch = flags.n_threads_batch;
  options->n_batch = flags.n_batch;
  options->n_ubatch = flags.n_ubatch;
  options->cache_type_k = flags.cache_type_k;
  options->cache_type_v = flags.cache_type_v;
}

Result<std::shared_ptr<Model>> LoadModel(const CommonFlags& flags, const ContextFlags* context) {
  if (flags.verbose) SetLlamaLogs(LlamaLogs::kStderr);
  ModelOptions options;
  options.n_gpu_layers = flags.n_gpu_layers;
  if (context != nullptr && context->flash_attn && *context->flash_attn == "off") {
    options.repack_weights = false;  // and the IQ panel (kvstash/model.h)
  }
  return Model::Load(flags.model, options);
}

Result<std::shared_ptr<Store>> OpenStore(const StoreFlags& flags, bool create) {
  if (!flags.dir) return std::shared_ptr<Store>();
  StoreOptions options;
  options.create = create;
  options.chunk_tokens = flags.chunk_tokens;
  options.max_bytes = flags.max_bytes;
  options.redis_url = flags.redis;
  options.warn = [](const std::string& message) {
    std::fprintf(stderr, "warning: %s\n", message.c_str());
  };
  return Store::Open(*flags.dir, options);
}

Status CheckSessionOutput(const std::string& output, bool force,
                          const std::vector<ProtectedFile>& protected_files) {
  SaveOptions options;
  options.replace_any = force;
  return CheckSaveDestination(output, options, protected_files);
}

int FinishStdout(int rc) {
  int err = g_stdout_errno;
  if (std::fflush(stdout) != 0 && err == 0) err = errno != 0 ? errno : EIO;
  if (std::ferror(stdout) && err == 0) err = EIO;
  // close() reports write errors some file systems (NFS) only find then. stdout is not used
  // after this (main returns); later flushes of its empty buffer make no system call. EBADF: it
  // was closed when we started, which matters only if we wrote (then fflush failed above).
  if (::close(STDOUT_FILENO) != 0 && errno != EINTR && errno != EBADF && err == 0) err = errno;
  if (err == 0) return rc;
  std::fprintf(stderr,
               "error: cannot write to standard output: %s; check where it goes (a full disk, a "
               "closed pipe)\n",
               ErrnoText(err).c_str());
  return rc == 0 ? 1 : rc;
}

std::string VersionText() {
  return std::string("kvstash ") + KVSTASH_VERSION + "\nllama.cpp " + KVSTASH_LLAMA_COMMIT +
         " (node-llama-cpp@3.21.1)\n";
}

int RunSave(const SaveFlags& flags) {
  InstallSignalHandlers();
  // Refused before the model loads and the prefix is decoded: an output that is the model or the
  // prefix file under any name, that is not a regular file, or that is not a session (without
  // --force). Session::Save checks all but the prefix file again.
  auto opened = OpenStore(flags.store, /*create=*/true);
  if (!opened.ok()) return Fail(opened.status());
  const std::shared_ptr<Store> store = std::move(opened.value());
  if (flags.output.empty()) return RunPublish(flags, *store);
  std::vector<ProtectedFile> protected_files = {{flags.common.model, "the model file"}};
  if (flags.prefix_file) protected_files.push_back({*flags.prefix_file, "the prefix file"});
  Status usable = CheckSessionOutput(flags.output, flags.force, protected_files);
  if (!usable.ok()) return Fail(usable);
  auto prefix = SavePrefixText(flags);
  if (!prefix.ok()) return Fail(prefix.status());
  auto model = LoadModel(flags.common, &flags.context);
  if (!model.ok()) return Fail(model.status());
  SaveOptions save_options;
  save_options.sync = !flags.no_sync;
  save_options.progress = MakeProgress("save", "bytes", kBarBytes);
  save_options.replace_any = flags.force;
  save_options.cancel = &g_cancel;
  auto report = SavePrefix(*model, *prefix, flags.output, flags.session, save_options,
                           MakeProgress("prefill", "tokens", kBarTokens));
  if (!report.ok()) return Fail(report.status());
  NoteContextSize(flags.session.n_ctx, report->n_ctx);
  // A store too: its chunks are decoded in chunk-aligned groups, the session file's prefix in one
  // group, so each needs its own prefill (warm == cold holds for each).
  if (store) {
    auto published = PublishPrefix(*model, *prefix, *store, flags.session, &g_cancel,
                                   MakeProgress("prefill", "tokens", kBarTokens));
    if (!published.ok()) return Fail(published.status());
    if (!flags.common.json) PrintPublished(*published, *store);
  }
  if (flags.common.json) {
    WriteStdout(Dump({{"session", flags.output},
                      {"n_tokens", report->n_tokens},
                      {"n_ctx", report->n_ctx},
                      {"bytes", report->bytes},
                      {"prefill_ms", report->prefill_ms},
                      {"save_ms", report->save_ms}}) +
                "\n");
  } else {
    std::fprintf(stderr, "saved %zu tokens to '%s' (%.1f MiB): prefill %.1f ms, save %.1f ms\n",
                 report->n_tokens, flags.output.c_str(), report->bytes / 1048576.0,
                 report->prefill_ms, report->save_ms);
  }
  return 0;
}

int RunRun(const RunFlags& flags) {
  auto store = OpenStore(flags.store, /*create=*/true);
  // A store that cannot be used (a damaged manifest, a directory that cannot be made) costs the
  // cache, not the answer; a store made with other settings (--cache-chunk) is a usage mistake.
  if (!store.ok() && store.status().code() != Status::Code::kInvalidArgument) {
    std::fprintf(stderr, "warning: %s; answering without the store\n",
                 store.status().message().c_str());
    return RunRunWith(flags, nullptr);
  }
  if (!store.ok()) return Fail(store.status());
  return RunRunWith(flags, *store);
}

int RunInspect(const InspectFlags& flags) {
  auto info = InspectSessionFile(flags.session, /*verify_checksums=*/true);
  if (!info.ok()) return Fail(info.status());
  if (flags.json) {
    std::cout << Dump(InspectJson(*info)) << "\n";
  } else {
    PrintInspect(*info);
  }
  return 0;
}

int RunVerify(const VerifyFlags& flags) {
  auto model = LoadModel(flags.common);
  if (!model.ok()) return Fail(model.status());
  // A context just large enough to restore the tokens: a (forged) n_ctx of 2^24 must not make a
  // check allocate gigabytes.
  SessionOptions open;
  open.n_room = 1;
  auto session = Session::Open(*model, flags.session, open);
  // One decode over the restored cache (the last token again): NaN or infinities hidden in the KV
  // values show up here as an error rather than as empty text in a later run.
  Status decoded = session.ok() ? DecodeLastTokenAgain(**session) : session.status();
  if (!decoded.ok()) {
    return FailWith(decoded, {{"session", flags.session}, {"ok", false}});
  }
  if (flags.common.json) {
    std::cout << Dump({{"session", flags.session},
                       {"ok", true},
                       {"n_tokens", (*session)->tokens().size()}})
              << "\n";
  } else {
    std::printf("ok: '%s' opens with '%s' (%zu tokens, checksums verified)\n",
                flags.session.c_str(), flags.common.model.c_str(), (*session)->tokens().size());
  }
  return 0;
}

int RunMakeTestModel(const MakeModelFlags& flags) {
  TestModelSpec spec;
  auto shape = ParseTestShape(flags.shape);
  if (!shape.ok()) return Fail(shape.status());
  auto arch = ParseTestArch(flags.arch);
  if (!arch.ok()) return Fail(arch.status());
  const std::string vocab_name = !flags.vocab.empty()        ? flags.vocab
                                 : *arch == TestArch::kQwen2 ? "qwen2"
                                                             : "spm";
  auto vocab = ParseTestVocab(vocab_name);
  if (!vocab.ok()) return Fail(vocab.status());
  auto type = ParseTestWeightType(flags.type);
  if (!type.ok()) return Fail(type.status());
  spec.shape = *shape;
  spec.vocab = *vocab;
  spec.type = *type;
  spec.arch = *arch;
  spec.seed = flags.seed;
  Status status = WriteTestModel(spec, flags.output);
  if (!status.ok()) return Fail(status);
  return 0;
}

Result<uint64_t> ParseByteCount(const std::string& text, const char* flag) {
  const std::string usage = std::string(flag) + " takes a byte count such as 500000000, 512M " +
                            "or 20G (K, M, G, T: powers of 1024), not '" + text + "'";
  size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  if (digits == 0 || digits > 19) return Status::InvalidArgument(usage);
  uint64_t value = std::stoull(text.substr(0, digits));
  const std::map<std::string, int> shifts = {{"", 0},   {"B", 0},  {"K", 10}, {"k", 10},
                                             {"M", 20}, {"G", 30}, {"T", 40}};
  const auto shift = shifts.find(text.substr(digits));
  if (shift == shifts.end() || value > (UINT64_MAX >> shift->second)) {
    return Status::InvalidArgument(usage);
  }
  return value << shift->second;
}

namespace {

json StatsJson(const StoreStats& stats, const std::string& dir) {
  json namespaces = json::array();
  for (const auto& ns : stats.namespaces) {
    namespaces.push_back({{"hash", ns.hash},
                          {"description", ns.description},
                          {"chunks", ns.chunks},
                          {"bytes", ns.bytes}});
  }
  return {{"cache_dir", dir},
          {"chunk_tokens", stats.chunk_tokens},
          {"chunks", stats.chunks},
          {"bytes", stats.bytes},
          {"tails", stats.tails},
          {"tail_bytes", stats.tail_bytes},
          {"temp_files", stats.temp_files},
          {"namespaces", namespaces}};
}

int CacheStats(const CacheFlags& flags, const Store& store) {
  auto stats = store.Stats();
  if (!stats.ok()) return Fail(stats.status());
  if (flags.json) {
    WriteStdout(Dump(StatsJson(*stats, store.dir())) + "\n");
    return 0;
  }
  std::printf("store        %s (%u tokens per chunk)\n", store.dir().c_str(), stats->chunk_tokens);
  std::printf("chunks       %llu, %.1f MiB in %zu namespace(s), %llu temp file(s)\n",
              static_cast<unsigned long long>(stats->chunks), stats->bytes / 1048576.0,
              stats->namespaces.size(), static_cast<unsigned long long>(stats->temp_files));
  std::printf("tails        %llu, %.1f MiB (the tokens after prompts' last whole chunks)\n",
              static_cast<unsigned long long>(stats->tails), stats->tail_bytes / 1048576.0);
  for (const auto& ns : stats->namespaces) {
    std::printf("  %s  %llu chunks, %.1f MiB  %s\n", ns.hash.substr(0, 16).c_str(),
                static_cast<unsigned long long>(ns.chunks), ns.bytes / 1048576.0,
                PrintableText(ns.summary).c_str());
  }
  return 0;
}

int CacheList(const CacheFlags& flags, const Store& store) {
  auto chunks = store.List();
  if (!chunks.ok()) return Fail(chunks.status());
  json list = json::array();
  for (const auto& c : *chunks) {
    if (flags.json) {
      list.push_back({{"path", c.path},
                      {"hash", c.hash},
                      {"namespace", c.ns},
                      {"index", c.index},
                      {"bytes", c.bytes},
                      {"last_use_ns", c.last_use_ns}});
    } else {
      std::printf("%s  #%u  %llu bytes  ns %s\n", c.hash.c_str(), c.index,
                  static_cast<unsigned long long>(c.bytes), c.ns.substr(0, 16).c_str());
    }
  }
  if (flags.json) WriteStdout(Dump({{"cache_dir", store.dir()}, {"chunks", list}}) + "\n");
  return 0;
}

int CacheGc(const CacheFlags& flags, Store& store) {
  auto max_bytes = ParseByteCount(*flags.max_bytes, "--max-bytes");
  if (!max_bytes.ok()) return UsageError(max_bytes.status().message());
  auto report = store.Gc(*max_bytes);
  if (!report.ok()) return Fail(report.status());
  if (flags.json) {
    WriteStdout(Dump({{"cache_dir", store.dir()},
                      {"chunks_removed", report->chunks_removed},
                      {"bytes_removed", report->bytes_removed},
                      {"bytes_left", report->bytes_left},
                      {"temp_files_removed", report->temp_files_removed}}) +
                "\n");
  } else {
    std::printf("removed %llu chunks (%.1f MiB) and %llu temp files; %.1f MiB left\n",
                static_cast<unsigned long long>(report->chunks_removed),
                report->bytes_removed / 1048576.0,
                static_cast<unsigned long long>(report->temp_files_removed),
                report->bytes_left / 1048576.0);
  }
  return 0;
}

int CacheVerify(const CacheFlags& flags, const Store& store) {
  auto report = store.Verify();
  if (!report.ok()) return Fail(report.status());
  const bool ok = report->bad.empty();
  if (flags.json) {
    WriteStdout(Dump({{"cache_dir", store.dir()},
                      {"ok", ok},
                      {"chunks_ok", report->chunks_ok},
                      {"bad", report->bad}}) +
                "\n");
  } else {
    for (const auto& bad : report->bad) std::printf("bad: %s\n", PrintableText(bad).c_str());
    std::printf("%s: %llu chunks ok, %zu bad\n", ok ? "ok" : "damaged",
                static_cast<unsigned long long>(report->chunks_ok), report->bad.size());
  }
  return ok ? 0 : 1;
}

}  // namespace

int RunCache(const CacheFlags& flags) {
  StoreFlags tiers;  // rm with --cache-redis also unlinks the chunks' keys in Redis
  tiers.dir = flags.dir;
  tiers.redis = flags.redis;
  auto opened = OpenStore(tiers, /*create=*/false);
  if (!opened.ok()) return Fail(opened.status());
  Store& store = **opened;
  if (flags.action == "stats") return CacheStats(flags, store);
  if (flags.action == "ls") return CacheList(flags, store);
  if (flags.action == "gc") return CacheGc(flags, store);
  if (flags.action == "verify") return CacheVerify(flags, store);
  auto removed = store.Clear(flags.all ? "" : flags.ns);
  if (!removed.ok()) return Fail(removed.status());
  if (flags.json) {
    WriteStdout(Dump({{"cache_dir", store.dir()}, {"chunks_removed", *removed}}) + "\n");
  } else {
    std::printf("removed %llu chunks\n", static_cast<unsigned long long>(*removed));
  }
  return 0;
}

}  // namespace kvstash::cli
