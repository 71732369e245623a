// A test-only SQLite VFS shim that injects storage faults, the way SQLite's own
// test_vfs does: it fails the Nth I/O call once (transient) or from the Nth on
// (persistent) with SQLITE_IOERR, reports a full disk (SQLITE_FULL on writes), and
// models power loss: with the model on, writes stay in a per-file buffer until the
// file is synced, and a crash drops every unsynced write (only synced data
// survives). While it lives, it is the default VFS (see ShimVfs).
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "shim_vfs.h"

namespace cpcsync::testing {

// The calls a fault can hit, as a bit mask.
enum IoCall : unsigned {
  kIoOpen = 1u << 0,
  kIoDelete = 1u << 1,
  kIoAccess = 1u << 2,
  kIoRead = 1u << 3,
  kIoWrite = 1u << 4,
  kIoTruncate = 1u << 5,
  kIoSync = 1u << 6,
  kIoFileSize = 1u << 7,
  kIoLock = 1u << 8,
  kIoUnlock = 1u << 9,
  kIoCheckReservedLock = 1u << 10,
  kIoShmMap = 1u << 11,
  kIoShmLock = 1u << 12,
  kIoShmUnlock = 1u << 13,
  kIoAll = (1u << 14) - 1,
  // Unlocking cannot fail on Linux (fcntl F_UNLCK on an open descriptor), and when a
  // shim makes it fail SQLite believes a lock gone that is still held, and spins for
  // 10 s before it reports SQLITE_PROTOCOL: the long sweep covers these.
  kIoNoUnlock = kIoAll & ~(kIoUnlock | kIoShmUnlock),
};

const char* IoCallName(unsigned call);

struct Fault {
  enum class Mode { kTransient, kPersistent };
  int64_t nth = std::numeric_limits<int64_t>::max();  // 1-based, among calls in `calls`
  Mode mode = Mode::kTransient;
  unsigned calls = kIoAll;
  // SQLITE_IOERR (each call's own extended code, as the unix VFS reports) or SQLITE_FULL.
  int rc = SQLITE_IOERR;
};

class FaultVfs final : public ShimVfs {
 public:
  FaultVfs();  // the default VFS until destroyed

  // Counts the calls in `fault.calls` from now on and fails as `fault` says.
  void Arm(const Fault& fault);
  // Counts calls in `calls` from now on, failing none.
  void Count(unsigned calls = kIoAll) { Arm(Fault{.calls = calls}); }
  // No more failures (the counter keeps counting).
  void Clear();
  int64_t calls() const;
  int64_t failed() const;        // calls failed since Arm
  unsigned failed_kind() const;  // the kind of the first call failed since Arm (0: none)

  // Power-loss model: while on, writes reach the disk only when their file is synced.
  void SetPowerLossModel(bool on);
  // The `nth` sync from now on (1-based) loses power instead of syncing; see Crash().
  void CrashAtSync(int64_t nth);
  // Power is lost: every later write, truncate, sync and delete fails with
  // SQLITE_IOERR and changes nothing, until Recover().
  void Crash();
  bool crashed() const;
  // Power is back: unsynced writes are gone.
  void Recover();

  int Open(const char* name, File& f, int flags, int* out_flags) override;
  int Delete(const char* name, int sync_dir) override;
  int Access(const char* name, int flags, int* out) override;
  int Read(File& f, void* buf, int n, sqlite3_int64 off) override;
  int Write(File& f, const void* buf, int n, sqlite3_int64 off) override;
  int Truncate(File& f, sqlite3_int64 size) override;
  int Sync(File& f, int flags) override;
  int FileSize(File& f, sqlite3_int64* size) override;
  int Lock(File& f, int level) override;
  int Unlock(File& f, int level) override;
  int CheckReservedLock(File& f, int* out) override;
  int ShmMap(File& f, int region, int size, int extend, void volatile** p) override;
  int ShmLock(File& f, int offset, int n, int flags) override;
  int Fetch(File& f, sqlite3_int64 off, int n, void** p) override;

 private:
  // Writes and truncations of one file since its last sync, in order.
  struct Unsynced {
    struct Change {
      sqlite3_int64 off;
      std::string data;  // empty: a truncation to `off`
    };
    sqlite3_int64 size = 0;
    std::vector<Change> changes;
  };

  // The fault's verdict on one call: SQLITE_OK to go ahead, else the code to return.
  int Check(IoCall call);
  Unsynced* Buffered(File& f);  // null when the model is off or the file is temporary
  int Flush(File& f, Unsynced& u);

  mutable std::mutex mu_;
  Fault fault_;
  int64_t calls_ = 0;
  int64_t failed_ = 0;
  unsigned failed_kind_ = 0;
  bool power_loss_model_ = false;
  int64_t crash_at_sync_ = 0;  // 0: none
  int64_t syncs_ = 0;          // since CrashAtSync
  bool crashed_ = false;
  std::map<std::string, Unsynced> unsynced_;  // by file path (shared by handles)
};

}  // namespace cpcsync::testing
