#include "cpcsync/errors.h"

#include <cerrno>
#include <cstring>

namespace cpcsync {

void ThrowInvalid(const std::string& message) {
  throw SyncError(ErrorCode::kInvalidArgument, message);
}

std::string ErrnoMessage(int err) {
  // Not std::strerror: it may return a buffer another thread is overwriting. GNU
  // strerror_r returns the message, in `buf` or a static string.
  char buf[256];
  return ::strerror_r(err, buf, sizeof buf);
}

void ThrowErrno(const std::string& what) {
  const int err = errno;
  const std::string message = ErrnoMessage(err);
  try {
    throw SyncError(ErrorCode::kOs, message, err);
  } catch (...) {
    std::throw_with_nested(SyncError(ErrorCode::kStorage, what + ": " + message, err));
  }
}

}  // namespace cpcsync
