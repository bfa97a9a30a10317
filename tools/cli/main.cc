// kvstash: the command line. Flags follow llama.cpp's spellings (-m, -c, -t, -fa, -p, -f, -n,
// --temp, -ngl, -ctk, -sys, ...; tools/cli/llama_flags.h renames the ones CLI11 cannot declare).
// This file only parses: each subcommand has one handler that checks what CLI11 cannot and calls
// its Run* (tools/cli/commands.cc, chat_command.cc, import_command.cc) or the server.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <utility>
#include <vector>

#include "chat_command.h"
#include "commands.h"
#include "import_command.h"
#include "kvstash/process.h"
#include "llama_flags.h"
#include "server/http_server.h"

namespace {

using namespace kvstash::cli;

constexpr int kUsageError = 2;

struct ServeFlags {
  CommonFlags common;
  ContextFlags context;
  kvstash::server::ServeOptions options;
  std::string max_bytes, max_body;  // as given
};

struct Cli;
// A subcommand's work once it parsed: returns the exit code.
using Handler = int (*)(Cli& cli);

// Every flag of every subcommand, and each subcommand's handler.
struct Cli {
  CLI::App app{"kvstash: save an LLM prompt's KV cache once, reuse it in milliseconds"};
  bool show_version = false;
  bool cache_dir_flag = false;  // --cache-dir on the command line (not from the environment)
  SaveFlags save;
  RunFlags run;
  bool run_conversation = false;  // llama.cpp's -cnv: kvstash chat's job
  ChatFlags chat;
  InspectFlags inspect;
  VerifyFlags verify;
  CacheFlags cache;
  ServeFlags serve;
  ImportFlags import;
  MakeModelFlags make;
  std::vector<std::pair<const CLI::App*, Handler>> handlers;
};

CLI::App* AddCommand(Cli* cli, const char* name, const char* description, Handler handler) {
  CLI::App* cmd = cli->app.add_subcommand(name, description);
  cli->handlers.emplace_back(cmd, handler);
  return cmd;
}

// -m, -ngl, -v and (with `json`) --json.
void AddModelFlags(CLI::App* cmd, CommonFlags* common, bool json = true) {
  cmd->add_option("-m,--model", common->model, "GGUF model file")->required();
  cmd->add_option("--n-gpu-layers,--gpu-layers", common->gpu_layers,
                  "layers to offload to a GPU: N, all or auto (also -ngl; CPU builds ignore it)");
  if (json) cmd->add_flag("--json", common->json, "print one JSON object on stdout (errors too)");
  cmd->add_flag("-v,--verbose", common->verbose, "show llama.cpp's log lines on stderr");
}

// The help of each context flag a command takes (-t always: "threads (default: all cores)");
// nullptr leaves the flag out.
struct ContextHelp {
  const char* ctx_size;
  const char* threads_batch;
  const char* batch_size;
  const char* ubatch_size;
  const char* flash_attn;
  const char* cache_type_k;
  const char* cache_type_v;
};

void AddContextFlags(CLI::App* cmd, ContextFlags* flags, const ContextHelp& help) {
  auto add = [cmd](const char* names, auto& value, const char* text) {
    return text != nullptr ? cmd->add_option(names, value, text) : nullptr;
  };
  add("-c,--ctx-size", flags->n_ctx, help.ctx_size);
  add("-t,--threads", flags->n_threads, "threads (default: all cores)");
  add("--threads-batch", flags->n_threads_batch, help.threads_batch);
  add("-b,--batch-size", flags->n_batch, help.batch_size);
  add("--ubatch-size", flags->n_ubatch, help.ubatch_size);
  if (CLI::Option* fa = add("--flash-attn", flags->flash_attn, help.flash_attn)) {
    fa->check(CLI::IsMember({"on", "off", "auto"}));
  }
  add("--cache-type-k", flags->cache_type_k, help.cache_type_k);
  add("--cache-type-v", flags->cache_type_v, help.cache_type_v);
}

// --cache-redis: the prefix store's Redis tier (README, "Several machines").
void AddRedisFlag(CLI::App* cmd, std::string* url) {
  cmd->add_option("--cache-redis", *url,
                  "share the prefix store through Redis: redis://[user:password@]host:port[/db] "
                  "(default: $KVSTASH_CACHE_REDIS); Redis being down never fails a request")
      ->envname("KVSTASH_CACHE_REDIS");
}

void AddStoreFlags(CLI::App* cmd, StoreFlags* store) {
  cmd->add_option("--cache-dir", store->dir,
                  "prefix store directory: reuse the longest prefix any earlier run computed, "
                  "publish the new chunks (default: $KVSTASH_CACHE_DIR)")
      ->envname("KVSTASH_CACHE_DIR");
  cmd->add_flag("--no-cache", store->no_cache, "do not use a prefix store ($KVSTASH_CACHE_DIR)");
  AddRedisFlag(cmd, &store->redis);
  cmd->add_option("--cache-max-bytes", store->max_bytes_text,
                  "evict least recently used chunks down to this size after publishing "
                  "(e.g. 20G; default: no limit)");
  cmd->add_option("--cache-chunk", store->chunk_tokens,
                  "tokens per chunk when the store is created (default 256; 16..16384, a "
                  "multiple of 16)");
}

// --prefix, --prefix-file, llama.cpp's -sys/-sysf and escape flags (save, run). The four prefix
// flags exclude each other: all say what the prefix is.
void AddPrefixFlags(CLI::App* cmd, const char* prefix_help, std::optional<std::string>* prefix_text,
                    std::optional<std::string>* prefix_file_text, LlamaTextFlags* llama) {
  auto* prefix = cmd->add_option("--prefix", *prefix_text, prefix_help);
  auto* prefix_file =
      cmd->add_option("--prefix-file", *prefix_file_text, "file with the prefix text");
  auto* sys = cmd->add_option("--system-prompt", llama->system_prompt,
                              "the prefix, escapes processed like -p (llama.cpp's -sys)");
  auto* sysf = cmd->add_option("--system-prompt-file", llama->system_prompt_file,
                               "file with the prefix, one trailing newline dropped (-sysf)");
  std::vector<CLI::Option*> prefixes = {prefix, prefix_file, sys, sysf};
  for (size_t i = 0; i < prefixes.size(); ++i) {
    for (size_t j = i + 1; j < prefixes.size(); ++j) prefixes[i]->excludes(prefixes[j]);
  }
  cmd->add_flag("--no-escape", llama->no_escape,
                "take \\n, \\t, \\\\ ... in -p, -f, -sys and -r literally (llama.cpp turns "
                "them into a newline, a tab, ...: the default)");
  cmd->add_flag("-e,--escape", "process escapes (the default; llama.cpp's -e)");
}

// --top-k, --top-p, --min-p (run, chat).
void AddTopFlags(CLI::App* cmd, kvstash::SampleOptions* sample) {
  cmd->add_option("--top-k", sample->top_k, "top-k (default 40; 0: off)");
  cmd->add_option("--top-p", sample->top_p, "top-p (default 0.95; 1: off)");
  cmd->add_option("--min-p", sample->min_p, "min-p (default 0.05; 0: off)");
}

// -ngl's value into the number ModelOptions takes.
int ResolveGpuLayers(CommonFlags* common) {
  if (common->gpu_layers.empty()) return 0;
  const auto layers = ParseGpuLayers(common->gpu_layers, kvstash::ModelOptions().n_gpu_layers);
  if (!layers) {
    return UsageError("-ngl takes a layer count, all or auto, not '" + common->gpu_layers + "'");
  }
  common->n_gpu_layers = *layers;
  return 0;
}

// A byte count flag ("20G") into `out`; empty text leaves it.
template <typename T>
int ResolveByteCount(const std::string& text, const char* flag, T* out) {
  if (text.empty()) return 0;
  auto parsed = ParseByteCount(text, flag);
  if (!parsed.ok()) return UsageError(parsed.status().message());
  *out = *parsed;
  return 0;
}

// --cache-max-bytes to a number; --no-cache (or an empty directory) turns the store off.
int ResolveStoreFlags(StoreFlags* store) {
  if (store->no_cache || (store->dir && store->dir->empty())) store->dir.reset();
  return ResolveByteCount(store->max_bytes_text, "--cache-max-bytes", &store->max_bytes);
}

// An explicit session file (`file_given`) wins over a store that comes from the environment only;
// with --cache-dir on the command line too, the usage error `conflict`.
int PreferFileToStore(const Cli& cli, bool file_given, const std::string& conflict,
                      StoreFlags* store) {
  if (!file_given || !store->dir) return 0;
  if (cli.cache_dir_flag) return UsageError(conflict);
  store->dir.reset();
  return 0;
}

int SaveCommand(Cli& cli) {
  SaveFlags& save = cli.save;
  if (int rc = ResolveGpuLayers(&save.common)) return rc;
  ApplyContextFlags(save.context, &save.session);
  if (!save.prefix && !save.prefix_file && !save.llama.system_prompt &&
      !save.llama.system_prompt_file) {
    return UsageError("save needs --prefix TEXT or --prefix-file FILE (or -sys TEXT)");
  }
  if (int rc = ResolveStoreFlags(&save.store)) return rc;
  // An explicit -o wins over a store that comes from the environment only (publishing too would
  // cost a second prefill nobody asked for).
  if (!save.output.empty() && !cli.cache_dir_flag) save.store.dir.reset();
  if (save.output.empty() && !save.store.dir) {
    return UsageError("save needs -o FILE (a session file) or --cache-dir DIR (a prefix store)");
  }
  return RunSave(save);
}

void AddSave(Cli* cli) {
  SaveFlags& save = cli->save;
  CLI::App* cmd =
      AddCommand(cli, "save", "decode a prefix once and save its KV cache", SaveCommand);
  AddModelFlags(cmd, &save.common);
  AddPrefixFlags(cmd, "prefix text", &save.prefix, &save.prefix_file, &save.llama);
  cmd->add_option("-o,--output", save.output,
                  "session file to write (a link: its target is written)");
  AddStoreFlags(cmd, &save.store);
  cmd->add_flag("--force", save.force,
                "replace an existing -o that is not a kvstash session (never the model or prefix)");
  AddContextFlags(
      cmd, &save.context,
      {"context size (default 4096; 0: the model's; llama.cpp rounds it up to a "
       "multiple of 256)",
       "threads for the prefix (default: as -t; also -tb)",
       "tokens per llama_decode call (default 2048)", "physical batch size (default 512; also -ub)",
       "flash attention: on, off or auto (-fa)", "K cache type (default f16; also -ctk)",
       "V cache type (default f16; also -ctv)"});
  cmd->add_flag("--no-sync", save.no_sync,
                "skip fsync (benchmarks only: a crash may lose the file)");
  cmd->footer(
      "Examples:\n"
      "  kvstash save -m model.gguf --prefix-file system.txt -o system.kvs -c 8192\n"
      "  kvstash save -m model.gguf --prefix-file system.txt --cache-dir ~/.cache/kvstash\n"
      "      (publishes the prefix's whole chunks: every prompt that starts with it reuses them)");
}

// llama.cpp's seed 4294967295 (LLAMA_DEFAULT_SEED) means "random"; as a flag value it would
// silently do the opposite of what was asked, so it is refused. No -s at all means random, and so
// does llama.cpp's own spelling of it, -s -1 (turned into the library's random seed here).
// A transform, not a check: CLI11 gives checks a copy of the value, and -1 is rewritten.
CLI::Validator SeedCheck() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        if (value == "-1") {
          value = "4294967295";
          return "";
        }
        if (std::strtoull(value.c_str(), nullptr, 10) != 4294967295ull) return "";
        return "-s 4294967295 is llama.cpp's code for a random seed; pass a seed from 0 to "
               "4294967294, or leave -s out for a random one";
      },
      "0..4294967294");
}

// -p, -f and llama-completion's --prompt-cache flags.
void AddRunPromptFlags(CLI::App* cmd, RunFlags* run) {
  auto* prompt = cmd->add_option("-p,--prompt", run->prompt, "prompt text (escapes processed)");
  auto* prompt_file = cmd->add_option(
      "-f,--file", run->prompt_file,
      "file with the prompt text, - for standard input (one trailing newline dropped, escapes "
      "processed, as in llama.cpp)");
  prompt->excludes(prompt_file);
  auto* prompt_cache = cmd->add_option(
      "--prompt-cache", run->prompt_cache,
      "llama-completion's prompt cache: -p/-f is the whole prompt; the longest common prefix "
      "with FILE (a kvstash session) is reused, the prompt's state saved to FILE");
  cmd->add_flag("--prompt-cache-all", run->prompt_cache_all,
                "--prompt-cache: save the generated tokens too")
      ->needs(prompt_cache);
  cmd->add_flag("--prompt-cache-ro", run->prompt_cache_ro, "--prompt-cache: never write FILE")
      ->needs(prompt_cache);
  prompt_cache->excludes("--session");
}

void AddRunSampleFlags(CLI::App* cmd, RunFlags* run) {
  kvstash::SampleOptions& sample = run->sample;
  sample.temp = 0.8f;  // llama.cpp's defaults
  sample.n_predict = -1;
  cmd->add_option("-n,--n-predict,--predict", sample.n_predict,
                  "tokens to generate (default -1: until end of text or full context)");
  cmd->add_option("--temp,--temperature", sample.temp, "temperature (default 0.8; 0: greedy)");
  cmd->add_option("--repeat-penalty", sample.repeat_penalty,
                  "penalize repeating the last --repeat-last-n tokens (default 1: off)");
  cmd->add_option("--repeat-last-n", sample.repeat_last_n,
                  "tokens --repeat-penalty looks back over, prompt included (default 64; -1: "
                  "the context)");
  cmd->add_flag("--ignore-eos", sample.ignore_eos,
                "never stop at end of text (only -n, a stop string or a full context)");
  AddTopFlags(cmd, &sample);
  cmd->add_option("-s,--seed", sample.seed,
                  "sampling seed, 0 to 4294967294 (default, or -1 as in llama.cpp: random)")
      ->transform(SeedCheck());
  cmd->add_option("--stop", sample.stop, "stop before this text (repeatable)");
  cmd->add_option("-r,--reverse-prompt", run->reverse_prompts,
                  "llama.cpp's reverse prompt: --stop, escapes processed (repeatable)");
}

// llama.cpp's -cnv asks for a conversation: `kvstash chat`.
int ConversationUsage() {
  return UsageError(
      "run answers one prompt; for llama.cpp's conversation mode (-cnv) use "
      "'kvstash chat -m MODEL' (see kvstash chat --help)");
}

int RunCommand(Cli& cli) {
  RunFlags& run = cli.run;
  if (cli.run_conversation) return ConversationUsage();
  if (int rc = ResolveGpuLayers(&run.common)) return rc;
  if (!run.prompt && !run.prompt_file) return UsageError("run needs -p TEXT or -f FILE");
  if (int rc = ResolveStoreFlags(&run.store)) return rc;
  const std::string conflict = std::string("run takes ") +
                               (run.session ? "--session FILE" : "--prompt-cache FILE") +
                               " or --cache-dir DIR, not both";
  const int rc = PreferFileToStore(cli, run.session || run.prompt_cache, conflict, &run.store);
  return rc != 0 ? rc : RunRun(run);
}

void AddRun(Cli* cli) {
  RunFlags& run = cli->run;
  CLI::App* cmd =
      AddCommand(cli, "run", "answer a prompt, warm from a session or cold", RunCommand);
  AddModelFlags(cmd, &run.common);
  cmd->add_option("--session", run.session, "session file saved by 'kvstash save'");
  AddStoreFlags(cmd, &run.store);
  AddPrefixFlags(cmd, "prefix text (reused from the session where it matches)", &run.prefix,
                 &run.prefix_file, &run.llama);
  AddRunPromptFlags(cmd, &run);
  AddRunSampleFlags(cmd, &run);
  cmd->add_flag("--conversation", cli->run_conversation,
                "llama.cpp's conversation mode (-cnv): see 'kvstash chat'");
  cmd->add_flag("--no-conversation", "run never converses (llama.cpp's -no-cnv: accepted)");
  // llama-completion's console flags, common in scripts: kvstash's output already is what they
  // ask for (the answer alone on stdout, no llama.cpp log lines without -v, no warmup decode).
  cmd->add_flag("--no-display-prompt", "accepted from llama.cpp: the prompt is never printed");
  cmd->add_flag("--log-disable", "accepted from llama.cpp: its log lines show only with -v");
  cmd->add_flag("--no-warmup", "accepted from llama.cpp: kvstash does no warmup decode");
  cmd->add_flag("--simple-io", "accepted from llama.cpp: stdout gets the answer only");
  AddContextFlags(cmd, &run.context,
                  {"context size (default: as saved, or 4096 cold)",
                   "threads for the prompt (default: as -t; also -tb)",
                   "tokens per llama_decode call (cold; a session keeps its own; default 2048)",
                   "physical batch size (cold; default 512; also -ub)",
                   "flash attention: on, off or auto (-fa)",
                   "K cache type (cold; must match a session; also -ctk)",
                   "V cache type (cold; must match a session; also -ctv)"});
  cmd->footer(
      "Examples:\n"
      "  kvstash run -m model.gguf --session system.kvs -p \"What is 2+2?\" -n 32 --temp 0\n"
      "  kvstash run -m model.gguf --prefix-file system.txt -p \"What is 2+2?\"   (cold)\n"
      "  kvstash run -m model.gguf --session system.kvs --prefix-file system.txt -p \"...\"\n"
      "      (only what differs from the session's tokens is decoded)\n"
      "  kvstash run -m model.gguf --cache-dir ~/.cache/kvstash --prefix-file doc.txt -p \"...\"\n"
      "      (the longest prefix any earlier run computed is restored, the rest decoded)\n"
      "  kvstash run -m model.gguf -f full-prompt.txt --prompt-cache cache.kvs   "
      "(llama-completion)\n"
      "llama.cpp's flags mean what they mean there: -sys is the prefix, -r a stop string, "
      "-p/-f/-sys/-r\n"
      "have escapes processed (--no-escape), "
      "--predict/--temperature/--repeat-penalty/--ignore-eos,\n"
      "-f - reads standard input. Conversation mode (-cnv) is 'kvstash chat'. A prompt that "
      "begins\n"
      "with the --session's tokens reuses them. Plain runs end with one timing line on stderr.\n"
      "SIGINT (Ctrl-C) stops generating: what was generated is printed, exit code 130.");
}

int ServeCommand(Cli& cli) {
  ServeFlags& serve = cli.serve;
  kvstash::server::ServeOptions& s = serve.options;
  const ContextFlags& context = serve.context;
  if (int rc = ResolveGpuLayers(&serve.common)) return rc;
  s.model_path = serve.common.model;
  s.model.n_gpu_layers = serve.common.n_gpu_layers;
  s.n_ctx = context.n_ctx.value_or(s.n_ctx);
  s.engine.n_threads = context.n_threads;
  s.engine.n_batch = context.n_batch.value_or(s.engine.n_batch);
  s.engine.n_ubatch = context.n_ubatch.value_or(s.engine.n_ubatch);
  s.engine.flash_attn = ParseFlashAttention(context.flash_attn.value_or("off"));
  s.engine.cache_type_k = context.cache_type_k.value_or(s.engine.cache_type_k);
  s.engine.cache_type_v = context.cache_type_v.value_or(s.engine.cache_type_v);
  if (int rc = ResolveByteCount(serve.max_bytes, "--cache-max-bytes", &s.cache_max_bytes)) {
    return rc;
  }
  if (int rc = ResolveByteCount(serve.max_body, "--max-body", &s.max_body_bytes)) return rc;
  if (serve.common.verbose) kvstash::SetLlamaLogs(kvstash::LlamaLogs::kStderr);
  return kvstash::server::RunServer(s);
}

void AddServe(Cli* cli) {
  ServeFlags& serve = cli->serve;
  kvstash::server::ServeOptions& s = serve.options;
  CLI::App* cmd = AddCommand(
      cli, "serve", "OpenAI-compatible server whose prompt cache survives restarts and is shared",
      ServeCommand);
  AddModelFlags(cmd, &serve.common, /*json=*/false);
  cmd->add_option("--host", s.host, "address to listen on (default 127.0.0.1)");
  cmd->add_option("--port", s.port, "port (default 8080; 0: any free port, printed)")
      ->check(CLI::Range(0, 65535));
  cmd->add_option("--parallel", s.engine.n_slots,
                  "requests decoded together, each in its own sequence (default 1; also -np)")
      ->check(CLI::Range(1, 256));
  cmd->add_option("--api-key", s.api_key,
                  "require 'Authorization: Bearer KEY' on every endpoint but /health")
      ->envname("KVSTASH_API_KEY");
  cmd->add_option("--chat-template", s.chat_template,
                  "a llama.cpp built-in chat template (chatml, llama3, ...; default: the "
                  "model's own)");
  AddContextFlags(
      cmd, &serve.context,
      {"the whole context, shared equally by the --parallel sequences (default: 4096 "
       "per sequence)",
       nullptr, "tokens per decode step (default 2048)", "physical batch size (default 512; -ub)",
       "flash attention: off (default: answers independent of load), on or auto (-fa)",
       "K cache type (default f16)", "V cache type (default f16)"});
  cmd->add_option("--cache-dir", s.cache_dir,
                  "prefix store directory (default: $KVSTASH_CACHE_DIR, else "
                  "$XDG_CACHE_HOME/kvstash/store or ~/.cache/kvstash/store)")
      ->envname("KVSTASH_CACHE_DIR");
  cmd->add_flag("--no-cache", s.no_cache, "serve without a prefix store");
  AddRedisFlag(cmd, &s.cache_redis);
  cmd->add_option("--cache-max-bytes", serve.max_bytes,
                  "evict least recently used chunks down to this size (e.g. 20G)");
  cmd->add_option("--cache-chunk", s.cache_chunk, "tokens per chunk of a new store (default 256)");
  cmd->add_option("--max-body", serve.max_body, "largest request body (default 8M)");
  cmd->add_option("--queue", s.max_queue,
                  "requests that may wait for a sequence before 503 (default 64)");
  cmd->add_option("--shutdown-timeout", s.shutdown_timeout_s,
                  "seconds SIGTERM waits for running requests before cancelling them (default 10)");
  cmd->footer(
      "Examples:\n"
      "  kvstash serve -m model.gguf --parallel 4 -c 16384\n"
      "  curl http://127.0.0.1:8080/v1/chat/completions -H 'Content-Type: application/json' \\\n"
      "    -d '{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}]}'\n"
      "SIGTERM/SIGINT: stop accepting, finish running requests, flush the store, exit 0.");
}

int ChatCommand(Cli& cli) {
  ChatFlags& chat = cli.chat;
  if (int rc = ResolveGpuLayers(&chat.common)) return rc;
  if (int rc = ResolveStoreFlags(&chat.store)) return rc;
  const int rc =
      PreferFileToStore(cli, chat.session.has_value(),
                        "chat takes --session FILE or --cache-dir DIR, not both", &chat.store);
  return rc != 0 ? rc : RunChat(chat);
}

void AddChat(Cli* cli) {
  ChatFlags& chat = cli->chat;
  chat.sample.temp = 0.8f;  // llama.cpp's chat defaults
  chat.sample.n_predict = -1;
  CLI::App* cmd = AddCommand(
      cli, "chat", "talk with a model through its chat template; --session resumes a conversation",
      ChatCommand);
  AddModelFlags(cmd, &chat.common);
  cmd->add_option("--session", chat.session,
                  "conversation to resume and save after every answer (FILE and FILE.chat)");
  cmd->add_option("--system-prompt", chat.system_prompt,
                  "system prompt (also -sys; on resume it replaces the saved one)");
  cmd->add_option("--chat-template", chat.chat_template,
                  "a llama.cpp built-in template (chatml, llama3, ...; default: the saved one, "
                  "else the model's)");
  AddStoreFlags(cmd, &chat.store);
  cmd->add_option("-n,--n-predict", chat.sample.n_predict,
                  "tokens per answer (default -1: until end of turn or full context)");
  cmd->add_option("--temp", chat.sample.temp, "temperature (default 0.8; 0: greedy)");
  AddTopFlags(cmd, &chat.sample);
  cmd->add_option("-s,--seed", chat.sample.seed,
                  "sampling seed for every answer, 0 to 4294967294 (default: random)")
      ->transform(SeedCheck());
  AddContextFlags(cmd, &chat.context,
                  {"context size (default: as saved, or 4096)", nullptr, nullptr, nullptr,
                   "flash attention: on, off or auto (-fa)", nullptr, nullptr});
  cmd->footer(
      "One message per line from the terminal or a pipe; the answers, one per line, on stdout.\n"
      "Commands: /save FILE, /reset (keeps the system prompt), /exit; // sends a line that\n"
      "starts with /. Ctrl-C stops an answer (it stays in the conversation); Ctrl-C at the\n"
      "prompt or end of input leaves (saving --session).\n"
      "Examples:\n"
      "  kvstash chat -m model.gguf -sys \"You are terse.\" --session talk.kvs\n"
      "  printf 'Hi\\nWhat is 2+2?\\n' | kvstash chat -m model.gguf --temp 0 -n 64");
}

int CacheCommand(Cli& cli) {
  const CacheFlags& cache = cli.cache;
  if (cache.dir.empty()) return UsageError("cache needs --cache-dir DIR (or $KVSTASH_CACHE_DIR)");
  if (cache.action == "gc" && !cache.max_bytes) {
    return UsageError("cache gc needs --max-bytes N (e.g. 20G; 0 removes every chunk)");
  }
  if (cache.action == "rm" && cache.ns.empty() && !cache.all) {
    return UsageError("cache rm needs --namespace HASH or --all");
  }
  return RunCache(cache);
}

void AddCache(Cli* cli) {
  CacheFlags& cache = cli->cache;
  CLI::App* cmd = AddCommand(cli, "cache", "look after a prefix store directory", CacheCommand);
  cmd->add_option("action", cache.action, "stats, ls, gc, verify or rm")
      ->required()
      ->check(CLI::IsMember({"stats", "ls", "gc", "verify", "rm"}));
  cmd->add_option("--cache-dir", cache.dir, "the store (default: $KVSTASH_CACHE_DIR)")
      ->envname("KVSTASH_CACHE_DIR");
  cmd->add_flag("--json", cache.json, "print one JSON object (errors too)");
  AddRedisFlag(cmd, &cache.redis);
  cmd->add_option("--max-bytes", cache.max_bytes,
                  "gc: evict least recently used chunks down to this size (e.g. 2G)");
  cmd->add_option("--namespace", cache.ns, "rm: the chunks of this namespace only");
  cmd->add_flag("--all", cache.all, "rm: every chunk");
  cmd->footer(
      "Examples:\n"
      "  kvstash cache stats --cache-dir ~/.cache/kvstash\n"
      "  kvstash cache gc --cache-dir ~/.cache/kvstash --max-bytes 20G\n"
      "  kvstash cache verify --cache-dir ~/.cache/kvstash   (exit 1 and the bad chunks' names)");
}

void AddInspectVerify(Cli* cli) {
  CLI::App* inspect = AddCommand(cli, "inspect", "print a session file's header",
                                 [](Cli& c) { return RunInspect(c.inspect); });
  inspect->add_option("session", cli->inspect.session, "session file")->required();
  inspect->add_flag("--json", cli->inspect.json, "print one JSON object (errors too)");
  inspect->footer("Example:\n  kvstash inspect system.kvs --json");

  CLI::App* verify =
      AddCommand(cli, "verify", "check that a session opens with a model", [](Cli& c) {
        if (int rc = ResolveGpuLayers(&c.verify.common)) return rc;
        return RunVerify(c.verify);
      });
  AddModelFlags(verify, &cli->verify.common);
  verify->add_option("session", cli->verify.session, "session file")->required();
  verify->footer("Example:\n  kvstash verify -m model.gguf system.kvs && echo usable");
}

void AddMakeTestModel(Cli* cli) {
  MakeModelFlags& make = cli->make;
  CLI::App* cmd =
      AddCommand(cli, "make-test-model",
                 "write a GGUF model with random weights and a real tokenizer", [](Cli& c) {
                   if (c.make.output.empty())
                     return UsageError("make-test-model -o needs a file name");
                   return RunMakeTestModel(c.make);
                 });
  cmd->add_option("-o,--output", make.output, "GGUF file to write")->required();
  cmd->add_option("--shape", make.shape,
                  "tiny, small (SmolLM2-135M) or bench (Llama-3.2-1B); other archs take their "
                  "family's shapes");
  cmd->add_option(
      "--vocab", make.vocab,
      "spm (llama), bpe (llama 3) or qwen2 (default: qwen2 for --arch qwen2, else spm)");
  cmd->add_option("--arch", make.arch,
                  "llama, phi3 (LongRoPE), gemma2 or gemma3 (sliding window), mamba2 (recurrent), "
                  "lfm2 (hybrid: short conv + attention), qwen3moe (mixture of experts) or qwen2");
  cmd->add_option("--type", make.type, "f16 or q8_0");
  cmd->add_option("--seed", make.seed, "weights seed (same seed, same bytes)");
  cmd->footer(
      "Examples:\n  kvstash make-test-model -o small.gguf --shape small --type q8_0\n"
      "  kvstash make-test-model -o mamba.gguf --arch mamba2");
}

void AddImport(Cli* cli) {
  ImportFlags& f = cli->import;
  CLI::App* cmd =
      AddCommand(cli, "import",
                 "convert a llama.cpp session or sequence file into a kvstash session", [](Cli& c) {
                   if (int rc = ResolveGpuLayers(&c.import.common)) return rc;
                   return RunImport(c.import);
                 });
  AddModelFlags(cmd, &f.common);
  cmd->add_option("file", f.input,
                  "llama.cpp file: llama_state_save_file (llama-completion --prompt-cache) or "
                  "llama_state_seq_save_file (llama-server slot save)")
      ->required();
  cmd->add_option("-o,--output", f.output, "session file to write")->required();
  AddContextFlags(cmd, &f.context,
                  {"context size recorded for the session (default 4096, or what the tokens need)",
                   nullptr, "tokens per llama_decode call (default 2048)",
                   "physical batch size (default 512; -ub)", nullptr, nullptr, nullptr});
  cmd->add_flag("--force", f.force, "replace an existing -o that is not a kvstash session");
  cmd->add_flag("--no-sync", f.no_sync, "skip fsync (tests only)");
  cmd->footer(
      "Example:\n"
      "  llama-completion -m model.gguf -f system.txt --prompt-cache system.bin -n 0\n"
      "  kvstash import -m model.gguf system.bin -o system.kvs\n"
      "  kvstash run -m model.gguf --session system.kvs -p \"...\"");
}

// Every spelling each command declares and whether it takes a value, for TranslateLlamaFlags.
std::vector<CommandSpec> CommandSpecs(const CLI::App& app) {
  auto spec_of = [](const CLI::App& cmd, const std::string& name) {
    CommandSpec spec{name, {}};
    for (const CLI::Option* opt : cmd.get_options()) {
      const bool takes_value = opt->get_items_expected_min() > 0;
      for (const std::string& l : opt->get_lnames()) spec.flags.push_back({"--" + l, takes_value});
      for (const std::string& n : opt->get_snames()) spec.flags.push_back({"-" + n, takes_value});
    }
    return spec;
  };
  std::vector<CommandSpec> specs = {spec_of(app, "")};
  for (const CLI::App* cmd : app.get_subcommands([](const CLI::App*) { return true; })) {
    specs.push_back(spec_of(*cmd, cmd->get_name()));
  }
  return specs;
}

// Each command's --help ends with the llama.cpp spellings it accepts.
void AddLlamaFooters(CLI::App* app, const std::vector<CommandSpec>& specs) {
  for (CLI::App* cmd : app->get_subcommands([](const CLI::App*) { return true; })) {
    for (const CommandSpec& spec : specs) {
      const std::string footer = spec.name == cmd->get_name() ? LlamaFlagsFooter(spec) : "";
      if (!footer.empty()) cmd->footer(cmd->get_footer() + "\n" + footer);
    }
  }
}

int Dispatch(Cli& cli) {
  if (cli.show_version) {
    std::fputs(VersionText().c_str(), stdout);
    return 0;
  }
  for (const auto& [cmd, handler] : cli.handlers) {
    if (cmd->parsed()) return handler(cli);
  }
  std::fputs(cli.app.help().c_str(), stderr);
  return kUsageError;
}

int Main(int argc, char** argv) {
  // The CLI owns its process: llama.cpp's own lines only with -v (the library's default passes
  // them on to whatever logger the process had, for host programs).
  kvstash::SetLlamaLogs(kvstash::LlamaLogs::kQuiet);
  Cli cli;
  cli.app.require_subcommand(0, 1);
  cli.app.add_flag("--version", cli.show_version, "print kvstash's and llama.cpp's versions");
  cli.app.footer(
      "Quick start:\n"
      "  kvstash make-test-model -o tiny.gguf\n"
      "  kvstash save -m tiny.gguf --prefix-file system.txt -o system.kvs\n"
      "  kvstash run  -m tiny.gguf --session system.kvs -p \"Question: ...\" -n 64\n"
      "  kvstash inspect system.kvs\n"
      "  kvstash run  -m tiny.gguf --cache-dir cache/ --prefix-file system.txt -p \"...\"\n"
      "Exit codes: 0 ok, 1 error, 2 usage, 130/143 stopped by SIGINT/SIGTERM.");
  AddSave(&cli);
  AddRun(&cli);
  AddServe(&cli);
  AddInspectVerify(&cli);
  AddCache(&cli);
  AddMakeTestModel(&cli);
  AddImport(&cli);
  AddChat(&cli);
  const std::vector<CommandSpec> specs = CommandSpecs(cli.app);
  AddLlamaFooters(&cli.app, specs);

  // Before parsing, so that a usage error is JSON too when --json was asked for.
  const std::vector<std::string> given(argv, argv + argc);
  for (const auto& arg : given) {
    if (arg == "--") break;
    if (arg == "--json") SetJsonErrors(true);
    if (arg == "--cache-dir" || arg.rfind("--cache-dir=", 0) == 0) cli.cache_dir_flag = true;
  }
  Translation translated = TranslateLlamaFlags(given, specs);
  if (!translated.error.empty()) return UsageError(translated.error);
  std::vector<std::string>& args = translated.args;
  std::vector<char*> argv2;
  for (auto& arg : args) argv2.push_back(arg.data());

  try {
    cli.app.parse(static_cast<int>(argv2.size()), argv2.data());
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return cli.app.exit(e);  // --help
    return UsageError(std::string(e.what()) + "; run with --help for the flags");
  }
  return Dispatch(cli);
}

}  // namespace

int main(int argc, char** argv) {
  int rc;
  try {
    rc = Main(argc, argv);
  } catch (const std::exception& e) {
    // The library reports through Status; this only guards against std::bad_alloc and the like.
    std::fprintf(stderr, "error: %s\n", e.what());
    rc = 1;
  }
  return FinishStdout(rc);
}
