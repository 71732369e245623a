#include "cpcsync/errors.h"

#include <gtest/gtest.h>

#include <cerrno>

#include "cpcsync/sync_queue.h"

namespace cpcsync {
namespace {

TEST(Errors, ErrnoIsKeptWithTheMessage) {
  errno = ENOENT;
  try {
    ThrowErrno("open x");
    FAIL();
  } catch (const SyncError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kStorage);
    EXPECT_EQ(e.sys_errno(), ENOENT);
    EXPECT_NE(std::string(e.what()).find("open x"), std::string::npos);
    try {
      std::rethrow_if_nested(e);
      FAIL() << "no nested OS error";
    } catch (const SyncError& cause) {
      EXPECT_EQ(cause.code(), ErrorCode::kOs);
    }
  }
}

TEST(Errors, StorageErrorsNestTheirCause) {
  try {
    SyncQueue::Open("/nonexistent-dir-cpcsync/q.db", SqliteOptions{}, Limits{}, nullptr);
    FAIL();
  } catch (const SyncError& e) {
    EXPECT_EQ(e.code(), ErrorCode::kStorage);
    try {
      std::rethrow_if_nested(e);
      FAIL() << "no nested cause";
    } catch (const SyncError& cause) {
      EXPECT_EQ(cause.code(), ErrorCode::kOs);
      EXPECT_EQ(cause.sys_errno(), ENOENT);
    }
  }
}

}  // namespace
}  // namespace cpcsync
