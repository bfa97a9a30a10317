// kvstash chat: flags (filled by main.cc) and the command. The conversation itself is
// kvstash::Chat (include/kvstash/chat.h); this is terminal and pipe wiring.
#ifndef KVSTASH_TOOLS_CLI_CHAT_COMMAND_H_
#define KVSTASH_TOOLS_CLI_CHAT_COMMAND_H_

#include <optional>
#include <string>

#include "commands.h"

namespace kvstash::cli {

struct ChatFlags {
  CommonFlags common;
  StoreFlags store;
  std::optional<std::string> session;        // saved after every turn, resumed at start
  std::optional<std::string> system_prompt;  // -sys, --system-prompt
  std::string chat_template;                 // "": the saved one, else the model's
  SampleOptions sample;
  ContextFlags context;  // -c, -t, -fa
};

int RunChat(const ChatFlags& flags);

}  // namespace kvstash::cli

#endif  // KVSTASH_TOOLS_CLI_CHAT_COMMAND_H_
