#include "llama_flags.h"

#include <algorithm>
#include <cctype>
#include <cstdlib>

namespace kvstash::cli {
namespace {

// The entry of `items` whose `field` is `name`, or nullptr.
template <typename T, typename Field>
const T* FindBy(const std::vector<T>& items, Field T::*field, std::string_view name) {
  for (const T& item : items) {
    if (item.*field == name) return &item;
  }
  return nullptr;
}

const FlagSpec* FindFlag(const CommandSpec& command, std::string_view name) {
  return FindBy(command.flags, &FlagSpec::name, name);
}

// "5", "-1", "0.8": the value of "-n5"; anything else after one letter is not a value llama.cpp or
// kvstash users attach ("-ctx" is a mistyped flag, not "-c tx").
bool IsNumber(std::string_view text) {
  if (text.empty()) return false;
  char* end = nullptr;
  const std::string copy(text);
  std::strtod(copy.c_str(), &end);
  return end == copy.c_str() + copy.size();
}

// Every spelling `command` accepts, llama.cpp's included, for suggestions.
std::vector<std::string> KnownSpellings(const CommandSpec& command) {
  std::vector<std::string> known;
  for (const FlagSpec& flag : command.flags) known.push_back(flag.name);
  for (const LlamaAlias& alias : LlamaAliases()) {
    if (FindFlag(command, alias.kvstash) != nullptr) known.push_back(alias.llama);
  }
  return known;
}

std::string UnknownOption(const std::string& name, const CommandSpec& command) {
  std::string message = "unknown option '" + name + "'";
  if (!command.name.empty()) message += " for '" + command.name + "'";
  const std::string near = ClosestSpelling(name, KnownSpellings(command));
  if (!near.empty()) message += " (did you mean '" + near + "'?)";
  return message + "; run with --help for the flags";
}

}  // namespace

const std::vector<LlamaAlias>& LlamaAliases() {
  // llama.cpp's common/arg.cpp spellings with one dash and several letters. Its long spellings
  // (--predict, --temperature, --gpu-layers, ...) and one-letter ones (-r, -e) are declared to
  // CLI11 directly.
  static const std::vector<LlamaAlias> aliases = {
      {"-ngl", "--n-gpu-layers"},
      {"-ctk", "--cache-type-k"},
      {"-ctv", "--cache-type-v"},
      {"-fa", "--flash-attn", "on"},  // older llama.cpp: "-fa" took no value and meant on
      {"-ub", "--ubatch-size"},
      {"-tb", "--threads-batch"},
      {"-np", "--parallel"},
      {"-sys", "--system-prompt"},
      {"-sysf", "--system-prompt-file"},
      {"-cnv", "--conversation"},
      {"-no-cnv", "--no-conversation"},
  };
  return aliases;
}

Translation TranslateLlamaFlags(const std::vector<std::string>& args,
                                const std::vector<CommandSpec>& commands) {
  Translation out;
  const CommandSpec* command = FindBy(commands, &CommandSpec::name, "");
  static const CommandSpec kEmpty;
  if (command == nullptr) command = &kEmpty;
  bool is_value = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (i == 0 || is_value) {  // the program name, or the value of the flag before
      out.args.push_back(arg);
      is_value = false;
      continue;
    }
    if (arg == "--") {
      out.args.insert(out.args.end(), args.begin() + i, args.end());
      break;
    }
    if (arg.size() < 2 || arg[0] != '-') {  // a positional argument ("-" is one too: stdin)
      if (command->name.empty()) {
        const CommandSpec* sub = FindBy(commands, &CommandSpec::name, arg);
        if (sub == nullptr) {  // not a command: CLI11 says so, with its list of commands
          out.args.insert(out.args.end(), args.begin() + i, args.end());
          break;
        }
        command = sub;
      }
      out.args.push_back(arg);
      continue;
    }
    const size_t eq = arg.find('=');
    std::string name = arg.substr(0, eq);
    const LlamaAlias* alias = FindBy(LlamaAliases(), &LlamaAlias::llama, name);
    if (alias != nullptr && FindFlag(*command, alias->kvstash) != nullptr) name = alias->kvstash;
    const FlagSpec* flag = FindFlag(*command, name);
    if (flag != nullptr) {
      const bool has_value = eq != std::string::npos;
      const bool next_is_flag = i + 1 >= args.size() || args[i + 1].rfind("-", 0) == 0;
      if (alias != nullptr && alias->bare_value != nullptr && !has_value && next_is_flag) {
        out.args.push_back(name + "=" + alias->bare_value);
        continue;
      }
      if (has_value && name[1] != '-') {  // "-n=5": CLI11 reads "-n" "5" (llama.cpp no '=')
        out.args.push_back(name);
        out.args.push_back(arg.substr(eq + 1));
      } else {
        out.args.push_back(has_value ? name + arg.substr(eq) : name);
      }
      is_value = flag->takes_value && !has_value;
      continue;
    }
    // "-n5", "-c4096": one letter with its number attached, as CLI11 reads it.
    const FlagSpec* letter = arg[1] != '-' ? FindFlag(*command, arg.substr(0, 2)) : nullptr;
    if (letter != nullptr && letter->takes_value && eq == std::string::npos &&
        IsNumber(std::string_view(arg).substr(2))) {
      out.args.push_back(arg);
      continue;
    }
    out.error = UnknownOption(arg.substr(0, eq), *command);
    return out;
  }
  return out;
}

size_t EditDistance(std::string_view a, std::string_view b) {
  // Optimal string alignment: insertions, deletions, substitutions and swaps of neighbours
  // ("--tmep") each cost one.
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.size()][b.size()];
}

std::string ClosestSpelling(std::string_view arg, const std::vector<std::string>& known) {
  // A typo is a few edits in a long name: one in up to five letters ("-ctx" -> "-ctk"), then one
  // more per three letters. The dashes count as letters of the edit but not of the length, so
  // "-temp" finds "--temp" while "-xyz" finds nothing.
  const size_t letters = arg.size() - std::min(arg.find_first_not_of('-'), arg.size());
  const size_t allowed = letters < 3 ? 0 : 1 + (letters > 5 ? (letters - 3) / 3 : 0);
  std::string best;
  size_t best_distance = allowed + 1;
  for (const std::string& candidate : known) {
    const size_t distance = EditDistance(arg, candidate);
    if (distance < best_distance) {
      best = candidate;
      best_distance = distance;
    }
  }
  return best;
}

std::string ProcessEscapes(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (size_t i = 0; i < text.size(); ++i) {
    if (text[i] != '\\' || i + 1 == text.size()) {
      out += text[i];
      continue;
    }
    const char c = text[++i];
    switch (c) {
      case 'n':
        out += '\n';
        continue;
      case 'r':
        out += '\r';
        continue;
      case 't':
        out += '\t';
        continue;
      case '\'':
      case '"':
      case '\\':
        out += c;
        continue;
      case 'x':
        // Exactly two hex digits, as llama.cpp reads them (strtol, so "\x+1" is not one).
        if (i + 2 < text.size() && std::isxdigit(static_cast<unsigned char>(text[i + 1])) &&
            std::isxdigit(static_cast<unsigned char>(text[i + 2]))) {
          out += static_cast<char>(
              std::strtol(std::string(text.substr(i + 1, 2)).c_str(), nullptr, 16));
          i += 2;
          continue;
        }
        break;
      default:
        break;
    }
    out += '\\';
    out += c;
  }
  return out;
}

std::string DropTrailingNewline(std::string text) {
  if (!text.empty() && text.back() == '\n') text.pop_back();
  return text;
}

std::optional<int> ParseGpuLayers(const std::string& value, int auto_value) {
  if (value == "auto") return auto_value;
  // llama.cpp's "all" is every layer; a count above the model's layer count means the same.
  if (value == "all") return 9999;
  if (value.empty() || value.size() > 6 || value.find_first_not_of("0123456789") != value.npos) {
    return std::nullopt;
  }
  return std::atoi(value.c_str());
}

std::string LlamaFlagsFooter(const CommandSpec& command) {
  std::string footer, line;
  for (const LlamaAlias& alias : LlamaAliases()) {
    if (FindFlag(command, alias.kvstash) == nullptr) continue;
    const std::string item = std::string(alias.llama) + " = " + alias.kvstash;
    if (line.empty()) {
      line = "llama.cpp spellings: " + item;
    } else if (line.size() + 2 + item.size() > 98) {  // --help's other lines stay under 100
      footer += line + ",\n";
      line = "  " + item;
    } else {
      line += ", " + item;
    }
  }
  return line.empty() ? footer : footer + line + ".";
}

}  // namespace kvstash::cli
