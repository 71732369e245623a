#include "fault_vfs.h"

#include <algorithm>
#include <cstring>

namespace cpcsync::testing {
namespace {

// The extended code the unix VFS reports when this call fails.
int IoErrorOf(unsigned call) {
  switch (call) {
    case kIoDelete:
      return SQLITE_IOERR_DELETE;
    case kIoAccess:
      return SQLITE_IOERR_ACCESS;
    case kIoRead:
      return SQLITE_IOERR_READ;
    case kIoWrite:
      return SQLITE_IOERR_WRITE;
    case kIoTruncate:
      return SQLITE_IOERR_TRUNCATE;
    case kIoSync:
      return SQLITE_IOERR_FSYNC;
    case kIoFileSize:
      return SQLITE_IOERR_FSTAT;
    case kIoLock:
      return SQLITE_IOERR_LOCK;
    case kIoUnlock:
      return SQLITE_IOERR_UNLOCK;
    case kIoCheckReservedLock:
      return SQLITE_IOERR_CHECKRESERVEDLOCK;
    case kIoShmMap:
      return SQLITE_IOERR_SHMMAP;
    case kIoShmLock:
      return SQLITE_IOERR_SHMLOCK;
    case kIoShmUnlock:
      return SQLITE_IOERR_SHMLOCK;
    default:
      return SQLITE_IOERR;
  }
}

bool Durable(const ShimVfs::File& f) {
  return f.path && (f.flags & (SQLITE_OPEN_MAIN_DB | SQLITE_OPEN_WAL | SQLITE_OPEN_MAIN_JOURNAL));
}

}  // namespace

const char* IoCallName(unsigned call) {
  switch (call) {
    case kIoOpen:
      return "open";
    case kIoDelete:
      return "delete";
    case kIoAccess:
      return "access";
    case kIoRead:
      return "read";
    case kIoWrite:
      return "write";
    case kIoTruncate:
      return "truncate";
    case kIoSync:
      return "sync";
    case kIoFileSize:
      return "file_size";
    case kIoLock:
      return "lock";
    case kIoUnlock:
      return "unlock";
    case kIoCheckReservedLock:
      return "check_reserved_lock";
    case kIoShmMap:
      return "shm_map";
    case kIoShmLock:
      return "shm_lock";
    case kIoShmUnlock:
      return "shm_unlock";
    default:
      return "none";
  }
}

FaultVfs::FaultVfs() : ShimVfs("cpcsync-fault") { MakeDefault(); }

void FaultVfs::Arm(const Fault& fault) {
  std::lock_guard lock(mu_);
  fault_ = fault;
  calls_ = 0;
  failed_ = 0;
  failed_kind_ = 0;
}

void FaultVfs::Clear() {
  std::lock_guard lock(mu_);
  fault_.nth = std::numeric_limits<int64_t>::max();
}

int64_t FaultVfs::calls() const {
  std::lock_guard lock(mu_);
  return calls_;
}
int64_t FaultVfs::failed() const {
  std::lock_guard lock(mu_);
  return failed_;
}
unsigned FaultVfs::failed_kind() const {
  std::lock_guard lock(mu_);
  return failed_kind_;
}

void FaultVfs::SetPowerLossModel(bool on) {
  std::lock_guard lock(mu_);
  power_loss_model_ = on;
}

void FaultVfs::CrashAtSync(int64_t nth) {
  std::lock_guard lock(mu_);
  crash_at_sync_ = nth;
  syncs_ = 0;
}

void FaultVfs::Crash() {
  std::lock_guard lock(mu_);
  crashed_ = true;
}

bool FaultVfs::crashed() const {
  std::lock_guard lock(mu_);
  return crashed_;
}

void FaultVfs::Recover() {
  std::lock_guard lock(mu_);
  crashed_ = false;
  crash_at_sync_ = 0;
  unsynced_.clear();
}

int FaultVfs::Check(IoCall call) {
  std::lock_guard lock(mu_);
  if (!(fault_.calls & call)) return SQLITE_OK;
  const int64_t index = ++calls_;
  const bool fails =
      fault_.mode == Fault::Mode::kTransient ? index == fault_.nth : index >= fault_.nth;
  if (!fails) return SQLITE_OK;
  if (failed_++ == 0) failed_kind_ = call;
  return fault_.rc == SQLITE_FULL ? SQLITE_FULL : IoErrorOf(call);
}

FaultVfs::Unsynced* FaultVfs::Buffered(File& f) {
  if (!power_loss_model_ || !Durable(f)) return nullptr;
  auto [it, inserted] = unsynced_.try_emplace(f.path);
  if (inserted && ShimVfs::FileSize(f, &it->second.size) != SQLITE_OK) it->second.size = 0;
  return &it->second;
}

int FaultVfs::Flush(File& f, Unsynced& u) {
  for (const auto& c : u.changes) {
    const int rc = c.data.empty()
                       ? ShimVfs::Truncate(f, c.off)
                       : ShimVfs::Write(f, c.data.data(), static_cast<int>(c.data.size()), c.off);
    if (rc != SQLITE_OK) return rc;
  }
  unsynced_.erase(f.path);
  return SQLITE_OK;
}

int FaultVfs::Open(const char* name, File& f, int flags, int* out_flags) {
  if (const int rc = Check(kIoOpen)) return rc;
  return ShimVfs::Open(name, f, flags, out_flags);
}

int FaultVfs::Delete(const char* name, int sync_dir) {
  if (const int rc = Check(kIoDelete)) return rc;
  std::lock_guard lock(mu_);
  if (crashed_) return SQLITE_IOERR_DELETE;
  unsynced_.erase(name);
  return ShimVfs::Delete(name, sync_dir);
}

int FaultVfs::Access(const char* name, int flags, int* out) {
  if (const int rc = Check(kIoAccess)) return rc;
  return ShimVfs::Access(name, flags, out);
}

int FaultVfs::Read(File& f, void* buf, int n, sqlite3_int64 off) {
  if (const int rc = Check(kIoRead)) return rc;
  std::lock_guard lock(mu_);
  const auto it = Durable(f) ? unsynced_.find(f.path) : unsynced_.end();
  const int rc = ShimVfs::Read(f, buf, n, off);
  if (it == unsynced_.end()) return rc;
  if (rc != SQLITE_OK && rc != SQLITE_IOERR_SHORT_READ) return rc;
  auto* out = static_cast<char*>(buf);
  const sqlite3_int64 end = off + n;
  for (const auto& c : it->second.changes) {
    if (c.data.empty()) {  // a truncation: what lay beyond it reads as zeros
      if (c.off < end) {
        const sqlite3_int64 from = std::max(c.off, off);
        std::memset(out + (from - off), 0, static_cast<size_t>(end - from));
      }
      continue;
    }
    const sqlite3_int64 from = std::max(c.off, off);
    const sqlite3_int64 to = std::min<sqlite3_int64>(c.off + c.data.size(), end);
    if (from < to) {
      std::memcpy(out + (from - off), c.data.data() + (from - c.off),
                  static_cast<size_t>(to - from));
    }
  }
  const sqlite3_int64 size = it->second.size;
  if (end <= size) return SQLITE_OK;
  const sqlite3_int64 from = std::max(size, off);
  std::memset(out + (from - off), 0, static_cast<size_t>(end - from));
  return SQLITE_IOERR_SHORT_READ;
}

int FaultVfs::Write(File& f, const void* buf, int n, sqlite3_int64 off) {
  if (const int rc = Check(kIoWrite)) return rc;
  std::lock_guard lock(mu_);
  if (crashed_) return SQLITE_IOERR_WRITE;
  Unsynced* u = Buffered(f);
  if (!u) return ShimVfs::Write(f, buf, n, off);
  u->changes.push_back({off, std::string(static_cast<const char*>(buf), static_cast<size_t>(n))});
  u->size = std::max(u->size, off + n);
  return SQLITE_OK;
}

int FaultVfs::Truncate(File& f, sqlite3_int64 size) {
  if (const int rc = Check(kIoTruncate)) return rc;
  std::lock_guard lock(mu_);
  if (crashed_) return SQLITE_IOERR_TRUNCATE;
  Unsynced* u = Buffered(f);
  if (!u) return ShimVfs::Truncate(f, size);
  u->changes.push_back({size, {}});
  u->size = size;
  return SQLITE_OK;
}

int FaultVfs::Sync(File& f, int flags) {
  if (const int rc = Check(kIoSync)) return rc;
  std::lock_guard lock(mu_);
  if (crashed_) return SQLITE_IOERR_FSYNC;
  if (crash_at_sync_ > 0 && ++syncs_ == crash_at_sync_) {
    crashed_ = true;
    return SQLITE_IOERR_FSYNC;
  }
  if (Durable(f)) {
    const auto it = unsynced_.find(f.path);
    if (it != unsynced_.end()) {
      if (const int rc = Flush(f, it->second)) return rc;
    }
  }
  return ShimVfs::Sync(f, flags);
}

int FaultVfs::FileSize(File& f, sqlite3_int64* size) {
  if (const int rc = Check(kIoFileSize)) return rc;
  std::lock_guard lock(mu_);
  const auto it = Durable(f) ? unsynced_.find(f.path) : unsynced_.end();
  if (it == unsynced_.end()) return ShimVfs::FileSize(f, size);
  *size = it->second.size;
  return SQLITE_OK;
}

int FaultVfs::Lock(File& f, int level) {
  if (const int rc = Check(kIoLock)) return rc;
  return ShimVfs::Lock(f, level);
}
int FaultVfs::Unlock(File& f, int level) {
  if (const int rc = Check(kIoUnlock)) return rc;
  return ShimVfs::Unlock(f, level);
}
int FaultVfs::CheckReservedLock(File& f, int* out) {
  if (const int rc = Check(kIoCheckReservedLock)) return rc;
  return ShimVfs::CheckReservedLock(f, out);
}
int FaultVfs::ShmMap(File& f, int region, int size, int extend, void volatile** p) {
  if (const int rc = Check(kIoShmMap)) return rc;
  return ShimVfs::ShmMap(f, region, size, extend, p);
}
int FaultVfs::ShmLock(File& f, int offset, int n, int flags) {
  if (const int rc = Check((flags & SQLITE_SHM_UNLOCK) ? kIoShmUnlock : kIoShmLock)) return rc;
  return ShimVfs::ShmLock(f, offset, n, flags);
}
int FaultVfs::Fetch(File& f, sqlite3_int64 off, int n, void** p) {
  *p = nullptr;  // no memory mapping: every read goes through Read, faults and buffers
  return SQLITE_OK;
}

}  // namespace cpcsync::testing
