// What kvstash does to the whole process, and how a host program controls it
// (docs/LIBRARY.md, "Process-wide effects"). Call these before the first model load or session
// open if the defaults do not suit; both are thread-safe and may be called again later.
#ifndef KVSTASH_PROCESS_H_
#define KVSTASH_PROCESS_H_

namespace kvstash {

// llama.cpp logs through one process-wide callback. On the first model load kvstash installs its
// own, to read the reason of a failed llama.cpp call, and passes each line on as this says.
enum class LlamaLogs {
  // To the callback installed before kvstash's: the host's own, else llama.cpp's default (which
  // prints to stderr). The default, so that kvstash does not change a host's logging.
  kHost,
  kQuiet,   // nowhere (the kvstash CLI without -v)
  kStderr,  // to stderr
};
// Without a call, the default comes from the environment variable KVSTASH_LLAMA_LOGS
// (host, quiet or stderr), else kHost.
void SetLlamaLogs(LlamaLogs mode);

// kvstash maps session files and chunks, and installs a SIGBUS handler (chained to the previous
// one) on the first mapping, so that a file truncated under it is an error instead of a crash.
// false: no handler is installed from now on, and files are read into memory instead of mapped
// (a little slower for large files). Default: true.
void SetSigbusGuard(bool enabled);

}  // namespace kvstash

#endif  // KVSTASH_PROCESS_H_
