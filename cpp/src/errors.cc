#include "cpcsync/errors.h"

#include <cerrno>
#include <cstring>

namespace cpcsync {

void ThrowInvalid(const std::string& message) {
  throw SyncError(ErrorCode::kInvalidArgument, message);
}

void ThrowErrno(const std::string& what) {
  const int err = errno;
  try {
    throw SyncError(ErrorCode::kOs, std::strerror(err), err);
  } catch (...) {
    std::throw_with_nested(SyncError(ErrorCode::kStorage, what + ": " + std::strerror(err), err));
  }
}

}  // namespace cpcsync
