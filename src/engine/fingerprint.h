// Model fingerprints (see ModelFingerprint in include/kvstash/model.h and docs/FORMAT.md).
#ifndef KVSTASH_ENGINE_FINGERPRINT_H_
#define KVSTASH_ENGINE_FINGERPRINT_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "kvstash/model.h"
#include "kvstash/status.h"

namespace kvstash::engine {

// xxh3-128 over: the GGUF bytes before the tensor data (header, every metadata key and value, the
// tensor table) and, for every tensor, three 4 KiB samples of its data (start, middle, end).
// Content only: a copy of the file elsewhere has the same fingerprint; a model with the same
// shape but other weights does not. Reads a few MiB at most, whatever the model size.
Result<ModelFingerprint> FingerprintGguf(const std::string& path);

// Lower-case hex of `n` bytes.
std::string HexOf(const uint8_t* bytes, size_t n);

}  // namespace kvstash::engine

#endif  // KVSTASH_ENGINE_FINGERPRINT_H_
