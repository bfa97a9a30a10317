// CheckSaveDestination (kvstash/session.h) over env/atomic_file.h's CheckDestination.
#include <string_view>

#include "env/atomic_file.h"
#include "env/env.h"
#include "format/session_format.h"
#include "kvstash/session.h"

namespace kvstash {

Status CheckSaveDestination(const std::string& path, const SaveOptions& options,
                            const std::vector<ProtectedFile>& protected_files) {
  AtomicWriteOptions destination;
  destination.required_magic =
      std::string_view(reinterpret_cast<const char*>(format::kMagic), sizeof(format::kMagic));
  destination.replace_any = options.replace_any;
  for (const ProtectedFile& file : protected_files) {
    destination.protected_paths.push_back(file.path);
    destination.protected_names.push_back(file.name);
  }
  return CheckDestination(options.env != nullptr ? options.env : Env::Default(), path, destination);
}

}  // namespace kvstash
