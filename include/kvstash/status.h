// Status and Result<T>: how every kvstash call reports failure.
//
// No exception crosses a kvstash API boundary. A failed call returns a Status whose message is one
// sentence a user can act on: it names the object (file, model, field), the cause, and the fix.
// Example: "session 'a.kvs' was saved with cache type K=f16, this context uses q8_0: open without
// --cache-type-k or re-save the session".
#ifndef KVSTASH_STATUS_H_
#define KVSTASH_STATUS_H_

#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <utility>

namespace kvstash {

class [[nodiscard]] Status {
 public:
  enum class Code {
    kOk = 0,
    kInvalidArgument,  // the caller asked for something impossible (bad flag, bad text)
    kNotFound,         // a file or model is missing
    kCorruption,       // a file's bytes are wrong: bad magic, checksum, truncated, hostile
    kIncompatible,     // a valid session that does not fit this model or context
    kIOError,          // the operating system refused (ENOSPC, EIO, EACCES, ...)
    kContextFull,      // the context has no room for more tokens
    kInternal,         // llama.cpp failed where kvstash's own checks said it would not
    kCancelled,        // the caller asked to stop (e.g. a signal); nothing was left half done
  };

  Status() = default;
  static Status Ok() { return Status(); }
  static Status InvalidArgument(std::string msg) {
    return Status(Code::kInvalidArgument, std::move(msg));
  }
  static Status NotFound(std::string msg) { return Status(Code::kNotFound, std::move(msg)); }
  static Status Corruption(std::string msg) { return Status(Code::kCorruption, std::move(msg)); }
  static Status Incompatible(std::string msg) {
    return Status(Code::kIncompatible, std::move(msg));
  }
  static Status IOError(std::string msg) { return Status(Code::kIOError, std::move(msg)); }
  static Status ContextFull(std::string msg) { return Status(Code::kContextFull, std::move(msg)); }
  static Status Internal(std::string msg) { return Status(Code::kInternal, std::move(msg)); }
  static Status Cancelled(std::string msg) { return Status(Code::kCancelled, std::move(msg)); }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  // The same code with `more` appended to the message (for a failure that had a consequence).
  Status WithMore(const std::string& more) const { return Status(code_, message_ + more); }
  // "ok" or the message; for logs and CLI output.
  std::string ToString() const { return ok() ? "ok" : message_; }

 private:
  Status(Code code, std::string msg) : code_(code), message_(std::move(msg)) {}
  Code code_ = Code::kOk;
  std::string message_;
};

namespace internal {
// A broken contract of Result (a programming error, not bad input): print why and stop, in every
// build type, rather than read an empty optional.
[[noreturn]] inline void ResultContractViolated(const char* what, const Status& status) {
  std::fprintf(stderr, "kvstash: %s (status: %s)\n", what, status.ToString().c_str());
  std::abort();
}
}  // namespace internal

// A value or the Status that explains why there is none. Accessing the value of a failed Result,
// or making a Result from an ok Status (which would hold neither), stops the program with a
// message in every build type: both are bugs in the caller, never a reaction to input.
template <typename T>
class [[nodiscard]] Result {
 public:
  Result(T value) : value_(std::move(value)) {}         // NOLINT: implicit by design
  Result(Status status) : status_(std::move(status)) {  // NOLINT: implicit by design
    if (status_.ok()) internal::ResultContractViolated("Result made from an ok Status", status_);
  }

  bool ok() const { return status_.ok(); }
  const Status& status() const { return status_; }

  T& value() & { return *Checked(); }
  const T& value() const& { return *Checked(); }
  T&& value() && { return std::move(*Checked()); }
  T* operator->() { return &*Checked(); }
  const T* operator->() const { return &*Checked(); }
  T& operator*() & { return *Checked(); }
  const T& operator*() const& { return *Checked(); }

 private:
  std::optional<T>& Checked() {
    if (!value_) internal::ResultContractViolated("value() of a failed Result", status_);
    return value_;
  }
  const std::optional<T>& Checked() const {
    if (!value_) internal::ResultContractViolated("value() of a failed Result", status_);
    return value_;
  }
  Status status_;
  std::optional<T> value_;
};

}  // namespace kvstash

// Returns early from the enclosing function when `expr` (a Status) failed.
#define KVSTASH_RETURN_IF_ERROR(expr)                  \
  do {                                                 \
    ::kvstash::Status kvstash_status_ = (expr);        \
    if (!kvstash_status_.ok()) return kvstash_status_; \
  } while (0)

#endif  // KVSTASH_STATUS_H_
