// kvstash: the command line. Flags follow llama.cpp's spellings (-m, -c, -t, -fa, -p, -f, -n,
// --temp, ...). This file only parses; tools/cli/commands.cc does the work through the library.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <exception>
#include <string>
#include <vector>

#include "commands.h"

namespace {

using namespace kvstash::cli;

constexpr int kUsageError = 2;

void AddModelFlags(CLI::App* cmd, CommonFlags* common) {
  cmd->add_option("-m,--model", common->model, "GGUF model file")->required();
  cmd->add_flag("--json", common->json, "print one JSON object on stdout");
  cmd->add_flag("-v,--verbose", common->verbose, "show llama.cpp's log lines on stderr");
}

}  // namespace

int main(int argc, char** argv) {
  // llama.cpp spells some flags with two letters after one dash ("-fa", "-ub"); CLI11 reads
  // those as bundles of one-letter flags, so they are renamed to their long forms first.
  std::vector<std::string> args(argv, argv + argc);
  for (auto& arg : args) {
    if (arg == "-fa") arg = "--flash-attn";
    if (arg == "-ub") arg = "--ubatch-size";
  }
  std::vector<char*> argv2;
  for (auto& arg : args) argv2.push_back(arg.data());

  CLI::App app{"kvstash: save an LLM prompt's KV cache once, reuse it in milliseconds"};
  app.require_subcommand(0, 1);
  bool show_version = false;
  app.add_flag("--version", show_version, "print kvstash's and llama.cpp's versions");
  app.footer(
      "Quick start:\n"
      "  kvstash make-test-model -o tiny.gguf\n"
      "  kvstash save -m tiny.gguf --prefix-file system.txt -o system.kvs\n"
      "  kvstash run  -m tiny.gguf --session system.kvs -p \"Question: ...\" -n 64\n"
      "  kvstash inspect system.kvs");

  SaveFlags save;
  save.session.n_ctx = 4096;
  std::string save_fa = "auto";
  CLI::App* save_cmd = app.add_subcommand("save", "decode a prefix once and save its KV cache");
  AddModelFlags(save_cmd, &save.common);
  auto* save_prefix = save_cmd->add_option("--prefix", save.prefix, "prefix text");
  auto* save_prefix_file =
      save_cmd->add_option("--prefix-file", save.prefix_file, "file with the prefix text");
  save_prefix->excludes(save_prefix_file);
  save_cmd->add_option("-o,--output", save.output, "session file to write")->required();
  save_cmd->add_option("-c,--ctx-size", save.session.n_ctx,
                       "context size (default 4096; 0: the model's)");
  save_cmd->add_option("-t,--threads", save.session.n_threads, "threads (default: all cores)");
  save_cmd->add_option("-b,--batch-size", save.session.n_batch,
                       "tokens per llama_decode call (default 2048)");
  save_cmd->add_option("--ubatch-size", save.session.n_ubatch,
                       "physical batch size (default 512; also -ub)");
  save_cmd->add_option("--flash-attn", save_fa, "flash attention: on, off or auto (-fa)")
      ->check(CLI::IsMember({"on", "off", "auto"}));
  save_cmd->add_option("--cache-type-k", save.session.cache_type_k, "K cache type (default f16)");
  save_cmd->add_option("--cache-type-v", save.session.cache_type_v, "V cache type (default f16)");
  save_cmd->add_flag("--no-sync", save.no_sync,
                     "skip fsync (benchmarks only: a crash may lose the file)");
  save_cmd->footer(
      "Example:\n  kvstash save -m model.gguf --prefix-file system.txt -o system.kvs -c 8192");

  RunFlags run;
  run.sample.temp = 0.8f;  // llama.cpp's defaults
  run.sample.n_predict = -1;
  std::string run_fa;
  CLI::App* run_cmd = app.add_subcommand("run", "answer a prompt, warm from a session or cold");
  AddModelFlags(run_cmd, &run.common);
  run_cmd->add_option("--session", run.session, "session file saved by 'kvstash save'");
  auto* run_prefix = run_cmd->add_option("--prefix", run.prefix,
                                         "prefix text (reused from the session where it matches)");
  auto* run_prefix_file =
      run_cmd->add_option("--prefix-file", run.prefix_file, "file with the prefix text");
  run_prefix->excludes(run_prefix_file);
  auto* run_prompt = run_cmd->add_option("-p,--prompt", run.prompt, "prompt text");
  auto* run_prompt_file =
      run_cmd->add_option("-f,--file", run.prompt_file, "file with the prompt text");
  run_prompt->excludes(run_prompt_file);
  run_cmd->add_option("-n,--n-predict", run.sample.n_predict,
                      "tokens to generate (default -1: until end of text or full context)");
  run_cmd->add_option("--temp", run.sample.temp, "temperature (default 0.8; 0: greedy)");
  run_cmd->add_option("--top-k", run.sample.top_k, "top-k (default 40; 0: off)");
  run_cmd->add_option("--top-p", run.sample.top_p, "top-p (default 0.95; 1: off)");
  run_cmd->add_option("--min-p", run.sample.min_p, "min-p (default 0.05; 0: off)");
  run_cmd->add_option("-s,--seed", run.sample.seed, "sampling seed (default: random)");
  run_cmd->add_option("--stop", run.sample.stop, "stop before this text (repeatable)");
  run_cmd->add_option("-c,--ctx-size", run.n_ctx, "context size (default: as saved, or 4096 cold)");
  run_cmd->add_option("-t,--threads", run.n_threads, "threads (default: all cores)");
  run_cmd->add_option("--flash-attn", run_fa, "flash attention: on, off or auto (-fa)")
      ->check(CLI::IsMember({"on", "off", "auto"}));
  run_cmd->add_option("--cache-type-k", run.cache_type_k,
                      "K cache type (cold; must match a session)");
  run_cmd->add_option("--cache-type-v", run.cache_type_v,
                      "V cache type (cold; must match a session)");
  run_cmd->footer(
      "Examples:\n"
      "  kvstash run -m model.gguf --session system.kvs -p \"What is 2+2?\" -n 32 --temp 0\n"
      "  kvstash run -m model.gguf --prefix-file system.txt -p \"What is 2+2?\"   (cold)\n"
      "  kvstash run -m model.gguf --session system.kvs --prefix-file system.txt -p \"...\"\n"
      "      (only what differs from the session's tokens is decoded)");

  InspectFlags inspect;
  CLI::App* inspect_cmd = app.add_subcommand("inspect", "print a session file's header");
  inspect_cmd->add_option("session", inspect.session, "session file")->required();
  inspect_cmd->add_flag("--json", inspect.json, "print one JSON object");
  inspect_cmd->footer("Example:\n  kvstash inspect system.kvs --json");

  VerifyFlags verify;
  CLI::App* verify_cmd = app.add_subcommand("verify", "check that a session opens with a model");
  AddModelFlags(verify_cmd, &verify.common);
  verify_cmd->add_option("session", verify.session, "session file")->required();
  verify_cmd->footer("Example:\n  kvstash verify -m model.gguf system.kvs && echo usable");

  MakeModelFlags make;
  CLI::App* make_cmd = app.add_subcommand(
      "make-test-model", "write a GGUF model with random weights and a real tokenizer");
  make_cmd->add_option("-o,--output", make.output, "GGUF file to write")->required();
  make_cmd->add_option("--shape", make.shape, "tiny, small (SmolLM2-135M) or bench (Llama-3.2-1B)");
  make_cmd->add_option("--vocab", make.vocab, "spm (llama) or bpe (llama 3)");
  make_cmd->add_option("--type", make.type, "f16 or q8_0");
  make_cmd->add_option("--seed", make.seed, "weights seed (same seed, same bytes)");
  make_cmd->footer("Example:\n  kvstash make-test-model -o small.gguf --shape small --type q8_0");

  try {
    app.parse(static_cast<int>(argv2.size()), argv2.data());
  } catch (const CLI::ParseError& e) {
    const int rc = app.exit(e);
    return rc == 0 ? 0 : kUsageError;
  }

  try {
    if (show_version) {
      std::fputs(VersionText().c_str(), stdout);
      return 0;
    }
    if (save_cmd->parsed()) {
      if (save_fa == "on") save.session.flash_attn = kvstash::FlashAttention::kOn;
      if (save_fa == "off") save.session.flash_attn = kvstash::FlashAttention::kOff;
      if (!save.prefix && !save.prefix_file) {
        std::fprintf(stderr, "error: save needs --prefix TEXT or --prefix-file FILE\n");
        return kUsageError;
      }
      return RunSave(save);
    }
    if (run_cmd->parsed()) {
      if (!run_fa.empty()) run.flash_attn = run_fa;
      if (!run.prompt && !run.prompt_file) {
        std::fprintf(stderr, "error: run needs -p TEXT or -f FILE\n");
        return kUsageError;
      }
      return RunRun(run);
    }
    if (inspect_cmd->parsed()) return RunInspect(inspect);
    if (verify_cmd->parsed()) return RunVerify(verify);
    if (make_cmd->parsed()) return RunMakeTestModel(make);
    std::fputs(app.help().c_str(), stderr);
    return kUsageError;
  } catch (const std::exception& e) {
    // The library reports through Status; this only guards against std::bad_alloc and the like.
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
