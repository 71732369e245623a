#include "counting_vfs.h"

#include <cstring>
#include <mutex>

namespace cpcsync::testing {
namespace {

SyncCounts g_counts;
sqlite3_vfs* g_base = nullptr;
sqlite3_vfs g_vfs;
sqlite3_io_methods g_methods;

// Our file object: the base file's state follows our header.
struct ShimFile {
  sqlite3_file base;  // pMethods = &g_methods
  bool is_wal;
  sqlite3_file* real() { return reinterpret_cast<sqlite3_file*>(this + 1); }
};

ShimFile* Shim(sqlite3_file* f) { return reinterpret_cast<ShimFile*>(f); }

int Sync(sqlite3_file* f, int flags) {
  ShimFile* s = Shim(f);
  (s->is_wal ? g_counts.wal : g_counts.db)++;
  return s->real()->pMethods->xSync(s->real(), flags);
}

int Open(sqlite3_vfs*, sqlite3_filename name, sqlite3_file* f, int flags, int* out_flags) {
  ShimFile* s = Shim(f);
  s->is_wal = (flags & SQLITE_OPEN_WAL) != 0;
  const int rc = g_base->xOpen(g_base, name, s->real(), flags, out_flags);
  if (rc != SQLITE_OK || !s->real()->pMethods) {
    f->pMethods = nullptr;
    return rc;
  }
  // Copy the real file's methods, swapping in our sync and forwarding the rest
  // through small trampolines below.
  static std::once_flag once;
  const sqlite3_io_methods* real = s->real()->pMethods;
  std::call_once(once, [real] {
    g_methods = *real;
    g_methods.xSync = Sync;
#define FWD(name, sig, args)                                       \
  g_methods.name = [] sig { return Shim(f)->real()->pMethods->name args; }
    FWD(xClose, (sqlite3_file * f), (Shim(f)->real()));
    FWD(xRead, (sqlite3_file * f, void* b, int n, sqlite3_int64 o), (Shim(f)->real(), b, n, o));
    FWD(xWrite, (sqlite3_file * f, const void* b, int n, sqlite3_int64 o),
        (Shim(f)->real(), b, n, o));
    FWD(xTruncate, (sqlite3_file * f, sqlite3_int64 n), (Shim(f)->real(), n));
    FWD(xFileSize, (sqlite3_file * f, sqlite3_int64 * n), (Shim(f)->real(), n));
    FWD(xLock, (sqlite3_file * f, int l), (Shim(f)->real(), l));
    FWD(xUnlock, (sqlite3_file * f, int l), (Shim(f)->real(), l));
    FWD(xCheckReservedLock, (sqlite3_file * f, int* r), (Shim(f)->real(), r));
    FWD(xFileControl, (sqlite3_file * f, int op, void* a), (Shim(f)->real(), op, a));
    FWD(xSectorSize, (sqlite3_file * f), (Shim(f)->real()));
    FWD(xDeviceCharacteristics, (sqlite3_file * f), (Shim(f)->real()));
    FWD(xShmMap, (sqlite3_file * f, int i, int sz, int e, void volatile** p),
        (Shim(f)->real(), i, sz, e, p));
    FWD(xShmLock, (sqlite3_file * f, int o, int n, int fl), (Shim(f)->real(), o, n, fl));
    FWD(xShmUnmap, (sqlite3_file * f, int d), (Shim(f)->real(), d));
    FWD(xFetch, (sqlite3_file * f, sqlite3_int64 o, int n, void** p), (Shim(f)->real(), o, n, p));
    FWD(xUnfetch, (sqlite3_file * f, sqlite3_int64 o, void* p), (Shim(f)->real(), o, p));
#undef FWD
    g_methods.xShmBarrier = [](sqlite3_file* f) { Shim(f)->real()->pMethods->xShmBarrier(Shim(f)->real()); };
  });
  f->pMethods = &g_methods;
  return rc;
}

}  // namespace

SyncCounts& InstallCountingVfs() {
  static std::once_flag once;
  std::call_once(once, [] {
    g_base = sqlite3_vfs_find(nullptr);
    g_vfs = *g_base;
    g_vfs.zName = "cpcsync-counting";
    g_vfs.szOsFile = static_cast<int>(sizeof(ShimFile)) + g_base->szOsFile;
    g_vfs.xOpen = Open;
    sqlite3_vfs_register(&g_vfs, 1);
  });
  return g_counts;
}

}  // namespace cpcsync::testing
