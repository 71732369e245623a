#include "counting_vfs.h"

#include "shim_vfs.h"

namespace cpcsync::testing {
namespace {

class CountingVfs final : public ShimVfs {
 public:
  CountingVfs() : ShimVfs("cpcsync-counting") { MakeDefault(); }
  int Sync(File& f, int flags) override {
    ((f.flags & SQLITE_OPEN_WAL) ? counts.wal : counts.db)++;
    return ShimVfs::Sync(f, flags);
  }
  SyncCounts counts;
};

}  // namespace

SyncCounts& InstallCountingVfs() {
  static CountingVfs vfs;
  vfs.MakeDefault();  // again, in case another shim took over meanwhile
  return vfs.counts;
}

}  // namespace cpcsync::testing
