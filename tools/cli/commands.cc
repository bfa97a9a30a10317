#include "commands.h"

#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "env/env.h"
#include "kvstash/session_file.h"
#include "testmodel/test_model.h"

namespace kvstash::cli {
namespace {

using nlohmann::json;

// Generated text need not be valid UTF-8 (a token can end mid-character): replace, never throw.
std::string Dump(const json& j, int indent = -1) {
  return j.dump(indent, ' ', false, json::error_handler_t::replace);
}

Result<std::string> ReadTextFile(const std::string& path, const char* what) {
  // A directory opens as an ifstream and reads as empty: refuse it instead of running on "".
  auto info = Env::Default()->Stat(path);
  if (info.ok() && info->type == FileInfo::Type::kDirectory) {
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

Result<std::shared_ptr<Model>> LoadModel(const CommonFlags& flags) {
  ModelOptions options;
  options.verbose = flags.verbose;
  return Model::Load(flags.model, options);
}

// A one-line progress bar on stderr, only when stderr is a terminal and the work is large
// enough (`min_total` units) to be worth watching.
ProgressFn MakeProgress(const char* label, const char* unit, uint64_t min_total) {
  if (!isatty(STDERR_FILENO)) return {};
  return [label, unit, min_total](uint64_t done, uint64_t total) {
    if (total < min_total) return;
    const int width = 30;
    const int filled = total ? static_cast<int>(width * done / total) : width;
    std::fprintf(stderr, "\r%s [%-*s] %llu/%llu %s", label, width, std::string(filled, '=').c_str(),
                 static_cast<unsigned long long>(done), static_cast<unsigned long long>(total),
                 unit);
    if (done >= total) std::fprintf(stderr, "\r%*s\r", width + 60, "");
    std::fflush(stderr);
  };
}

constexpr uint64_t kBarTokens = 1;           // prefill calls report only when split (> n_batch)
constexpr uint64_t kBarBytes = 64ull << 20;  // files under 64 MiB take milliseconds

Result<FlashAttention> ParseFlash(const std::string& value) {
  if (value == "on") return FlashAttention::kOn;
  if (value == "off") return FlashAttention::kOff;
  if (value == "auto") return FlashAttention::kAuto;
  return Status::InvalidArgument("-fa takes on, off or auto, not '" + value + "'");
}

}  // namespace

int Fail(const Status& status) {
  std::fprintf(stderr, "error: %s\n", status.message().c_str());
  return 1;
}

std::string VersionText() {
  return std::string("kvstash ") + KVSTASH_VERSION + "\nllama.cpp " + KVSTASH_LLAMA_COMMIT +
         " (node-llama-cpp@3.21.1)\n";
}

int RunSave(const SaveFlags& flags) {
  auto prefix = TextOrFile(flags.prefix, flags.prefix_file, "prefix");
  if (!prefix.ok()) return Fail(prefix.status());
  if (!prefix->has_value())
    return Fail(Status::InvalidArgument("save needs --prefix or --prefix-file"));
  auto model = LoadModel(flags.common);
  if (!model.ok()) return Fail(model.status());
  SaveOptions save_options;
  save_options.sync = !flags.no_sync;
  save_options.progress = MakeProgress("save", "bytes", kBarBytes);
  auto report = SavePrefix(*model, **prefix, flags.output, flags.session, save_options,
                           MakeProgress("prefill", "tokens", kBarTokens));
  if (!report.ok()) return Fail(report.status());
  if (flags.common.json) {
    std::cout << Dump({{"session", flags.output},
                       {"n_tokens", report->n_tokens},
                       {"bytes", report->bytes},
                       {"prefill_ms", report->prefill_ms},
                       {"save_ms", report->save_ms}})
              << "\n";
  } else {
    std::fprintf(stderr, "saved %zu tokens to '%s' (%.1f MiB): prefill %.1f ms, save %.1f ms\n",
                 report->n_tokens, flags.output.c_str(), report->bytes / 1048576.0,
                 report->prefill_ms, report->save_ms);
  }
  return 0;
}

int RunRun(const RunFlags& flags) {
  RunRequest request;
  auto prefix = TextOrFile(flags.prefix, flags.prefix_file, "prefix");
  if (!prefix.ok()) return Fail(prefix.status());
  request.prefix = *prefix;
  auto prompt = TextOrFile(flags.prompt, flags.prompt_file, "prompt");
  if (!prompt.ok()) return Fail(prompt.status());
  request.prompt = prompt->value_or("");
  request.session_path = flags.session;
  request.sample = flags.sample;
  request.create.n_threads = flags.n_threads;
  request.open.n_threads = flags.n_threads;
  if (flags.n_ctx) {
    request.create.n_ctx = *flags.n_ctx;
    request.open.n_ctx = *flags.n_ctx;
  }
  if (flags.flash_attn) {
    auto fa = ParseFlash(*flags.flash_attn);
    if (!fa.ok()) return Fail(fa.status());
    request.create.flash_attn = *fa;
    request.open.flash_attn = *fa;
  }
  if (flags.cache_type_k) request.create.cache_type_k = *flags.cache_type_k;
  if (flags.cache_type_v) request.create.cache_type_v = *flags.cache_type_v;
  request.open.cache_type_k = flags.cache_type_k;
  request.open.cache_type_v = flags.cache_type_v;
  request.open.progress = MakeProgress("load", "bytes", kBarBytes);

  auto model = LoadModel(flags.common);
  if (!model.ok()) return Fail(model.status());
  PieceCallback stream;
  if (!flags.common.json) {
    stream = [](std::string_view piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
      return true;
    };
  }
  auto report = RunPrompt(*model, request, stream, MakeProgress("prompt", "tokens", kBarTokens));
  if (!report.ok()) return Fail(report.status());
  if (flags.common.json) {
    std::cout << Dump({{"text", report->generation.text},
                       {"tokens", report->generation.tokens},
                       {"n_prompt_tokens", report->n_prompt_tokens},
                       {"n_reused_tokens", report->n_reused_tokens},
                       {"n_decoded_prompt_tokens", report->n_decoded_prompt_tokens},
                       {"load_ms", report->load_ms},
                       {"prompt_ms", report->prompt_ms},
                       {"ttft_ms", report->ttft_ms},
                       {"generate_ms", report->generate_ms},
                       {"stop_reason", StopReasonName(report->generation.stop_reason)}})
              << "\n";
  } else {
    std::fputs("\n", stdout);
  }
  return 0;
}

int RunInspect(const InspectFlags& flags) {
  auto info = InspectSessionFile(flags.session, /*verify_checksums=*/true);
  if (!info.ok()) return Fail(info.status());
  const SessionMeta& m = info->meta;
  const size_t shown = std::min<size_t>(info->tokens.size(), 16);
  std::vector<Token> first(info->tokens.begin(), info->tokens.begin() + shown);
  json j = {{"path", info->path},
            {"format_version", info->format_version},
            {"min_reader_version", info->min_reader_version},
            {"file_bytes", info->file_size},
            {"kv_bytes", info->kv_bytes},
            {"logits_bytes", info->logits_bytes},
            {"checksums", info->checksums_verified ? "ok" : "not verified"},
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
              {"cache_type_k", m.type_k_name},
              {"cache_type_v", m.type_v_name},
              {"flash_attn", m.flash_attn},
              {"rope_freq_base", m.rope_freq_base},
              {"rope_freq_scale", m.rope_freq_scale},
              {"yarn_orig_ctx", m.yarn_orig_ctx}}},
            {"n_tokens", m.n_tokens},
            {"first_tokens", first},
            {"preview", m.preview}};
  if (flags.json) {
    std::cout << Dump(j) << "\n";
    return 0;
  }
  std::printf("session      %s\n", info->path.c_str());
  std::printf("format       v%u (readers >= v%u), %llu bytes, checksums %s\n", info->format_version,
              info->min_reader_version, static_cast<unsigned long long>(info->file_size),
              info->checksums_verified ? "ok" : "not verified");
  std::printf("written by   %s, llama.cpp %s (state v%u)\n", m.writer.c_str(),
              m.llama_build.c_str(), m.llama_state_version);
  std::printf("model        %s (%s), fingerprint %s\n", m.model_description.c_str(),
              m.model_arch.c_str(), m.model_fingerprint.Hex().c_str());
  std::printf("             %d layers, n_embd %d, %d heads (%d KV), vocab %d\n", m.n_layer,
              m.n_embd, m.n_head, m.n_head_kv, m.n_vocab);
  std::printf("context      n_ctx %u, n_batch %u, n_ubatch %u, K %s, V %s, flash attention %s\n",
              m.n_ctx, m.n_batch, m.n_ubatch, m.type_k_name.c_str(), m.type_v_name.c_str(),
              m.flash_attn ? "on" : "off");
  std::printf("tokens       %u (KV %.2f MiB, logits %s)\n", m.n_tokens, info->kv_bytes / 1048576.0,
              m.has_logits ? "stored" : "none");
  std::printf("first tokens");
  for (Token t : first) std::printf(" %d", t);
  std::printf("\npreview      %s\n", Dump(m.preview).c_str());
  return 0;
}

int RunVerify(const VerifyFlags& flags) {
  auto model = LoadModel(flags.common);
  if (!model.ok()) return Fail(model.status());
  auto session = Session::Open(*model, flags.session);
  if (!session.ok()) {
    if (flags.common.json) {
      std::cout << Dump({{"session", flags.session},
                         {"ok", false},
                         {"error", session.status().message()}})
                << "\n";
    }
    return Fail(session.status());
  }
  if (flags.common.json) {
    std::cout << Dump({{"session", flags.session},
                       {"ok", true},
                       {"n_tokens", (*session)->tokens().size()},
                       {"n_ctx", (*session)->n_ctx()}})
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
  auto vocab = ParseTestVocab(flags.vocab);
  if (!vocab.ok()) return Fail(vocab.status());
  auto type = ParseTestWeightType(flags.type);
  if (!type.ok()) return Fail(type.status());
  spec.shape = *shape;
  spec.vocab = *vocab;
  spec.type = *type;
  spec.seed = flags.seed;
  Status status = WriteTestModel(spec, flags.output);
  if (!status.ok()) return Fail(status);
  return 0;
}

}  // namespace kvstash::cli
