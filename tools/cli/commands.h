// The CLI's commands. main.cc parses flags into these structs; each Run* wires the library calls
// together and prints. Return value: the process exit code (0 ok, 1 runtime failure).
#ifndef KVSTASH_TOOLS_CLI_COMMANDS_H_
#define KVSTASH_TOOLS_CLI_COMMANDS_H_

#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "kvstash/runner.h"
#include "kvstash/store.h"

namespace kvstash::cli {

struct CommonFlags {
  std::string model;
  bool json = false;
  bool verbose = false;
  std::string gpu_layers;  // -ngl as given: N, "all" or "auto"
  int n_gpu_layers = 0;    // from gpu_layers (main.cc)
};

// -c -t -tb -b -ub -fa -ctk -ctv as given (unset: the command's default); main.cc declares them.
struct ContextFlags {
  std::optional<uint32_t> n_ctx;
  int n_threads = 0;        // 0: all cores
  int n_threads_batch = 0;  // 0: as n_threads
  std::optional<uint32_t> n_batch;
  std::optional<uint32_t> n_ubatch;
  std::optional<std::string> flash_attn;  // "on", "off" or "auto" (CLI11 checks)
  std::optional<std::string> cache_type_k;
  std::optional<std::string> cache_type_v;
};

// Where the prefix store is and how a new one is made (run, save, chat).
struct StoreFlags {
  std::optional<std::string> dir;  // --cache-dir, or $KVSTASH_CACHE_DIR
  bool no_cache = false;           // --no-cache: ignore $KVSTASH_CACHE_DIR
  std::string max_bytes_text;      // --cache-max-bytes as given (main.cc parses it)
  uint64_t max_bytes = 0;          // --cache-max-bytes: evict down to this after publishing
  uint32_t chunk_tokens = 0;       // --cache-chunk: tokens per chunk of a new store
  std::string redis;               // --cache-redis URL (or $KVSTASH_CACHE_REDIS): a second tier
};

// llama.cpp's prompt flags, shared by save and run. Text from -p, -f, -sys and -r gets llama.cpp's
// escape processing unless --no-escape; -f and -sysf files lose one trailing newline, as there.
struct LlamaTextFlags {
  std::optional<std::string> system_prompt;       // -sys: the stable prefix
  std::optional<std::string> system_prompt_file;  // -sysf
  bool no_escape = false;
};

struct SaveFlags {
  CommonFlags common;
  StoreFlags store;
  std::optional<std::string> prefix;
  std::optional<std::string> prefix_file;
  LlamaTextFlags llama;
  std::string output;
  ContextFlags context;
  SessionOptions session;  // from context (main.cc)
  bool no_sync = false;
  bool force = false;  // replace an existing file that is not a session
};

struct RunFlags {
  CommonFlags common;
  StoreFlags store;
  std::optional<std::string> session;
  std::optional<std::string> prefix;
  std::optional<std::string> prefix_file;
  std::optional<std::string> prompt;
  std::optional<std::string> prompt_file;  // "-": standard input
  LlamaTextFlags llama;
  std::vector<std::string> reverse_prompts;  // -r: stop strings, escapes processed
  SampleOptions sample;
  ContextFlags context;  // -b, -ub, -ctk, -ctv: cold runs (a session keeps its own)
  std::optional<std::string> prompt_cache;  // --prompt-cache FILE
  bool prompt_cache_all = false;
  bool prompt_cache_ro = false;
};

struct InspectFlags {
  std::string session;
  bool json = false;
};

struct VerifyFlags {
  CommonFlags common;
  std::string session;
};

// kvstash cache stats|ls|gc|verify|rm
struct CacheFlags {
  std::string action;
  std::string dir;
  bool json = false;
  std::optional<std::string> max_bytes;  // gc: a byte count, with an optional K/M/G/T suffix
  std::string ns;                        // rm: one namespace (hash); empty: all
  bool all = false;                      // rm: every chunk
  std::string redis;                     // --cache-redis: stats and rm cover the Redis tier too
};

struct MakeModelFlags {
  std::string output;
  std::string shape = "tiny";
  std::string vocab;  // empty: the architecture's own (qwen2 for qwen2, spm otherwise)
  std::string type = "f16";
  uint64_t seed = 1;
  std::string arch = "llama";
};

int RunSave(const SaveFlags& flags);
int RunRun(const RunFlags& flags);
int RunInspect(const InspectFlags& flags);
int RunVerify(const VerifyFlags& flags);
int RunMakeTestModel(const MakeModelFlags& flags);
int RunCache(const CacheFlags& flags);
// -fa's value: "on", "off", anything else (CLI11 lets only "auto" through) kAuto.
FlashAttention ParseFlashAttention(const std::string& value);
// The context flags given; a flag not given leaves its option unset (the default, or as saved).
void ApplyContextFlags(const ContextFlags& flags, SessionOptions* options);
// The model of -m, with -ngl and -v applied; the error names the file.
// With `context` -fa off, loads the weights as `serve` does with flash attention off (no
// repacking, no IQ panel: one kernel path for every batch size), so that a batch-invariant build
// gives batch-invariant sessions, whose store lookups are token-exact (docs/STORE.md, "Tails").
Result<std::shared_ptr<Model>> LoadModel(const CommonFlags& flags,
                                         const ContextFlags* context = nullptr);
// The prefix store of --cache-dir (or $KVSTASH_CACHE_DIR) with its chunk size, budget and Redis
// tier; null without a directory. Its warnings go to stderr as "warning: ...".
Result<std::shared_ptr<Store>> OpenStore(const StoreFlags& flags, bool create);
// Refuses `output` for a session file, before the model loads: one of `protected_files`, or
// without `force` a file that is not a session (CheckSaveDestination).
Status CheckSessionOutput(const std::string& output, bool force,
                          const std::vector<ProtectedFile>& protected_files);
// "512M" -> 536870912 (K, M, G, T: powers of 1024); InvalidArgument naming `flag` otherwise.
Result<uint64_t> ParseByteCount(const std::string& text, const char* flag);
std::string VersionText();

// Prints "error: <message>" on stderr (and, after SetJsonErrors(true), one JSON object
// {"error": {"code", "message"}} on stdout). Returns 1, or 128 + the signal for a cancellation.
int Fail(const Status& status);
// Fail for a usage error: the same output with code "usage"; returns 2.
int UsageError(const std::string& message);
void SetJsonErrors(bool on);
// From here on SIGINT and SIGTERM set CancelFlag() and SignalCaught(): a save stops (the old file
// stays), a generation stops (what was generated is printed), exit code 130 or 143; a second one
// before ClearSignal() ends the process. `restart_calls` false: a signal interrupts a blocking call
// (chat's prompt). Commands without these handlers have nothing to clean up (exit at once).
void InstallSignalHandlers(bool restart_calls = true);
// The flag the handlers set, for the library's `cancel` options.
std::atomic<bool>& CancelFlag();
// The signal caught since the last ClearSignal(), 0 if none.
int SignalCaught();
// Forgets a caught signal: the next one stops the next step again instead of the process.
void ClearSignal();
// Flushes and closes stdout. A write to it that failed, now or before, turns `rc` 0 into 1 with an
// error line: output that did not arrive is not a success.
int FinishStdout(int rc);

}  // namespace kvstash::cli

#endif  // KVSTASH_TOOLS_CLI_COMMANDS_H_
