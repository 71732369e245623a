#include "cpcsync/errors.h"

#include <cerrno>
#include <cstring>

namespace cpcsync {

void ThrowInvalid(const std::string& message) {
  throw SyncError(ErrorCode::kInvalidArgument, message);
}

void ThrowErrno(const std::string& what) {
  const int err = errno;
  throw SyncError(ErrorCode::kOs, what + ": " + std::strerror(err), err);
}

}  // namespace cpcsync
