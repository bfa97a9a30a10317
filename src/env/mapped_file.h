// A read-only mapping of a whole file whose lost pages (the file truncated underneath) raise no
// SIGBUS: a process-wide handler, installed once, maps a zero page in their place and marks the
// mapping damaged(). Internal to src/env.
#ifndef KVSTASH_ENV_MAPPED_FILE_H_
#define KVSTASH_ENV_MAPPED_FILE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "env/env.h"

namespace kvstash {

struct GuardSlot;

class PosixMappedFile : public MappedFile {
 public:
  PosixMappedFile(const uint8_t* data, size_t size) : data_(data), size_(size) {}
  ~PosixMappedFile() override;

  // Registers the mapping with the SIGBUS guard; false if the table is full (then the file is
  // not used mapped: the caller falls back to an error rather than risk a signal).
  bool Guard();

  const uint8_t* data() const override { return data_; }
  size_t size() const override { return size_; }
  bool damaged() const override { return damaged_.load(std::memory_order_acquire); }

 private:
  const uint8_t* data_;
  size_t size_;
  std::atomic<bool> damaged_{false};
  GuardSlot* slot_ = nullptr;
};

}  // namespace kvstash

#endif  // KVSTASH_ENV_MAPPED_FILE_H_
