// A test-only SQLite VFS that wraps the platform VFS (the default one before any
// shim was registered) and sends every call through a virtual method, so a test
// shim overrides only the calls it observes or changes: counting_vfs.h counts
// syncs, fault_vfs.h injects I/O errors and power loss.
#pragma once

#include <sqlite3.h>

namespace cpcsync::testing {

class ShimVfs {
 public:
  // A file opened through the shim: our header, then the platform file's state.
  struct File {
    sqlite3_file base;  // pMethods: the shim's table
    ShimVfs* vfs;
    const char* path;  // valid until close (SQLite guarantees it); null for temp files
    int flags;         // SQLITE_OPEN_* it was opened with
    sqlite3_file* real();
    const sqlite3_io_methods& real_methods() { return *real()->pMethods; }
  };

  // Registers the shim under `name`, not as the default.
  explicit ShimVfs(const char* name);
  // Unregisters; if the shim is the default, the platform VFS is again.
  virtual ~ShimVfs();
  ShimVfs(const ShimVfs&) = delete;
  ShimVfs& operator=(const ShimVfs&) = delete;

  // Makes the shim the default VFS, so every sqlite3_open uses it.
  void MakeDefault();
  sqlite3_vfs* platform() const { return platform_; }

  // Each defaults to the platform VFS's own.
  virtual int Open(const char* name, File& f, int flags, int* out_flags);
  virtual int Delete(const char* name, int sync_dir);
  virtual int Access(const char* name, int flags, int* out);
  virtual int Close(File& f);
  virtual int Read(File& f, void* buf, int n, sqlite3_int64 off);
  virtual int Write(File& f, const void* buf, int n, sqlite3_int64 off);
  virtual int Truncate(File& f, sqlite3_int64 size);
  virtual int Sync(File& f, int flags);
  virtual int FileSize(File& f, sqlite3_int64* size);
  virtual int Lock(File& f, int level);
  virtual int Unlock(File& f, int level);
  virtual int CheckReservedLock(File& f, int* out);
  virtual int ShmMap(File& f, int region, int size, int extend, void volatile** p);
  virtual int ShmLock(File& f, int offset, int n, int flags);
  virtual int Fetch(File& f, sqlite3_int64 off, int n, void** p);

 private:
  sqlite3_vfs* platform_;
  sqlite3_vfs vfs_{};
};

}  // namespace cpcsync::testing
