#include "blockstore/dir_backend.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "blockstore/backend_util.h"
#include "blockstore/file_util.h"
#include "blockstore/backends.h"

namespace imgfs {
namespace {

constexpr char kFormatLine[] = "imgfs-dir-backend 1\n";

std::string ParentOf(const std::string& path) { return path.substr(0, path.rfind('/')); }

// mkdir that accepts an existing directory; fsyncs the parent when it created
// one and `sync`.
Status MakeDir(FileIO& io, const std::string& dir, bool sync = true) {
  int err = io.Mkdir(dir, 0755);
  if (err == 0) return sync ? FsyncDir(ParentOf(dir), io) : Status::OK();
  if (err != EEXIST) return Status::FromErrno(err, "mkdir " + dir);
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) return Status::FromErrno(errno, "stat " + dir);
  if (!S_ISDIR(st.st_mode)) return Status::InvalidArgument(dir + " exists and is not a directory");
  return Status::OK();
}

Status ObjectMissing(ObjectKind kind, std::string_view id) {
  return Status::NotFound(std::string(ObjectKindName(kind)) + " " + std::string(id) + " not found");
}

// Lists a directory's entries except "." and "..", with whether each is a directory.
Status ListDir(const std::string& dir, std::vector<std::pair<std::string, bool>>* out,
               bool* exists) {
  out->clear();
  DIR* d = ::opendir(dir.c_str());
  if (d == nullptr) {
    if (errno == ENOENT || errno == ENOTDIR) {
      *exists = false;
      return Status::OK();
    }
    return Status::FromErrno(errno, "opendir " + dir);
  }
  *exists = true;
  errno = 0;
  while (struct dirent* e = ::readdir(d)) {
    std::string_view name = e->d_name;
    if (name == "." || name == "..") continue;
    bool is_dir = e->d_type == DT_DIR;
    if (e->d_type == DT_UNKNOWN) {
      struct stat st;
      is_dir =
          ::fstatat(::dirfd(d), e->d_name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISDIR(st.st_mode);
    }
    out->emplace_back(std::string(name), is_dir);
    errno = 0;
  }
  int err = errno;
  ::closedir(d);
  if (err != 0) return Status::FromErrno(err, "readdir " + dir);
  return Status::OK();
}

class FlockGuard {
 public:
  explicit FlockGuard(int fd) : fd_(fd) {}
  Status Lock() {
    while (::flock(fd_, LOCK_EX) != 0) {
      if (errno != EINTR) return Status::FromErrno(errno, "flock records.lock");
    }
    locked_ = true;
    return Status::OK();
  }
  ~FlockGuard() {
    if (locked_) ::flock(fd_, LOCK_UN);
  }

 private:
  int fd_;
  bool locked_ = false;
};

}  // namespace

Result<std::shared_ptr<DirChunkBackend>> DirChunkBackend::Open(const std::string& root_in,
                                                               PublishMode mode) {
  std::string root = root_in;
  while (root.size() > 1 && root.back() == '/') root.pop_back();
  if (root.empty()) return Status::InvalidArgument("dir chunk backend: empty path");
  FileIO& io = FileIO::Current();
  if (int err = io.Mkdir(root, 0755); err == 0) {
    RETURN_IF_ERROR(FsyncDir(root.find('/') == std::string::npos ? "." : ParentOf(root), io));
  } else if (err != EEXIST) {
    return Status::FromErrno(err, "create chunk directory " + root);
  }
  std::string format_path = root + "/FORMAT";
  int format_raw = io.Open(format_path, O_RDONLY);
  UniqueFd format_fd(format_raw);
  if (format_fd.get() >= 0) {
    char buf[64] = {};
    ASSIGN_OR_RETURN(
        size_t n,
        ReadFull(format_fd.get(), MutableByteView(reinterpret_cast<uint8_t*>(buf), sizeof buf - 1),
                 0, format_path));
    if (std::string_view(buf, n) != kFormatLine) {
      return Status::InvalidArgument(root + " has an unknown chunk directory format: '" +
                                     std::string(buf, n > 0 && buf[n - 1] == '\n' ? n - 1 : n) +
                                     "'");
    }
  } else if (format_raw == -ENOENT) {
    std::vector<std::pair<std::string, bool>> entries;
    bool exists = false;
    RETURN_IF_ERROR(ListDir(root, &entries, &exists));
    if (!exists) return Status::InvalidArgument(root + " is not a directory");
    for (const auto& [name, is_dir] : entries) {
      if (name != "objects" && name != "records" && name != "tmp" && !name.ends_with(".lock")) {
        return Status::InvalidArgument(root + " is not empty and is not an imgfs chunk directory");
      }
    }
  } else {
    return Status::FromErrno(-format_raw, "open " + format_path);
  }
  RETURN_IF_ERROR(MakeDir(io, root + "/objects"));
  RETURN_IF_ERROR(MakeDir(io, root + "/objects/chunk"));
  RETURN_IF_ERROR(MakeDir(io, root + "/objects/manifest"));
  RETURN_IF_ERROR(MakeDir(io, root + "/records"));
  RETURN_IF_ERROR(MakeDir(io, root + "/tmp"));
  std::string lock_path = root + "/records.lock";
  int lock_fd = io.Open(lock_path, O_RDWR | O_CREAT, 0644);
  if (lock_fd < 0) return Status::FromErrno(-lock_fd, "open " + lock_path);
  std::shared_ptr<DirChunkBackend> backend(new DirChunkBackend(root, lock_fd, io));
  if (format_fd.get() < 0) {
    std::string tmp;
    RETURN_IF_ERROR(backend->WriteTemp(
        ByteView(reinterpret_cast<const uint8_t*>(kFormatLine), sizeof kFormatLine - 1),
        /*sync=*/true, &tmp));
    RETURN_IF_ERROR(backend->Publish(tmp, format_path, /*replace=*/true, /*sync=*/true));
  }
  const char* forced = std::getenv("IMGFS_DIR_PUBLISH");
  if (forced != nullptr && std::string_view(forced) == "rename") mode = PublishMode::kRename;
  backend->tmpfile_ = mode == PublishMode::kAuto && backend->ProbeTmpfile();
  auto cleaned = backend->CleanTemp(kStaleTempAge);
  if (!cleaned.ok()) return cleaned.status();
  return backend;
}

namespace {
class FlockLock : public BackendLock {
 public:
  explicit FlockLock(UniqueFd fd) : fd_(std::move(fd)) {}
  Status Check() const override { return Status::OK(); }

 private:
  UniqueFd fd_;  // closing it releases the flock
};
}  // namespace

Result<std::unique_ptr<BackendLock>> DirChunkBackend::Lock(std::string_view name, LockMode mode,
                                                           const std::function<void()>& waiting) {
  if (name.empty() || name.find_first_not_of("abcdefghijklmnopqrstuvwxyz") != name.npos) {
    return Status::InvalidArgument("invalid lock name '" + std::string(name) + "'");
  }
  std::string path = root_ + "/" + std::string(name) + ".lock";
  ASSIGN_OR_RETURN(UniqueFd fd, OpenFd(io_, path, O_RDWR | O_CREAT, 0644));
  const int op = mode == LockMode::kShared ? LOCK_SH : LOCK_EX;
  bool waited = false;
  while (::flock(fd.get(), op | (waited ? 0 : LOCK_NB)) != 0) {
    if (errno == EINTR) continue;
    if (errno == EWOULDBLOCK && !waited) {
      waited = true;
      if (waiting) waiting();
      continue;
    }
    return Status::FromErrno(errno, "lock " + path);
  }
  return std::unique_ptr<BackendLock>(std::make_unique<FlockLock>(std::move(fd)));
}

DirChunkBackend::DirChunkBackend(std::string root, int lock_fd, FileIO& io)
    : root_(std::move(root)), lock_fd_(lock_fd), io_(io) {}

DirChunkBackend::~DirChunkBackend() { ::close(lock_fd_); }

std::string DirChunkBackend::ObjectPath(ObjectKind kind, std::string_view id) const {
  std::string path = root_;
  path += "/objects/";
  path += ObjectKindName(kind);
  path += '/';
  path += id.substr(0, 2);
  path += '/';
  path += id;
  return path;
}

Status DirChunkBackend::WriteTemp(ByteView data, bool sync, std::string* path) {
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  char name[96];
  std::snprintf(name, sizeof name, "/tmp/%d.%llu.%016llx.tmp", static_cast<int>(::getpid()),
                static_cast<unsigned long long>(temp_seq_.fetch_add(1)),
                static_cast<unsigned long long>(rng()));
  *path = root_ + name;
  int raw = io_.Open(*path, O_WRONLY | O_CREAT | O_EXCL, 0644);
  if (raw < 0) return Status::FromErrno(-raw, "create temp file " + *path);
  UniqueFd fd(raw);
  Status s = WriteFull(fd.get(), data, std::nullopt, *path);
  if (s.ok() && sync) {
    if (int err = io_.Fsync(fd.get())) s = Status::FromErrno(err, "fsync " + *path);
  }
  if (s.ok() && ::close(fd.release()) != 0) s = Status::FromErrno(errno, "close " + *path);
  if (!s.ok()) (void)io_.Unlink(*path);
  return s;
}

Status DirChunkBackend::Publish(const std::string& tmp, const std::string& dest, bool replace,
                                bool sync) {
  std::string parent = ParentOf(dest);
  for (int attempt = 0;; ++attempt) {
    int err;
    if (replace) {
      err = io_.Rename(tmp, dest);
    } else {
      err = io_.Rename(tmp, dest, RENAME_NOREPLACE);
      if (err == EINVAL || err == ENOSYS || err == ENOTSUP) {
        err = io_.Link(tmp, dest);
        if (err == 0) (void)io_.Unlink(tmp);
      }
    }
    if (err == 0) break;
    if (err == ENOENT && attempt == 0) {
      Status s = MakeDir(io_, parent, sync);
      if (!s.ok()) {
        (void)io_.Unlink(tmp);
        return s;
      }
      continue;
    }
    (void)io_.Unlink(tmp);
    if (err == EEXIST && !replace) return Status::AlreadyExists(dest + " already exists");
    if (err == EISDIR || err == ENOTDIR) {
      return Status::InvalidArgument(dest + " conflicts with an existing directory or file");
    }
    return Status::FromErrno(err, "publish " + dest);
  }
  return sync ? FsyncDir(parent, io_) : Status::OK();
}

bool DirChunkBackend::ProbeTmpfile() {
  std::string dir = TempDir();
  UniqueFd fd(io_.Open(dir, O_TMPFILE | O_WRONLY, 0644));
  if (!fd.valid()) return false;
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  char name[96];
  std::snprintf(name, sizeof name, "/%d.probe.%016llx.tmp", static_cast<int>(::getpid()),
                static_cast<unsigned long long>(rng()));
  std::string path = dir + name;
  if (io_.LinkFd(fd.get(), path) != 0) return false;
  (void)io_.Unlink(path);
  return true;
}

Status DirChunkBackend::PublishLinked(const std::string& dest, ByteView data) {
  std::string parent = ParentOf(dest);
  UniqueFd fd;
  for (int attempt = 0;; ++attempt) {
    int raw = io_.Open(parent, O_TMPFILE | O_WRONLY, 0644);
    if (raw >= 0) {
      fd = UniqueFd(raw);
      break;
    }
    if (raw == -ENOENT && attempt == 0) {
      RETURN_IF_ERROR(MakeDir(io_, parent, /*sync=*/false));
      continue;
    }
    return Status::FromErrno(-raw, "create temp file in " + parent);
  }
  RETURN_IF_ERROR(WriteFull(fd.get(), data, std::nullopt, dest));
  if (int err = io_.LinkFd(fd.get(), dest)) {
    if (err == EEXIST) return Status::AlreadyExists(dest + " already exists");
    return Status::FromErrno(err, "publish " + dest);
  }
  if (::close(fd.release()) != 0) return Status::FromErrno(errno, "close " + dest);
  return Status::OK();
}

Status DirChunkBackend::PutIfAbsent(ObjectKind kind, std::string_view id, ByteView data) {
  RETURN_IF_ERROR(ValidateObjectId(id));
  std::string dest = ObjectPath(kind, id);
  auto exists = [&] {
    // The caller relies on the existing object from now on: Sync covers it.
    unsynced_.store(true);
    return Status::AlreadyExists(std::string(ObjectKindName(kind)) + " " + std::string(id) +
                                 " already exists");
  };
  if (::access(dest.c_str(), F_OK) == 0) return exists();
  if (tmpfile_) {
    Status s = PublishLinked(dest, data);
    if (s.IsAlreadyExists()) return exists();
    if (s.ok()) unsynced_.store(true);
    return s;
  }
  std::string tmp;
  RETURN_IF_ERROR(WriteTemp(data, /*sync=*/false, &tmp));
  Status s = Publish(tmp, dest, /*replace=*/false, /*sync=*/false);
  if (s.IsAlreadyExists()) return exists();
  if (s.ok()) unsynced_.store(true);
  return s;
}

namespace {

// Opens object file `path` and returns its size; NotFound for a missing object.
Status OpenObject(const std::string& path, ObjectKind kind, std::string_view id, UniqueFd* fd,
                  size_t* size) {
  *fd = UniqueFd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd->get() < 0) {
    if (errno == ENOENT) return ObjectMissing(kind, id);
    return Status::FromErrno(errno, "open " + path);
  }
  struct stat st;
  if (::fstat(fd->get(), &st) != 0) return Status::FromErrno(errno, "stat " + path);
  *size = static_cast<size_t>(st.st_size);
  return Status::OK();
}

// Reads exactly buf.size() bytes of an object opened with OpenObject.
Status ReadObject(int fd, const std::string& path, ObjectKind kind, std::string_view id,
                  MutableByteView buf) {
  ASSIGN_OR_RETURN(size_t n, ReadFull(fd, buf, 0, path));
  if (n != buf.size()) {
    return Status::Corruption(std::string(ObjectKindName(kind)) + " " + std::string(id) +
                              " changed size while being read");
  }
  return Status::OK();
}

}  // namespace

Status DirChunkBackend::Get(ObjectKind kind, std::string_view id, Bytes* out) {
  RETURN_IF_ERROR(ValidateObjectId(id));
  std::string path = ObjectPath(kind, id);
  UniqueFd fd;
  size_t size = 0;
  RETURN_IF_ERROR(OpenObject(path, kind, id, &fd, &size));
  out->resize(size);
  return ReadObject(fd.get(), path, kind, id, MutableByteView(*out));
}

Result<size_t> DirChunkBackend::Read(ObjectKind kind, std::string_view id, MutableByteView buf) {
  RETURN_IF_ERROR(ValidateObjectId(id));
  std::string path = ObjectPath(kind, id);
  UniqueFd fd;
  size_t size = 0;
  RETURN_IF_ERROR(OpenObject(path, kind, id, &fd, &size));
  if (size > buf.size()) {
    return Status::InvalidArgument(std::string(ObjectKindName(kind)) + " " + std::string(id) +
                                   " is " + std::to_string(size) +
                                   " bytes, more than the buffer's " + std::to_string(buf.size()));
  }
  RETURN_IF_ERROR(ReadObject(fd.get(), path, kind, id, buf.first(size)));
  return size;
}

Result<bool> DirChunkBackend::Exists(ObjectKind kind, std::string_view id) {
  RETURN_IF_ERROR(ValidateObjectId(id));
  std::string path = ObjectPath(kind, id);
  if (::access(path.c_str(), F_OK) == 0) return true;
  if (errno == ENOENT) return false;
  return Status::FromErrno(errno, "access " + path);
}

Status DirChunkBackend::Remove(ObjectKind kind, std::string_view id) {
  RETURN_IF_ERROR(ValidateObjectId(id));
  std::string path = ObjectPath(kind, id);
  if (int err = io_.Unlink(path)) {
    if (err == ENOENT) return ObjectMissing(kind, id);
    return Status::FromErrno(err, "remove " + path);
  }
  unsynced_.store(true);
  return Status::OK();
}

Result<uint64_t> DirChunkBackend::Size(ObjectKind kind, std::string_view id) {
  RETURN_IF_ERROR(ValidateObjectId(id));
  std::string path = ObjectPath(kind, id);
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return ObjectMissing(kind, id);
    return Status::FromErrno(errno, "stat " + path);
  }
  return static_cast<uint64_t>(st.st_size);
}

Status DirChunkBackend::Sync() {
  if (!unsynced_.exchange(false)) return Status::OK();
  if (int err = io_.Syncfs(lock_fd_)) {
    unsynced_.store(true);
    return Status::FromErrno(err, "syncfs " + root_);
  }
  return Status::OK();
}

Status DirChunkBackend::List(ObjectKind kind,
                             const std::function<Status(std::string_view id)>& fn) {
  std::string base = root_ + "/objects/" + std::string(ObjectKindName(kind));
  std::vector<std::pair<std::string, bool>> shards, entries;
  bool exists = false;
  RETURN_IF_ERROR(ListDir(base, &shards, &exists));
  for (const auto& [shard, is_dir] : shards) {
    if (!is_dir || shard.size() != 2 || !ValidateObjectId(shard).ok()) continue;
    RETURN_IF_ERROR(ListDir(base + "/" + shard, &entries, &exists));
    for (const auto& [name, sub_is_dir] : entries) {
      if (sub_is_dir || name.compare(0, 2, shard) != 0 || !ValidateObjectId(name).ok()) continue;
      RETURN_IF_ERROR(fn(name));
    }
  }
  return Status::OK();
}

Status DirChunkBackend::ReadRecordFile(const std::string& path, std::string* value, bool* found) {
  *found = false;
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (fd.get() < 0) {
    if (errno == ENOENT || errno == ENOTDIR) return Status::OK();
    return Status::FromErrno(errno, "open " + path);
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) return Status::FromErrno(errno, "stat " + path);
  if (!S_ISREG(st.st_mode)) return Status::OK();
  value->resize(static_cast<size_t>(st.st_size));
  ASSIGN_OR_RETURN(
      size_t n,
      ReadFull(fd.get(), MutableByteView(reinterpret_cast<uint8_t*>(value->data()), value->size()),
               0, path));
  value->resize(n);
  *found = true;
  return Status::OK();
}

Status DirChunkBackend::GetRecord(std::string_view key, std::string* value) {
  RETURN_IF_ERROR(ValidateRecordKey(key));
  bool found = false;
  RETURN_IF_ERROR(ReadRecordFile(RecordPath(key), value, &found));
  if (!found) return Status::NotFound("no record '" + std::string(key) + "'");
  return Status::OK();
}

Status DirChunkBackend::PutRecord(std::string_view key, std::string_view value,
                                  const RecordCondition& cond) {
  RETURN_IF_ERROR(ValidateRecordKey(key));
  std::string path = RecordPath(key);
  MutexLock lock(records_mu_);
  FlockGuard flock_guard(lock_fd_);
  RETURN_IF_ERROR(flock_guard.Lock());
  std::string current;
  bool found = false;
  RETURN_IF_ERROR(ReadRecordFile(path, &current, &found));
  RETURN_IF_ERROR(CheckPutCondition(key, found ? &current : nullptr, cond));
  for (size_t slash = key.find('/'); slash != std::string_view::npos;
       slash = key.find('/', slash + 1)) {
    RETURN_IF_ERROR(MakeDir(io_, RecordPath(key.substr(0, slash))));
  }
  std::string tmp;
  RETURN_IF_ERROR(WriteTemp(ByteView(reinterpret_cast<const uint8_t*>(value.data()), value.size()),
                            /*sync=*/true, &tmp));
  return Publish(tmp, path, /*replace=*/true, /*sync=*/true);
}

Status DirChunkBackend::RemoveRecord(std::string_view key, const RecordCondition& cond) {
  RETURN_IF_ERROR(ValidateRecordKey(key));
  std::string path = RecordPath(key);
  MutexLock lock(records_mu_);
  FlockGuard flock_guard(lock_fd_);
  RETURN_IF_ERROR(flock_guard.Lock());
  std::string current;
  bool found = false;
  RETURN_IF_ERROR(ReadRecordFile(path, &current, &found));
  RETURN_IF_ERROR(CheckRemoveCondition(key, found ? &current : nullptr, cond));
  if (int err = io_.Unlink(path)) return Status::FromErrno(err, "remove " + path);
  return FsyncDir(ParentOf(path), io_);
}

Status DirChunkBackend::ListRecords(std::string_view prefix,
                                    const std::function<Status(std::string_view key)>& fn) {
  size_t slash = prefix.rfind('/');
  std::string start_key(slash == std::string_view::npos ? std::string_view()
                                                        : prefix.substr(0, slash));
  if (!start_key.empty()) RETURN_IF_ERROR(ValidateRecordKey(start_key));
  std::vector<std::string> keys;
  std::vector<std::string> pending{start_key};
  std::vector<std::pair<std::string, bool>> entries;
  while (!pending.empty()) {
    std::string dir_key = std::move(pending.back());
    pending.pop_back();
    bool exists = false;
    RETURN_IF_ERROR(
        ListDir(dir_key.empty() ? root_ + "/records" : RecordPath(dir_key), &entries, &exists));
    for (const auto& [name, is_dir] : entries) {
      std::string key = dir_key.empty() ? name : dir_key + "/" + name;
      if (is_dir) {
        pending.push_back(std::move(key));
      } else if (key.compare(0, prefix.size(), prefix) == 0) {
        keys.push_back(std::move(key));
      }
    }
  }
  for (const auto& key : keys) RETURN_IF_ERROR(fn(key));
  return Status::OK();
}

Result<SpaceInfo> DirChunkBackend::Space() {
  struct statvfs vfs;
  if (::statvfs(root_.c_str(), &vfs) != 0) return Status::FromErrno(errno, "statvfs " + root_);
  SpaceInfo info;
  info.capacity_bytes = uint64_t(vfs.f_blocks) * vfs.f_frsize;
  info.available_bytes = uint64_t(vfs.f_bavail) * vfs.f_frsize;
  return info;
}

Result<int> DirChunkBackend::CleanTemp(std::chrono::seconds min_age) {
  std::string dir = TempDir();
  std::vector<std::pair<std::string, bool>> entries;
  bool exists = false;
  RETURN_IF_ERROR(ListDir(dir, &entries, &exists));
  time_t now = ::time(nullptr);
  int removed = 0;
  for (const auto& [name, is_dir] : entries) {
    if (is_dir) continue;
    std::string path = dir + "/" + name;
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0) continue;
    if (now - st.st_mtime < min_age.count()) continue;
    if (io_.Unlink(path) == 0) ++removed;
  }
  return removed;
}

ChunkBackendType DirChunkBackendType() {
  ChunkBackendType t;
  t.name = "dir";
  t.usage = "dir";
  t.reads_are_local = true;
  // In a store the chunks live in STORE/chunks; "dir:PATH" names another
  // directory (tests, benchmarks).
  t.create = [](const BackendContext& ctx,
                std::string_view arg) -> Result<std::shared_ptr<ChunkBackend>> {
    std::string root(arg);
    if (root.empty() && !ctx.store_path.empty()) root = ctx.store_path + "/chunks";
    if (root.empty()) return Status::InvalidArgument("chunk backend 'dir:' needs a path");
    ASSIGN_OR_RETURN(auto dir, DirChunkBackend::Open(root));
    return std::shared_ptr<ChunkBackend>(std::move(dir));
  };
  t.prepare = [](const BackendContext& ctx, std::string_view) {
    return MakeDirs(ctx.store_path + "/chunks");
  };
  return t;
}

}  // namespace imgfs
