// The CLI's commands. main.cc parses flags into these structs; each Run* wires the library calls
// together and prints. Return value: the process exit code (0 ok, 1 runtime failure).
#ifndef KVSTASH_TOOLS_CLI_COMMANDS_H_
#define KVSTASH_TOOLS_CLI_COMMANDS_H_

#include <optional>
#include <string>
#include <vector>

#include "kvstash/runner.h"

namespace kvstash::cli {

struct CommonFlags {
  std::string model;
  bool json = false;
  bool verbose = false;
};

struct SaveFlags {
  CommonFlags common;
  std::optional<std::string> prefix;
  std::optional<std::string> prefix_file;
  std::string output;
  SessionOptions session;
  bool no_sync = false;
};

struct RunFlags {
  CommonFlags common;
  std::optional<std::string> session;
  std::optional<std::string> prefix;
  std::optional<std::string> prefix_file;
  std::optional<std::string> prompt;
  std::optional<std::string> prompt_file;
  SampleOptions sample;
  std::optional<uint32_t> n_ctx;
  int n_threads = 0;
  std::optional<std::string> flash_attn;
  std::optional<std::string> cache_type_k;
  std::optional<std::string> cache_type_v;
};

struct InspectFlags {
  std::string session;
  bool json = false;
};

struct VerifyFlags {
  CommonFlags common;
  std::string session;
};

struct MakeModelFlags {
  std::string output;
  std::string shape = "tiny";
  std::string vocab = "spm";
  std::string type = "f16";
  uint64_t seed = 1;
};

int RunSave(const SaveFlags& flags);
int RunRun(const RunFlags& flags);
int RunInspect(const InspectFlags& flags);
int RunVerify(const VerifyFlags& flags);
int RunMakeTestModel(const MakeModelFlags& flags);
std::string VersionText();

// Prints "error: <message>" on stderr and returns 1.
int Fail(const Status& status);

}  // namespace kvstash::cli

#endif  // KVSTASH_TOOLS_CLI_COMMANDS_H_
