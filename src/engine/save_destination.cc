// Where a session may be written: CheckSaveDestination (kvstash/session.h) and Session::Save share
// SessionWriteOptions (engine/session_internals.h), over env/atomic_file.h.
#include <string_view>

#include "engine/session_internals.h"
#include "env/atomic_file.h"
#include "env/env.h"
#include "format/session_format.h"
#include "kvstash/session.h"

namespace kvstash {

AtomicWriteOptions SessionWriteOptions(const SaveOptions& options,
                                       const std::vector<ProtectedFile>& protected_files) {
  AtomicWriteOptions write;
  write.sync = options.sync;
  write.progress = options.progress;
  write.cancel = options.cancel;
  write.required_magic =
      std::string_view(reinterpret_cast<const char*>(format::kMagic), sizeof(format::kMagic));
  write.replace_any = options.replace_any;
  for (const ProtectedFile& file : protected_files) {
    write.protected_paths.push_back(file.path);
    write.protected_names.push_back(file.name);
  }
  return write;
}

Status CheckSaveDestination(const std::string& path, const SaveOptions& options,
                            const std::vector<ProtectedFile>& protected_files) {
  return CheckDestination(Env::Default(), path, SessionWriteOptions(options, protected_files));
}

}  // namespace kvstash
