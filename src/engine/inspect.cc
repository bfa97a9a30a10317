#include "engine/inspect.h"

#include "engine/memory_support.h"
#include "env/env.h"
#include "format/session_format.h"

namespace kvstash::engine {

Result<SessionMemory> InspectSessionMemory(const SessionFileInfo& info) {
  const std::string& path = info.path;
  // The file was read whole once already; its own size is the bound.
  auto opened = Env::Default()->OpenStableFile(
      path, info.file_size, [&path](const uint8_t* head, size_t n, uint64_t file_size) {
        return format::CheckFileHead(head, n, file_size, path);
      });
  if (!opened.ok()) return opened.status();
  const StableFile& file = **opened;
  auto parsed = format::ParseFile(file.data(), file.size(), path, /*verify_checksums=*/false);
  const bool intact = file.Intact();
  // Anything that differs from the first read means another process replaced the file between
  // the two (a successful re-save keeps size and tokens only when it writes the same session).
  const bool same = parsed.ok() && intact && file.size() == info.file_size &&
                    parsed->kv_size == info.kv_bytes && parsed->tokens == info.tokens &&
                    parsed->meta.memory_kind == info.meta.memory_kind &&
                    parsed->meta.n_swa == info.meta.n_swa &&
                    parsed->meta.model_fingerprint == info.meta.model_fingerprint;
  if (!same) {
    return Status::IOError("session file '" + path + "' was changed by another process while " +
                           "it was inspected; run 'kvstash inspect' again once the writer is done");
  }
  SessionMemory memory;
  memory.layout = parsed->layout;
  memory.parts = DescribeParts(memory.layout);
  memory.reuse = ReuseRule(memory.layout.kind, info.meta.n_swa);
  return memory;
}

}  // namespace kvstash::engine
