// kvstash: the command line. Flags follow llama.cpp's spellings (-m, -c, -t, -fa, -p, -f, -n,
// --temp, ...). This file only parses; tools/cli/commands.cc does the work through the library.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>
#include <vector>

#include "commands.h"

namespace {

using namespace kvstash::cli;

constexpr int kUsageError = 2;

// Every flag of every subcommand, and the subcommands, so that main can tell which one ran.
struct Cli {
  CLI::App app{"kvstash: save an LLM prompt's KV cache once, reuse it in milliseconds"};
  bool show_version = false;
  SaveFlags save;
  std::string save_fa = "auto";
  RunFlags run;
  std::string run_fa;
  InspectFlags inspect;
  VerifyFlags verify;
  MakeModelFlags make;
  CLI::App* save_cmd = nullptr;
  CLI::App* run_cmd = nullptr;
  CLI::App* inspect_cmd = nullptr;
  CLI::App* verify_cmd = nullptr;
  CLI::App* make_cmd = nullptr;
  CLI::Option* seed = nullptr;
};

void AddModelFlags(CLI::App* cmd, CommonFlags* common) {
  cmd->add_option("-m,--model", common->model, "GGUF model file")->required();
  cmd->add_flag("--json", common->json, "print one JSON object on stdout (errors too)");
  cmd->add_flag("-v,--verbose", common->verbose, "show llama.cpp's log lines on stderr");
}

void AddSave(Cli* cli) {
  SaveFlags& save = cli->save;
  save.session.n_ctx = 4096;
  CLI::App* cmd = cli->app.add_subcommand("save", "decode a prefix once and save its KV cache");
  cli->save_cmd = cmd;
  AddModelFlags(cmd, &save.common);
  auto* prefix = cmd->add_option("--prefix", save.prefix, "prefix text");
  auto* prefix_file =
      cmd->add_option("--prefix-file", save.prefix_file, "file with the prefix text");
  prefix->excludes(prefix_file);
  cmd->add_option("-o,--output", save.output,
                  "session file to write (a link: its target is written)")
      ->required();
  cmd->add_flag("--force", save.force,
                "replace an existing -o that is not a kvstash session (never the model or prefix)");
  cmd->add_option("-c,--ctx-size", save.session.n_ctx,
                  "context size (default 4096; 0: the model's; llama.cpp rounds it up to a "
                  "multiple of 256)");
  cmd->add_option("-t,--threads", save.session.n_threads, "threads (default: all cores)");
  cmd->add_option("-b,--batch-size", save.session.n_batch,
                  "tokens per llama_decode call (default 2048)");
  cmd->add_option("--ubatch-size", save.session.n_ubatch,
                  "physical batch size (default 512; also -ub)");
  cmd->add_option("--flash-attn", cli->save_fa, "flash attention: on, off or auto (-fa)")
      ->check(CLI::IsMember({"on", "off", "auto"}));
  cmd->add_option("--cache-type-k", save.session.cache_type_k, "K cache type (default f16)");
  cmd->add_option("--cache-type-v", save.session.cache_type_v, "V cache type (default f16)");
  cmd->add_flag("--no-sync", save.no_sync,
                "skip fsync (benchmarks only: a crash may lose the file)");
  cmd->footer(
      "Example:\n  kvstash save -m model.gguf --prefix-file system.txt -o system.kvs -c 8192");
}

// llama.cpp's seed 4294967295 (LLAMA_DEFAULT_SEED) means "random"; as a flag value it would
// silently do the opposite of what was asked, so it is refused. No -s at all means random.
CLI::Validator SeedCheck() {
  return CLI::Validator(
      [](std::string& value) -> std::string {
        if (std::strtoull(value.c_str(), nullptr, 10) != 4294967295ull) return "";
        return "-s 4294967295 is llama.cpp's code for a random seed; pass a seed from 0 to "
               "4294967294, or leave -s out for a random one";
      },
      "0..4294967294");
}

void AddRun(Cli* cli) {
  RunFlags& run = cli->run;
  run.sample.temp = 0.8f;  // llama.cpp's defaults
  run.sample.n_predict = -1;
  CLI::App* cmd = cli->app.add_subcommand("run", "answer a prompt, warm from a session or cold");
  cli->run_cmd = cmd;
  AddModelFlags(cmd, &run.common);
  cmd->add_option("--session", run.session, "session file saved by 'kvstash save'");
  auto* prefix = cmd->add_option("--prefix", run.prefix,
                                 "prefix text (reused from the session where it matches)");
  auto* prefix_file =
      cmd->add_option("--prefix-file", run.prefix_file, "file with the prefix text");
  prefix->excludes(prefix_file);
  auto* prompt = cmd->add_option("-p,--prompt", run.prompt, "prompt text");
  auto* prompt_file = cmd->add_option("-f,--file", run.prompt_file, "file with the prompt text");
  prompt->excludes(prompt_file);
  cmd->add_option("-n,--n-predict", run.sample.n_predict,
                  "tokens to generate (default -1: until end of text or full context)");
  cmd->add_option("--temp", run.sample.temp, "temperature (default 0.8; 0: greedy)");
  cmd->add_option("--top-k", run.sample.top_k, "top-k (default 40; 0: off)");
  cmd->add_option("--top-p", run.sample.top_p, "top-p (default 0.95; 1: off)");
  cmd->add_option("--min-p", run.sample.min_p, "min-p (default 0.05; 0: off)");
  cli->seed = cmd->add_option("-s,--seed", run.sample.seed,
                              "sampling seed, 0 to 4294967294 (default: random)")
                  ->check(SeedCheck());
  cmd->add_option("--stop", run.sample.stop, "stop before this text (repeatable)");
  cmd->add_option("-c,--ctx-size", run.n_ctx, "context size (default: as saved, or 4096 cold)");
  cmd->add_option("-t,--threads", run.n_threads, "threads (default: all cores)");
  cmd->add_option("--flash-attn", cli->run_fa, "flash attention: on, off or auto (-fa)")
      ->check(CLI::IsMember({"on", "off", "auto"}));
  cmd->add_option("--cache-type-k", run.cache_type_k, "K cache type (cold; must match a session)");
  cmd->add_option("--cache-type-v", run.cache_type_v, "V cache type (cold; must match a session)");
  cmd->footer(
      "Examples:\n"
      "  kvstash run -m model.gguf --session system.kvs -p \"What is 2+2?\" -n 32 --temp 0\n"
      "  kvstash run -m model.gguf --prefix-file system.txt -p \"What is 2+2?\"   (cold)\n"
      "  kvstash run -m model.gguf --session system.kvs --prefix-file system.txt -p \"...\"\n"
      "      (only what differs from the session's tokens is decoded)\n"
      "SIGINT (Ctrl-C) stops generating: what was generated is printed, exit code 130.");
}

void AddOthers(Cli* cli) {
  cli->inspect_cmd = cli->app.add_subcommand("inspect", "print a session file's header");
  cli->inspect_cmd->add_option("session", cli->inspect.session, "session file")->required();
  cli->inspect_cmd->add_flag("--json", cli->inspect.json, "print one JSON object (errors too)");
  cli->inspect_cmd->footer("Example:\n  kvstash inspect system.kvs --json");

  cli->verify_cmd = cli->app.add_subcommand("verify", "check that a session opens with a model");
  AddModelFlags(cli->verify_cmd, &cli->verify.common);
  cli->verify_cmd->add_option("session", cli->verify.session, "session file")->required();
  cli->verify_cmd->footer("Example:\n  kvstash verify -m model.gguf system.kvs && echo usable");

  MakeModelFlags& make = cli->make;
  CLI::App* cmd = cli->app.add_subcommand(
      "make-test-model", "write a GGUF model with random weights and a real tokenizer");
  cli->make_cmd = cmd;
  cmd->add_option("-o,--output", make.output, "GGUF file to write")->required();
  cmd->add_option("--shape", make.shape, "tiny, small (SmolLM2-135M) or bench (Llama-3.2-1B)");
  cmd->add_option("--vocab", make.vocab, "spm (llama) or bpe (llama 3)");
  cmd->add_option("--type", make.type, "f16 or q8_0");
  cmd->add_option("--seed", make.seed, "weights seed (same seed, same bytes)");
  cmd->footer("Example:\n  kvstash make-test-model -o small.gguf --shape small --type q8_0");
}

// Whether `arg`, standing as a flag, makes the next argument its value.
bool TakesValue(const Cli& cli, const std::string& arg) {
  if (arg.size() < 2 || arg[0] != '-' || arg.find('=') != std::string::npos) return false;
  if (arg[1] != '-' && arg.size() > 2) return false;  // "-n5": the value is attached
  for (const CLI::App* cmd :
       {&cli.app, static_cast<const CLI::App*>(cli.save_cmd),
        static_cast<const CLI::App*>(cli.run_cmd), static_cast<const CLI::App*>(cli.inspect_cmd),
        static_cast<const CLI::App*>(cli.verify_cmd), static_cast<const CLI::App*>(cli.make_cmd)}) {
    const CLI::Option* opt = cmd->get_option_no_throw(arg);
    if (opt != nullptr) return opt->get_items_expected_min() > 0;
  }
  return false;
}

// llama.cpp spells some flags with two letters after one dash ("-fa", "-ub"); CLI11 2.1 reads
// those as bundles of one-letter flags, so they are renamed to their long forms, but only where
// they stand as flags: not as the value of the option before them (--prefix -fa), nor after "--".
void RenameTwoLetterFlags(const Cli& cli, std::vector<std::string>* args) {
  bool is_value = false;
  for (size_t i = 1; i < args->size(); ++i) {
    std::string& arg = (*args)[i];
    if (arg == "--") break;
    if (!is_value && arg == "-fa") arg = "--flash-attn";
    if (!is_value && arg == "-ub") arg = "--ubatch-size";
    is_value = !is_value && TakesValue(cli, arg);
  }
}

int Dispatch(Cli& cli) {
  if (cli.show_version) {
    std::fputs(VersionText().c_str(), stdout);
    return 0;
  }
  if (cli.save_cmd->parsed()) {
    if (cli.save_fa == "on") cli.save.session.flash_attn = kvstash::FlashAttention::kOn;
    if (cli.save_fa == "off") cli.save.session.flash_attn = kvstash::FlashAttention::kOff;
    if (!cli.save.prefix && !cli.save.prefix_file) {
      return UsageError("save needs --prefix TEXT or --prefix-file FILE");
    }
    if (cli.save.output.empty()) return UsageError("save -o needs a file name, not \"\"");
    return RunSave(cli.save);
  }
  if (cli.run_cmd->parsed()) {
    if (!cli.run_fa.empty()) cli.run.flash_attn = cli.run_fa;
    if (!cli.run.prompt && !cli.run.prompt_file) return UsageError("run needs -p TEXT or -f FILE");
    return RunRun(cli.run);
  }
  if (cli.inspect_cmd->parsed()) return RunInspect(cli.inspect);
  if (cli.verify_cmd->parsed()) return RunVerify(cli.verify);
  if (cli.make_cmd->parsed()) {
    if (cli.make.output.empty()) return UsageError("make-test-model -o needs a file name");
    return RunMakeTestModel(cli.make);
  }
  std::fputs(cli.app.help().c_str(), stderr);
  return kUsageError;
}

int Main(int argc, char** argv) {
  Cli cli;
  cli.app.require_subcommand(0, 1);
  cli.app.add_flag("--version", cli.show_version, "print kvstash's and llama.cpp's versions");
  cli.app.footer(
      "Quick start:\n"
      "  kvstash make-test-model -o tiny.gguf\n"
      "  kvstash save -m tiny.gguf --prefix-file system.txt -o system.kvs\n"
      "  kvstash run  -m tiny.gguf --session system.kvs -p \"Question: ...\" -n 64\n"
      "  kvstash inspect system.kvs\n"
      "Exit codes: 0 ok, 1 error, 2 usage, 130/143 stopped by SIGINT/SIGTERM.");
  AddSave(&cli);
  AddRun(&cli);
  AddOthers(&cli);

  std::vector<std::string> args(argv, argv + argc);
  RenameTwoLetterFlags(cli, &args);
  std::vector<char*> argv2;
  for (auto& arg : args) argv2.push_back(arg.data());
  // Before parsing, so that a usage error is JSON too when --json was asked for.
  for (const auto& arg : args) {
    if (arg == "--") break;
    if (arg == "--json") SetJsonErrors(true);
  }

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
