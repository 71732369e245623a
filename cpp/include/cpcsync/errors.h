// Errors: every failure cpcsync reports is a SyncError with a code.
//
// The Python bindings map each code onto a class of the cpcsync.SyncError
// hierarchy; a SyncError thrown with std::throw_with_nested keeps its cause (an
// SQLite or OS error), which becomes the Python exception's __cause__.
#pragma once

#include <stdexcept>
#include <string>

namespace cpcsync {

enum class ErrorCode {
  kStorage,          // I/O or SQLite failure
  kCorrupt,          // the file is a damaged database
  kNotAQueue,        // the file is not a cpcsync queue (or of a newer schema)
  kQueueFull,        // capacity limit with overflow="reject"
  kQueueLocked,      // another handle is the consumer
  kClosed,           // the object was closed
  kInvalidArgument,  // bad input from the caller
  kOperationState,   // ack/retry of an op that is not in the required state
  kOs,               // an operating-system call failed (errno in sys_errno)
  kSqlite,           // an SQLite call failed (code in sqlite_code)
};

class SyncError : public std::runtime_error {
 public:
  SyncError(ErrorCode code, const std::string& message, int sys_errno = 0, int sqlite_code = 0)
      : std::runtime_error(message), code_(code), sys_errno_(sys_errno), sqlite_code_(sqlite_code) {}
  ErrorCode code() const { return code_; }
  int sys_errno() const { return sys_errno_; }
  int sqlite_code() const { return sqlite_code_; }

 private:
  ErrorCode code_;
  int sys_errno_;
  int sqlite_code_;
};

// Throws SyncError(kInvalidArgument, message).
[[noreturn]] void ThrowInvalid(const std::string& message);
// The text for an errno value (thread-safe, unlike std::strerror).
std::string ErrnoMessage(int err);
// Throws SyncError(kStorage, "<what>: <strerror>") nesting SyncError(kOs) for errno.
// (The message comes from ErrnoMessage.)
[[noreturn]] void ThrowErrno(const std::string& what);

}  // namespace cpcsync
