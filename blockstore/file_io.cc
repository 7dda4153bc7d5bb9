#include "blockstore/file_io.h"

#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>

namespace imgfs {
namespace {

int Errno(int rc) { return rc == 0 ? 0 : errno; }

class PosixFileIO final : public FileIO {
 public:
  int Open(const std::string& path, int flags, mode_t mode) override {
    int fd;
    do {
      fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
    } while (fd < 0 && errno == EINTR);
    return fd >= 0 ? fd : -errno;
  }
  int LinkFd(int fd, const std::string& dest) override {
    char proc[32];
    std::snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    return Errno(::linkat(AT_FDCWD, proc, AT_FDCWD, dest.c_str(), AT_SYMLINK_FOLLOW));
  }
  int Link(const std::string& from, const std::string& to) override {
    return Errno(::link(from.c_str(), to.c_str()));
  }
  int Rename(const std::string& from, const std::string& to, unsigned flags) override {
    if (flags == 0) return Errno(::rename(from.c_str(), to.c_str()));
    return Errno(::renameat2(AT_FDCWD, from.c_str(), AT_FDCWD, to.c_str(), flags));
  }
  int Unlink(const std::string& path) override { return Errno(::unlink(path.c_str())); }
  int Mkdir(const std::string& path, mode_t mode) override {
    return Errno(::mkdir(path.c_str(), mode));
  }
  int Rmdir(const std::string& path) override { return Errno(::rmdir(path.c_str())); }
  int Fsync(int fd) override { return Errno(::fsync(fd)); }
  int Fdatasync(int fd) override { return Errno(::fdatasync(fd)); }
  int Syncfs(int fd) override { return Errno(::syncfs(fd)); }
};

std::atomic<FileIO*> g_current{nullptr};

}  // namespace

FileIO& FileIO::Posix() {
  static PosixFileIO posix;
  return posix;
}

FileIO& FileIO::Current() {
  FileIO* io = g_current.load(std::memory_order_acquire);
  return io ? *io : Posix();
}

ScopedFileIO::ScopedFileIO(FileIO* io) : previous_(g_current.exchange(io)) {}

ScopedFileIO::~ScopedFileIO() { g_current.store(previous_); }

}  // namespace imgfs
