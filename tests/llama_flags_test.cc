// tools/cli/llama_flags: llama.cpp's spellings renamed where they stand as flags, unknown options
// with suggestions, escape processing as llama.cpp does it.
#include "llama_flags.h"

#include <gtest/gtest.h>

#include "run_summary.h"

namespace kvstash::cli {
namespace {

// A cut-down kvstash: the top level, `run` and `inspect`, spelled as main.cc declares them.
std::vector<CommandSpec> Commands() {
  CommandSpec top{"", {{"--version", false}, {"-h", false}, {"--help", false}}};
  CommandSpec run{"run",
                  {{"-m", true},
                   {"--model", true},
                   {"-p", true},
                   {"--prompt", true},
                   {"--prefix", true},
                   {"-n", true},
                   {"--n-predict", true},
                   {"--predict", true},
                   {"-c", true},
                   {"-s", true},
                   {"--temp", true},
                   {"--temperature", true},
                   {"--flash-attn", true},
                   {"--ubatch-size", true},
                   {"--cache-type-k", true},
                   {"--cache-type-v", true},
                   {"--system-prompt", true},
                   {"--n-gpu-layers", true},
                   {"--threads-batch", true},
                   {"--conversation", false},
                   {"--no-conversation", false},
                   {"--ignore-eos", false},
                   {"--stop", true}}};
  CommandSpec inspect{"inspect", {{"--json", false}}};
  return {top, run, inspect};
}

std::vector<std::string> Translate(std::vector<std::string> args) {
  args.insert(args.begin(), "kvstash");
  Translation t = TranslateLlamaFlags(args, Commands());
  EXPECT_EQ(t.error, "");
  t.args.erase(t.args.begin());
  return t.args;
}

std::string ErrorOf(std::vector<std::string> args) {
  args.insert(args.begin(), "kvstash");
  return TranslateLlamaFlags(args, Commands()).error;
}

using Args = std::vector<std::string>;

TEST(LlamaFlags, TwoLetterFlagsBecomeLongNames) {
  EXPECT_EQ(Translate({"run", "-m", "x.gguf", "-ctk", "q8_0", "-ctv", "q8_0", "-ngl", "99"}),
            (Args{"run", "-m", "x.gguf", "--cache-type-k", "q8_0", "--cache-type-v", "q8_0",
                  "--n-gpu-layers", "99"}));
  EXPECT_EQ(Translate({"run", "-sys", "be brief", "-tb", "4", "-cnv"}),
            (Args{"run", "--system-prompt", "be brief", "--threads-batch", "4", "--conversation"}));
  EXPECT_EQ(Translate({"run", "-ctk=q4_0"}), (Args{"run", "--cache-type-k=q4_0"}));
}

TEST(LlamaFlags, ValuesAreNeverRenamed) {
  // "-fa" and "-sys" as the text of --prefix / -p, and everything after "--".
  EXPECT_EQ(Translate({"run", "--prefix", "-fa", "-p", "-sys", "-fa", "off"}),
            (Args{"run", "--prefix", "-fa", "-p", "-sys", "--flash-attn", "off"}));
  EXPECT_EQ(Translate({"run", "-n", "-1", "--", "-ctk"}), (Args{"run", "-n", "-1", "--", "-ctk"}));
  EXPECT_EQ(Translate({"run", "--prefix=-ub", "-ub", "256"}),
            (Args{"run", "--prefix=-ub", "--ubatch-size", "256"}));
}

TEST(LlamaFlags, BareFlashAttnMeansOn) {
  EXPECT_EQ(Translate({"run", "-fa", "-p", "x"}), (Args{"run", "--flash-attn=on", "-p", "x"}));
  EXPECT_EQ(Translate({"run", "-fa"}), (Args{"run", "--flash-attn=on"}));
  EXPECT_EQ(Translate({"run", "-fa", "auto"}), (Args{"run", "--flash-attn", "auto"}));
}

TEST(LlamaFlags, ShortFlagsWithEqualsAreSplit) {
  EXPECT_EQ(Translate({"run", "-n=5", "--temp=0"}), (Args{"run", "-n", "5", "--temp=0"}));
}

TEST(LlamaFlags, AnUnknownCommandIsLeftToCLI11) {
  EXPECT_EQ(Translate({"bogus", "-xyz"}), (Args{"bogus", "-xyz"}));
}

TEST(LlamaFlags, AttachedNumbersStay) {
  EXPECT_EQ(Translate({"run", "-n5", "-c4096", "-s-1"}), (Args{"run", "-n5", "-c4096", "-s-1"}));
}

TEST(LlamaFlags, UnknownOptionsAreNamedWithASuggestion) {
  EXPECT_EQ(ErrorOf({"run", "-xyz"}),
            "unknown option '-xyz' for 'run'; run with --help for the flags");
  EXPECT_EQ(
      ErrorOf({"run", "-ctx", "4096"}),
      "unknown option '-ctx' for 'run' (did you mean '-ctk'?); run with --help for the flags");
  EXPECT_NE(ErrorOf({"run", "--tempp", "0"}).find("did you mean '--temp'?"), std::string::npos);
  EXPECT_NE(ErrorOf({"run", "--temprature", "0"}).find("did you mean '--temperature'?"),
            std::string::npos);
  EXPECT_NE(ErrorOf({"run", "--ignore-eso"}).find("'--ignore-eos'"), std::string::npos);
  EXPECT_NE(ErrorOf({"run", "-temp", "0"}).find("'--temp'"), std::string::npos);
  EXPECT_NE(ErrorOf({"run", "--stop=x", "--fa=on"}).find("unknown option '--fa'"),
            std::string::npos);
  // A llama.cpp spelling whose flag the command does not have is unknown there.
  EXPECT_NE(ErrorOf({"inspect", "-ctk", "q8_0"}).find("unknown option '-ctk' for 'inspect'"),
            std::string::npos);
  EXPECT_EQ(
      ErrorOf({"--versoin"}),
      "unknown option '--versoin' (did you mean '--version'?); run with --help for the flags");
}

TEST(LlamaFlags, EditDistance) {
  EXPECT_EQ(EditDistance("--temp", "--temp"), 0u);
  EXPECT_EQ(EditDistance("--tmep", "--temp"), 1u);
  EXPECT_EQ(EditDistance("-ctx", "-ctk"), 1u);
  EXPECT_EQ(EditDistance("", "abc"), 3u);
  EXPECT_EQ(ClosestSpelling("-xy", {"-x"}), "");
}

TEST(LlamaFlags, EscapesAsLlamaCpp) {
  EXPECT_EQ(ProcessEscapes(R"(a\nb\tc\rd)"), "a\nb\tc\rd");
  EXPECT_EQ(ProcessEscapes(R"(\'\"\\)"), "'\"\\");
  EXPECT_EQ(ProcessEscapes(R"(\x41\x4a!)"), "AJ!");
  // Anything else stays, backslash included; so does a backslash at the end.
  EXPECT_EQ(ProcessEscapes(R"(\q \x4 \xZZ end\)"), R"(\q \x4 \xZZ end\)");
  EXPECT_EQ(ProcessEscapes(R"(\\n)"), "\\n");
}

TEST(LlamaFlags, PromptFilesLoseOneTrailingNewline) {
  EXPECT_EQ(DropTrailingNewline("a\n\n"), "a\n");
  EXPECT_EQ(DropTrailingNewline("a"), "a");
  EXPECT_EQ(DropTrailingNewline(""), "");
}

TEST(LlamaFlags, GpuLayers) {
  EXPECT_EQ(ParseGpuLayers("99", 0), 99);
  EXPECT_EQ(ParseGpuLayers("0", 7), 0);
  EXPECT_EQ(ParseGpuLayers("auto", 7), 7);
  EXPECT_GT(*ParseGpuLayers("all", 0), 1000);
  EXPECT_EQ(ParseGpuLayers("-1", 0), std::nullopt);
  EXPECT_EQ(ParseGpuLayers("x", 0), std::nullopt);
  EXPECT_EQ(ParseGpuLayers("", 0), std::nullopt);
}

TEST(LlamaFlags, FooterListsTheCommandsSpellings) {
  const std::string footer = LlamaFlagsFooter(Commands()[1]);
  EXPECT_NE(footer.find("-ctk = --cache-type-k"), std::string::npos);
  EXPECT_NE(footer.find("-ngl = --n-gpu-layers"), std::string::npos);
  EXPECT_EQ(footer.find("-np"), std::string::npos);  // run has no --parallel
  EXPECT_EQ(LlamaFlagsFooter(Commands()[2]), "");
}

TEST(RunSummary, OneLineAsLlamaCppTimings) {
  RunReport r;
  r.n_prompt_tokens = 2274;
  r.n_reused_tokens = 1141;
  r.n_decoded_prompt_tokens = 1133;
  r.reused_from = "session";
  r.prompt_ms = 812;
  r.load_ms = 41;
  r.generate_ms = 900;
  r.generation.tokens.assign(64, 1);
  EXPECT_EQ(RunSummary(r),
            "kvstash: reused 1141 of 2274 prompt tokens (session), decoded 1133 in 812 ms (1395 "
            "t/s); load 41 ms; generated 64 tokens in 900 ms (71 t/s)");
  RunReport cold;
  cold.n_prompt_tokens = 5;
  cold.n_decoded_prompt_tokens = 5;
  cold.reused_from = "";
  EXPECT_EQ(RunSummary(cold),
            "kvstash: reused 0 of 5 prompt tokens, decoded 5 in 0 ms; generated 0 tokens in 0 ms");
  cold.prompt_cache_saved = true;
  cold.save_ms = 3;
  EXPECT_NE(RunSummary(cold).find("; saved prompt cache in 3 ms"), std::string::npos);
}

}  // namespace
}  // namespace kvstash::cli
