#include "engine/fingerprint.h"

#include <xxhash.h>

#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "env/env.h"
#include "ggml.h"

namespace kvstash::engine {
namespace {

constexpr size_t kSampleBytes = 4096;

// GGUF's value types (ggml/include/gguf.h, enum gguf_type), by their fixed sizes.
size_t ScalarSize(uint32_t type) {
  switch (type) {
    case 0:
    case 1:
    case 7:
      return 1;  // u8, i8, bool
    case 2:
    case 3:
      return 2;  // u16, i16
    case 4:
    case 5:
    case 6:
      return 4;  // u32, i32, f32
    case 10:
    case 11:
    case 12:
      return 8;  // u64, i64, f64
    default:
      return 0;  // 8: string, 9: array, else unknown
  }
}

// Walks a GGUF header in place: no allocation per key or string, which is what makes the
// fingerprint cheap next to llama.cpp's own load of a 128k-token vocabulary.
class GgufWalker {
 public:
  GgufWalker(const uint8_t* data, size_t size) : p_(data), end_(data + size), begin_(data) {}
  bool U32(uint32_t* v) { return Read(v, 4); }
  bool U64(uint64_t* v) { return Read(v, 8); }
  bool Skip(uint64_t n) {
    if (n > static_cast<uint64_t>(end_ - p_)) return false;
    p_ += n;
    return true;
  }
  bool String(const uint8_t** s, uint64_t* len) {
    if (!U64(len)) return false;
    *s = p_;
    return Skip(*len);
  }
  bool SkipValue(uint32_t type, int depth = 0) {
    if (const size_t size = ScalarSize(type)) return Skip(size);
    if (type == 8) {
      uint64_t len;
      return U64(&len) && Skip(len);
    }
    if (type != 9 || depth > 0) return false;  // nested arrays do not occur in GGUF files
    uint32_t element_type;
    uint64_t count;
    if (!U32(&element_type) || !U64(&count)) return false;
    if (const size_t size = ScalarSize(element_type)) {
      return count <= UINT64_MAX / size && Skip(count * size);
    }
    for (uint64_t i = 0; i < count; ++i) {
      if (!SkipValue(element_type, depth + 1)) return false;
    }
    return true;
  }
  size_t offset() const { return static_cast<size_t>(p_ - begin_); }

 private:
  bool Read(void* v, size_t n) {
    if (static_cast<size_t>(end_ - p_) < n) return false;
    std::memcpy(v, p_, n);
    p_ += n;
    return true;
  }
  const uint8_t* p_;
  const uint8_t* end_;
  const uint8_t* begin_;
};

struct TensorSpan {
  uint64_t offset;  // from the start of the data section
  uint64_t size;
};

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
  auto mapped = Env::Default()->MapFile(path, UINT64_MAX);
  if (!mapped.ok()) return mapped.status();
  const uint8_t* data = (*mapped)->data();
  const size_t size = (*mapped)->size();
  auto bad = [&](const std::string& why) {
    return Status::Corruption("model '" + path + "' is not a valid GGUF file (" + why + ")");
  };

  GgufWalker walker(data, size);
  uint32_t magic, version;
  uint64_t n_tensors, n_kv;
  if (!walker.U32(&magic) || std::memcmp(&magic, "GGUF", 4) != 0) return bad("wrong magic");
  if (!walker.U32(&version) || version < 2 || !walker.U64(&n_tensors) || !walker.U64(&n_kv)) {
    return bad("unsupported header");
  }
  uint64_t alignment = 32;  // GGUF_DEFAULT_ALIGNMENT
  for (uint64_t i = 0; i < n_kv; ++i) {
    const uint8_t* key;
    uint64_t key_len;
    uint32_t type;
    if (!walker.String(&key, &key_len) || !walker.U32(&type)) return bad("metadata cut short");
    if (key_len == 17 && std::memcmp(key, "general.alignment", 17) == 0 && type == 4) {
      uint32_t value;
      if (!walker.U32(&value) || value == 0) return bad("bad alignment");
      alignment = value;
      continue;
    }
    if (!walker.SkipValue(type)) return bad("metadata value cut short");
  }
  // A tensor record takes at least 24 bytes: refuse counts the file cannot hold before allocating.
  if (n_tensors > size / 24) return bad("tensor count exceeds the file");
  std::vector<TensorSpan> spans(n_tensors);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    const uint8_t* name;
    uint64_t name_len;
    uint32_t n_dims, type;
    if (!walker.String(&name, &name_len) || !walker.U32(&n_dims) || n_dims == 0 || n_dims > 4) {
      return bad("tensor table cut short");
    }
    int64_t ne[4] = {1, 1, 1, 1};
    for (uint32_t d = 0; d < n_dims; ++d) {
      uint64_t dim;
      if (!walker.U64(&dim) || dim == 0 || dim > (uint64_t{1} << 40))
        return bad("bad tensor shape");
      ne[d] = static_cast<int64_t>(dim);
    }
    if (!walker.U32(&type) || type >= GGML_TYPE_COUNT || ggml_blck_size(ggml_type(type)) == 0 ||
        ne[0] % ggml_blck_size(ggml_type(type)) != 0) {
      return bad("bad tensor type");
    }
    uint64_t offset;
    if (!walker.U64(&offset)) return bad("tensor table cut short");
    spans[i] = {offset, ggml_row_size(ggml_type(type), ne[0]) * uint64_t(ne[1]) * uint64_t(ne[2]) *
                            uint64_t(ne[3])};
  }
  const uint64_t data_offset = (walker.offset() + alignment - 1) / alignment * alignment;
  if (data_offset > size) return bad("no tensor data");

  XXH3_state_t* state = XXH3_createState();
  std::unique_ptr<XXH3_state_t, decltype(&XXH3_freeState)> state_owner(state, XXH3_freeState);
  XXH3_128bits_reset(state);
  XXH3_128bits_update(state, data, data_offset);
  for (uint64_t i = 0; i < n_tensors; ++i) {
    const uint64_t begin = data_offset + spans[i].offset;
    const uint64_t len = spans[i].size;
    if (spans[i].offset > size || begin > size || len > size - begin) {
      return Status::Corruption("model '" + path + "' is truncated: a tensor lies past its end");
    }
    const uint64_t sample = len < kSampleBytes ? len : kSampleBytes;
    for (uint64_t start : {begin, begin + (len - sample) / 2, begin + len - sample}) {
      XXH3_128bits_update(state, data + start, sample);
    }
  }
  if ((*mapped)->damaged()) {
    return Status::IOError("model '" + path + "' was truncated while it was read");
  }
  const XXH128_hash_t hash = XXH3_128bits_digest(state);
  XXH128_canonical_t canonical;
  XXH128_canonicalFromHash(&canonical, hash);
  ModelFingerprint fingerprint;
  std::memcpy(fingerprint.bytes, canonical.digest, sizeof(fingerprint.bytes));
  return fingerprint;
}

}  // namespace kvstash::engine
