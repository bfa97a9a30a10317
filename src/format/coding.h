// Little-endian fixed-width integers and a bounds-checked reader over a byte buffer: how every
// file format in src/format encodes and decodes its integers. The host is little-endian
// (CMakeLists.txt refuses others), so a value's bytes are its encoding.
#ifndef KVSTASH_FORMAT_CODING_H_
#define KVSTASH_FORMAT_CODING_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>

namespace kvstash::format {

inline void EncodeFixed32(uint8_t* dst, uint32_t v) { std::memcpy(dst, &v, 4); }
inline void EncodeFixed64(uint8_t* dst, uint64_t v) { std::memcpy(dst, &v, 8); }

template <typename T>
void PutFixed(std::string* dst, T v) {
  dst->append(reinterpret_cast<const char*>(&v), sizeof(T));
}
inline void PutFixed16(std::string* dst, uint16_t v) { PutFixed(dst, v); }
inline void PutFixed32(std::string* dst, uint32_t v) { PutFixed(dst, v); }
inline void PutFixed64(std::string* dst, uint64_t v) { PutFixed(dst, v); }

inline uint32_t DecodeFixed32(const uint8_t* p) {
  uint32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
inline uint64_t DecodeFixed64(const uint8_t* p) {
  uint64_t v;
  std::memcpy(&v, p, 8);
  return v;
}

// A cursor over `size` bytes at `data`. A read or skip that would pass the end returns false and
// moves nothing; no byte past the end is ever read.
class ByteReader {
 public:
  ByteReader(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  bool Read(void* out, size_t n) {
    if (n > remaining()) return false;
    std::memcpy(out, data_ + pos_, n);
    pos_ += n;
    return true;
  }
  bool ReadU16(uint16_t* v) { return Read(v, sizeof *v); }
  bool ReadU32(uint32_t* v) { return Read(v, sizeof *v); }
  bool ReadI32(int32_t* v) { return Read(v, sizeof *v); }
  bool ReadU64(uint64_t* v) { return Read(v, sizeof *v); }
  bool Skip(size_t n) {
    if (n > remaining()) return false;
    pos_ += n;
    return true;
  }
  // Skips `count` records of `unit` bytes; a product that would overflow is past the end.
  bool Skip(uint64_t count, uint64_t unit) {
    if (unit != 0 && count > remaining() / unit) return false;
    pos_ += count * unit;
    return true;
  }

  size_t position() const { return pos_; }
  size_t remaining() const { return size_ - pos_; }
  const uint8_t* current() const { return data_ + pos_; }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

}  // namespace kvstash::format

#endif  // KVSTASH_FORMAT_CODING_H_
