#include "blockstore/file_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <random>
#include <vector>

namespace imgfs {

UniqueFd& UniqueFd::operator=(UniqueFd&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.release();
  }
  return *this;
}

UniqueFd::~UniqueFd() {
  if (fd_ >= 0) ::close(fd_);
}

Result<UniqueFd> OpenFd(FileIO& io, const std::string& path, int flags, mode_t mode) {
  int fd = io.Open(path, flags, mode);
  if (fd < 0) return Status::FromErrno(-fd, "open " + path);
  return UniqueFd(fd);
}

Status FsyncDir(const std::string& dir, FileIO& io) {
  int fd = io.Open(dir, O_RDONLY | O_DIRECTORY);
  if (fd < 0) return Status::FromErrno(-fd, "open directory " + dir);
  UniqueFd guard(fd);
  if (int err = io.Fsync(fd)) return Status::FromErrno(err, "fsync directory " + dir);
  return Status::OK();
}

Status RemoveTree(const std::string& path, FileIO& io) {
  int err = io.Unlink(path);
  if (err == 0 || err == ENOENT) return Status::OK();
  if (err != EISDIR && err != EPERM) return Status::FromErrno(err, "remove " + path);
  DIR* d = ::opendir(path.c_str());
  if (d == nullptr) {
    if (errno == ENOENT) return Status::OK();
    return Status::FromErrno(errno, "open directory " + path);
  }
  std::vector<std::string> names;
  errno = 0;
  while (struct dirent* e = ::readdir(d)) {
    std::string_view name = e->d_name;
    if (name != "." && name != "..") names.emplace_back(name);
    errno = 0;
  }
  err = errno;
  ::closedir(d);
  if (err != 0) return Status::FromErrno(err, "read directory " + path);
  for (const auto& name : names) RETURN_IF_ERROR(RemoveTree(path + "/" + name, io));
  err = io.Rmdir(path);
  if (err != 0 && err != ENOENT) return Status::FromErrno(err, "remove " + path);
  return Status::OK();
}

Result<size_t> ReadFull(int fd, MutableByteView buf, std::optional<uint64_t> offset,
                        const std::string& what) {
  size_t done = 0;
  while (done < buf.size()) {
    ssize_t n = offset ? ::pread(fd, buf.data() + done, buf.size() - done,
                                 static_cast<off_t>(*offset + done))
                       : ::read(fd, buf.data() + done, buf.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "read " + what);
    }
    if (n == 0) break;
    done += static_cast<size_t>(n);
  }
  return done;
}

Status WriteFull(int fd, ByteView data, std::optional<uint64_t> offset, const std::string& what) {
  size_t done = 0;
  while (done < data.size()) {
    ssize_t n = offset ? ::pwrite(fd, data.data() + done, data.size() - done,
                                  static_cast<off_t>(*offset + done))
                       : ::write(fd, data.data() + done, data.size() - done);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "write " + what);
    }
    done += static_cast<size_t>(n);
  }
  return Status::OK();
}

Status WriteFileAtomic(const std::string& path, std::string_view data, FileIO& io) {
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string tmp = path + ".tmp." + std::to_string(rng());
  int raw = io.Open(tmp, O_WRONLY | O_CREAT | O_EXCL, 0644);
  if (raw < 0) return Status::FromErrno(-raw, "create " + tmp);
  UniqueFd fd(raw);
  if (Status s =
          WriteFull(fd.get(), ByteView(reinterpret_cast<const uint8_t*>(data.data()), data.size()),
                    std::nullopt, tmp);
      !s.ok()) {
    (void)io.Unlink(tmp);
    return s;
  }
  if (int err = io.Fsync(fd.get())) {
    Status s = Status::FromErrno(err, "fsync " + tmp);
    (void)io.Unlink(tmp);
    return s;
  }
  if (int err = io.Rename(tmp, path)) {
    Status s = Status::FromErrno(err, "rename " + tmp);
    (void)io.Unlink(tmp);
    return s;
  }
  return FsyncDir(dir, io);
}

Result<std::string> ReadFile(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno(errno, "open " + path);
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return Status::FromErrno(errno, "read " + path);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

Status MakeDirs(const std::string& path, FileIO& io) {
  if (path.empty()) return Status::OK();
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) return Status::OK();
    return Status::AlreadyExists(path + " exists and is not a directory");
  }
  size_t slash = path.rfind('/');
  if (slash != std::string::npos && slash > 0) RETURN_IF_ERROR(MakeDirs(path.substr(0, slash), io));
  int err = io.Mkdir(path, 0755);
  if (err == EEXIST) return Status::OK();
  if (err != 0) return Status::FromErrno(err, "mkdir " + path);
  return FsyncDir(slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash), io);
}

namespace {

std::string FsTypeName(const std::string& dir) {
  struct statfs sf {};
  if (::statfs(dir.c_str(), &sf) != 0) return "unknown";
  switch (static_cast<unsigned long>(sf.f_type)) {
    case EXT4_SUPER_MAGIC:
      return "ext4";
    case XFS_SUPER_MAGIC:
      return "xfs";
    case BTRFS_SUPER_MAGIC:
      return "btrfs";
    case TMPFS_MAGIC:
      return "tmpfs";
    default:
      break;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%lx", static_cast<unsigned long>(sf.f_type));
  return buf;
}

// An unnamed file in `dir`, gone with its descriptor.
Result<UniqueFd> OpenScratchFile(const std::string& dir) {
  FileIO& io = FileIO::Current();
  int raw = io.Open(dir, O_TMPFILE | O_RDWR, 0600);
  if (raw >= 0) return UniqueFd(raw);
  if (-raw != EOPNOTSUPP && -raw != EISDIR && -raw != EINVAL) {
    return Status::FromErrno(-raw, "create a file in " + dir);
  }
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string path =
      dir + "/.size-probe." + std::to_string(::getpid()) + "." + std::to_string(rng());
  raw = io.Open(path, O_RDWR | O_CREAT | O_EXCL, 0600);
  if (raw < 0) return Status::FromErrno(-raw, "create " + path);
  (void)io.Unlink(path);
  return UniqueFd(raw);
}

}  // namespace

Result<FileSizeLimit> ProbeFileSizeLimit(const std::string& dir, uint64_t ceiling) {
  constexpr uint64_t kUnit = 4096;
  ASSIGN_OR_RETURN(UniqueFd fd, OpenScratchFile(dir));
  auto fits = [&](uint64_t units) -> Result<bool> {
    if (::ftruncate(fd.get(), static_cast<off_t>(units * kUnit)) == 0) return true;
    if (errno == EFBIG || errno == EINVAL) return false;
    return Status::FromErrno(errno, "truncate a file in " + dir);
  };
  // Binary search over whole 4 KiB units: `lo` fits, `hi` does not.
  uint64_t lo = 0, hi = ceiling / kUnit;
  ASSIGN_OR_RETURN(bool all, fits(hi));
  if (all) {
    lo = hi;
  } else {
    while (hi - lo > 1) {
      uint64_t mid = lo + (hi - lo) / 2;
      ASSIGN_OR_RETURN(bool ok, fits(mid));
      (ok ? lo : hi) = mid;
    }
  }
  return FileSizeLimit{lo * kUnit, FsTypeName(dir)};
}

}  // namespace imgfs
