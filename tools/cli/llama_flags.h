// llama.cpp's command-line habits for kvstash's CLI, as pure functions (no CLI11, no llama.cpp) so
// that tests/llama_flags_test.cc checks them directly.
//
// llama.cpp spells many flags with several letters after one dash ("-ctk", "-ngl", "-sys"). CLI11
// reads those as bundles of one-letter flags ("-ctk q8_0" became "-c tk"), so before CLI11 sees the
// arguments, TranslateLlamaFlags renames them to kvstash's long names from one table. It renames
// only arguments that stand as flags: never the value of the option before them (--prefix -fa),
// never anything after "--". Every other argument that looks like a flag must be one the command
// declares; otherwise the translation fails with "unknown option '-xyz'" and the closest spelling.
#ifndef KVSTASH_TOOLS_CLI_LLAMA_FLAGS_H_
#define KVSTASH_TOOLS_CLI_LLAMA_FLAGS_H_

#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace kvstash::cli {

// One spelling a command accepts ("-m", "--model") and whether it takes a value.
struct FlagSpec {
  std::string name;
  bool takes_value = false;
};

// The flags of one command ("" for the top level, before any subcommand).
struct CommandSpec {
  std::string name;
  std::vector<FlagSpec> flags;
};

// A llama.cpp spelling that CLI11 cannot declare, and the kvstash flag it becomes.
struct LlamaAlias {
  const char* llama;    // "-ctk"
  const char* kvstash;  // "--cache-type-k"
  // The value llama.cpp's older flag form meant when no value follows ("-fa" alone was "on").
  const char* bare_value = nullptr;
};
const std::vector<LlamaAlias>& LlamaAliases();

struct Translation {
  std::vector<std::string> args;
  std::string error;  // empty: ok; else "unknown option '-ctx' (did you mean '-ctk'?)..."
};

// Renames llama.cpp spellings in args[1..] to kvstash's, for the command the arguments select
// (`commands` holds the top level under "" and each subcommand under its name). "-ctk=q8_0" is
// renamed too. "-n5" (one letter and a number) stays: CLI11 reads it as "-n 5".
Translation TranslateLlamaFlags(const std::vector<std::string>& args,
                                const std::vector<CommandSpec>& commands);

// The spelling in `known` nearest to `arg` by edit distance, when it is near enough to be a typo;
// "" otherwise.
std::string ClosestSpelling(std::string_view arg, const std::vector<std::string>& known);
size_t EditDistance(std::string_view a, std::string_view b);

// llama.cpp's escape processing of -p, -f and -r (common.cpp string_process_escapes): \n \r \t \'
// \" \\ and \xHH; any other backslash stays as it is.
std::string ProcessEscapes(std::string_view text);

// What llama.cpp does to a prompt file's text: it drops one trailing newline.
std::string DropTrailingNewline(std::string text);

// -ngl's value: a layer count, "all" (every layer) or "auto" (the library's default, nullopt is
// returned for a value that is none of these; `auto_value` for "auto").
std::optional<int> ParseGpuLayers(const std::string& value, int auto_value);

// The llama.cpp spellings a command accepts ("llama.cpp spellings: -ngl = --n-gpu-layers, ..."),
// in lines under 100 columns, for its --help footer; "" when it accepts none.
std::string LlamaFlagsFooter(const CommandSpec& command);

}  // namespace kvstash::cli

#endif  // KVSTASH_TOOLS_CLI_LLAMA_FLAGS_H_
