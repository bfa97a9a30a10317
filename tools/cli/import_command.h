// `kvstash import`: a kvstash session from llama.cpp's own state files (engine/import.h).
#ifndef KVSTASH_TOOLS_CLI_IMPORT_COMMAND_H_
#define KVSTASH_TOOLS_CLI_IMPORT_COMMAND_H_

#include <string>

#include "commands.h"
#include "engine/import.h"

namespace kvstash::cli {

struct ImportFlags {
  CommonFlags common;
  std::string input;
  std::string output;
  engine::ImportOptions import;
  bool no_sync = false;
  bool force = false;  // replace an existing -o that is not a session
};

int RunImport(const ImportFlags& flags);

}  // namespace kvstash::cli

#endif  // KVSTASH_TOOLS_CLI_IMPORT_COMMAND_H_
