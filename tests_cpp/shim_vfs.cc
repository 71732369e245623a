#include "shim_vfs.h"

#include <cstddef>
#include <new>

namespace cpcsync::testing {
namespace {

// The platform file's state starts this far into our file object, suitably aligned.
constexpr int kHeader = static_cast<int>((sizeof(ShimVfs::File) + alignof(std::max_align_t) - 1) /
                                         alignof(std::max_align_t) * alignof(std::max_align_t));

// The default VFS before any shim registered: the first shim captures it.
sqlite3_vfs* Platform() {
  static sqlite3_vfs* const platform = sqlite3_vfs_find(nullptr);
  return platform;
}

ShimVfs::File& F(sqlite3_file* f) { return *reinterpret_cast<ShimVfs::File*>(f); }
ShimVfs& V(sqlite3_vfs* v) { return *static_cast<ShimVfs*>(v->pAppData); }

const sqlite3_io_methods kMethods = {
    3,  // iVersion: shared memory (WAL) and memory-mapped fetch
    [](sqlite3_file* f) { return F(f).vfs->Close(F(f)); },
    [](sqlite3_file* f, void* b, int n, sqlite3_int64 o) { return F(f).vfs->Read(F(f), b, n, o); },
    [](sqlite3_file* f, const void* b, int n, sqlite3_int64 o) {
      return F(f).vfs->Write(F(f), b, n, o);
    },
    [](sqlite3_file* f, sqlite3_int64 n) { return F(f).vfs->Truncate(F(f), n); },
    [](sqlite3_file* f, int flags) { return F(f).vfs->Sync(F(f), flags); },
    [](sqlite3_file* f, sqlite3_int64* n) { return F(f).vfs->FileSize(F(f), n); },
    [](sqlite3_file* f, int l) { return F(f).vfs->Lock(F(f), l); },
    [](sqlite3_file* f, int l) { return F(f).vfs->Unlock(F(f), l); },
    [](sqlite3_file* f, int* r) { return F(f).vfs->CheckReservedLock(F(f), r); },
    [](sqlite3_file* f, int op, void* a) {
      return F(f).real_methods().xFileControl(F(f).real(), op, a);
    },
    [](sqlite3_file* f) { return F(f).real_methods().xSectorSize(F(f).real()); },
    [](sqlite3_file* f) { return F(f).real_methods().xDeviceCharacteristics(F(f).real()); },
    [](sqlite3_file* f, int i, int sz, int e, void volatile** p) {
      return F(f).vfs->ShmMap(F(f), i, sz, e, p);
    },
    [](sqlite3_file* f, int o, int n, int fl) { return F(f).vfs->ShmLock(F(f), o, n, fl); },
    [](sqlite3_file* f) { F(f).real_methods().xShmBarrier(F(f).real()); },
    [](sqlite3_file* f, int d) { return F(f).real_methods().xShmUnmap(F(f).real(), d); },
    [](sqlite3_file* f, sqlite3_int64 o, int n, void** p) {
      return F(f).vfs->Fetch(F(f), o, n, p);
    },
    [](sqlite3_file* f, sqlite3_int64 o, void* p) {
      return F(f).real_methods().iVersion >= 3 ? F(f).real_methods().xUnfetch(F(f).real(), o, p)
                                               : SQLITE_OK;
    },
};

int OpenTrampoline(sqlite3_vfs* v, sqlite3_filename name, sqlite3_file* f, int flags,
                   int* out_flags) {
  auto* file = new (f) ShimVfs::File{{nullptr}, &V(v), name, flags};
  file->real()->pMethods = nullptr;
  const int rc = V(v).Open(name, *file, flags, out_flags);
  // SQLite calls xClose only when pMethods is set, so set it only for an open file.
  file->base.pMethods = (rc == SQLITE_OK && file->real()->pMethods) ? &kMethods : nullptr;
  return rc;
}

}  // namespace

sqlite3_file* ShimVfs::File::real() {
  return reinterpret_cast<sqlite3_file*>(reinterpret_cast<char*>(this) + kHeader);
}

ShimVfs::ShimVfs(const char* name) : platform_(Platform()) {
  vfs_ = *platform_;
  vfs_.zName = name;
  vfs_.pNext = nullptr;
  vfs_.pAppData = this;
  vfs_.szOsFile = kHeader + platform_->szOsFile;
  vfs_.xOpen = OpenTrampoline;
  vfs_.xDelete = [](sqlite3_vfs* v, const char* n, int d) { return V(v).Delete(n, d); };
  vfs_.xAccess = [](sqlite3_vfs* v, const char* n, int fl, int* o) {
    return V(v).Access(n, fl, o);
  };
  sqlite3_vfs_register(&vfs_, 0);
}

ShimVfs::~ShimVfs() {
  const bool was_default = sqlite3_vfs_find(nullptr) == &vfs_;
  sqlite3_vfs_unregister(&vfs_);
  // Not whichever default came before: that shim may be gone by now.
  if (was_default) sqlite3_vfs_register(platform_, 1);
}

void ShimVfs::MakeDefault() {
  if (sqlite3_vfs_find(nullptr) != &vfs_) sqlite3_vfs_register(&vfs_, 1);
}

int ShimVfs::Open(const char* name, File& f, int flags, int* out_flags) {
  const int rc = platform_->xOpen(platform_, name, f.real(), flags, out_flags);
  if (rc != SQLITE_OK && f.real()->pMethods) {
    f.real_methods().xClose(f.real());  // a failed open may still need its close
    f.real()->pMethods = nullptr;
  }
  return rc;
}
int ShimVfs::Delete(const char* name, int sync_dir) {
  return platform_->xDelete(platform_, name, sync_dir);
}
int ShimVfs::Access(const char* name, int flags, int* out) {
  return platform_->xAccess(platform_, name, flags, out);
}
int ShimVfs::Close(File& f) { return f.real_methods().xClose(f.real()); }
int ShimVfs::Read(File& f, void* buf, int n, sqlite3_int64 off) {
  return f.real_methods().xRead(f.real(), buf, n, off);
}
int ShimVfs::Write(File& f, const void* buf, int n, sqlite3_int64 off) {
  return f.real_methods().xWrite(f.real(), buf, n, off);
}
int ShimVfs::Truncate(File& f, sqlite3_int64 size) {
  return f.real_methods().xTruncate(f.real(), size);
}
int ShimVfs::Sync(File& f, int flags) { return f.real_methods().xSync(f.real(), flags); }
int ShimVfs::FileSize(File& f, sqlite3_int64* size) {
  return f.real_methods().xFileSize(f.real(), size);
}
int ShimVfs::Lock(File& f, int level) { return f.real_methods().xLock(f.real(), level); }
int ShimVfs::Unlock(File& f, int level) { return f.real_methods().xUnlock(f.real(), level); }
int ShimVfs::CheckReservedLock(File& f, int* out) {
  return f.real_methods().xCheckReservedLock(f.real(), out);
}
int ShimVfs::ShmMap(File& f, int region, int size, int extend, void volatile** p) {
  return f.real_methods().xShmMap(f.real(), region, size, extend, p);
}
int ShimVfs::ShmLock(File& f, int offset, int n, int flags) {
  return f.real_methods().xShmLock(f.real(), offset, n, flags);
}
int ShimVfs::Fetch(File& f, sqlite3_int64 off, int n, void** p) {
  if (f.real_methods().iVersion < 3) {
    *p = nullptr;  // "no mapping": SQLite reads with xRead instead
    return SQLITE_OK;
  }
  return f.real_methods().xFetch(f.real(), off, n, p);
}

}  // namespace cpcsync::testing
