// `kvstash import`: a kvstash session from llama.cpp's own state files.
#ifndef KVSTASH_TOOLS_CLI_IMPORT_COMMAND_H_
#define KVSTASH_TOOLS_CLI_IMPORT_COMMAND_H_

#include <string>

#include "commands.h"

namespace kvstash::cli {

struct ImportFlags {
  CommonFlags common;
  std::string input;
  std::string output;
  ContextFlags context;  // -c, -t, -b, -ub: recorded for the session
  bool no_sync = false;
  bool force = false;  // replace an existing -o that is not a session
};

int RunImport(const ImportFlags& flags);

}  // namespace kvstash::cli

#endif  // KVSTASH_TOOLS_CLI_IMPORT_COMMAND_H_
