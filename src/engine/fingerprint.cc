#include "engine/fingerprint.h"

#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <cstring>
#include <memory>
#include <vector>

#include "env/env.h"
#include "gguf.h"

namespace kvstash::engine {
namespace {

constexpr size_t kSampleBytes = 4096;

struct FdCloser {
  int fd;
  ~FdCloser() {
    if (fd >= 0) close(fd);
  }
};

bool ReadAt(int fd, uint64_t offset, size_t n, std::vector<uint8_t>* out) {
  out->resize(n);
  size_t done = 0;
  while (done < n) {
    const ssize_t got = pread(fd, out->data() + done, n - done, static_cast<off_t>(offset + done));
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) return false;
    done += static_cast<size_t>(got);
  }
  return true;
}

}  // namespace

std::string HexOf(const uint8_t* bytes, size_t n) {
  static const char* kDigits = "0123456789abcdef";
  std::string hex;
  for (size_t i = 0; i < n; ++i) {
    hex.push_back(kDigits[bytes[i] >> 4]);
    hex.push_back(kDigits[bytes[i] & 15]);
  }
  return hex;
}

Result<ModelFingerprint> FingerprintGguf(const std::string& path) {
  gguf_init_params params = {/*no_alloc=*/true, /*ctx=*/nullptr};
  std::unique_ptr<gguf_context, decltype(&gguf_free)> gguf(gguf_init_from_file(path.c_str(), params),
                                                           gguf_free);
  if (!gguf) return Status::Corruption("model '" + path + "' is not a readable GGUF file");
  FdCloser file{open(path.c_str(), O_RDONLY | O_CLOEXEC)};
  if (file.fd < 0) return Status::IOError("cannot open model '" + path + "': " + ErrnoText(errno));

  XXH3_state_t* state = XXH3_createState();
  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> state_owner(state, XXH3_freeState);
  XXH3_128bits_reset(state);

  const size_t data_offset = gguf_get_data_offset(gguf.get());
  std::vector<uint8_t> buffer;
  if (!ReadAt(file.fd, 0, data_offset, &buffer)) {
    return Status::IOError("cannot read model '" + path + "' header");
  }
  XXH3_128bits_update(state, buffer.data(), buffer.size());

  const int64_t n_tensors = gguf_get_n_tensors(gguf.get());
  for (int64_t i = 0; i < n_tensors; ++i) {
    const uint64_t begin = data_offset + gguf_get_tensor_offset(gguf.get(), i);
    const uint64_t size = gguf_get_tensor_size(gguf.get(), i);
    const uint64_t sample = size < kSampleBytes ? size : kSampleBytes;
    const uint64_t starts[3] = {begin, begin + (size - sample) / 2, begin + size - sample};
    for (uint64_t start : starts) {
      if (!ReadAt(file.fd, start, sample, &buffer)) {
        return Status::Corruption("model '" + path + "' is truncated: tensor '" +
                                  gguf_get_tensor_name(gguf.get(), i) + "' lies past its end");
      }
      XXH3_128bits_update(state, buffer.data(), buffer.size());
    }
  }
  const XXH128_hash_t hash = XXH3_128bits_digest(state);
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash(&canonical, hash);
  ModelFingerprint fingerprint;
  std::memcpy(fingerprint.bytes, canonical.digest, sizeof(fingerprint.bytes));
  return fingerprint;
}

}  // namespace kvstash::engine
