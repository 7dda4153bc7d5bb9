#include "blockstore/file_util.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <random>

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

Status FsyncDir(const std::string& dir) {
  UniqueFd fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!fd.valid()) return Status::FromErrno(errno, "open directory " + dir);
  if (::fsync(fd.get()) != 0) return Status::FromErrno(errno, "fsync directory " + dir);
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

Status WriteFileAtomic(const std::string& path, std::string_view data) {
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string tmp = path + ".tmp." + std::to_string(rng());
  UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644));
  if (!fd.valid()) return Status::FromErrno(errno, "create " + tmp);
  if (Status s =
          WriteFull(fd.get(), ByteView(reinterpret_cast<const uint8_t*>(data.data()), data.size()),
                    std::nullopt, tmp);
      !s.ok()) {
    ::unlink(tmp.c_str());
    return s;
  }
  if (::fsync(fd.get()) != 0) {
    Status s = Status::FromErrno(errno, "fsync " + tmp);
    ::unlink(tmp.c_str());
    return s;
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    Status s = Status::FromErrno(errno, "rename " + tmp);
    ::unlink(tmp.c_str());
    return s;
  }
  return FsyncDir(dir);
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

Status MakeDirs(const std::string& path) {
  if (path.empty()) return Status::OK();
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) {
    if (S_ISDIR(st.st_mode)) return Status::OK();
    return Status::AlreadyExists(path + " exists and is not a directory");
  }
  size_t slash = path.rfind('/');
  if (slash != std::string::npos && slash > 0) RETURN_IF_ERROR(MakeDirs(path.substr(0, slash)));
  if (::mkdir(path.c_str(), 0755) != 0 && errno != EEXIST) {
    return Status::FromErrno(errno, "mkdir " + path);
  }
  return Status::OK();
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
  UniqueFd fd(::open(dir.c_str(), O_TMPFILE | O_RDWR | O_CLOEXEC, 0600));
  if (fd.valid()) return fd;
  if (errno != EOPNOTSUPP && errno != EISDIR && errno != EINVAL) {
    return Status::FromErrno(errno, "create a file in " + dir);
  }
  thread_local std::mt19937_64 rng{std::random_device{}()};
  std::string path =
      dir + "/.size-probe." + std::to_string(::getpid()) + "." + std::to_string(rng());
  fd = UniqueFd(::open(path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd.valid()) return Status::FromErrno(errno, "create " + path);
  ::unlink(path.c_str());
  return fd;
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
