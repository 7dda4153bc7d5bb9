// The file-layer seam of the local backends (docs/architecture.md, "The
// file-layer seam"). The dir chunk backend, the local disk backend and the
// atomic-write helpers of file_util.h open, create, link, rename, unlink,
// make and remove directories, and sync through a FileIO; nothing of theirs
// calls those system calls directly. Reads and writes are not part of it:
// they are pread/pwrite on the descriptors it hands out, so the hot path is
// one system call as before.
//
// The calls are shaped like the system calls they stand for: 0 on success or
// an errno value (Open: a descriptor, or -errno), so that callers keep their
// errno tests (EEXIST, ENOENT...) and turn errno into a Status only through
// Status::FromErrno.
//
// FileIO::Current() is the POSIX implementation unless a test installed
// another with ScopedFileIO (blockstore/fault_file_io.h: simulated power
// cuts). A backend takes the current one when it is made and keeps it.
//
// Thread safety: every implementation may be called from many threads.
#pragma once

#include <sys/types.h>

#include <string>

namespace imgfs {

class FileIO {
 public:
  virtual ~FileIO() = default;

  // The POSIX implementation: the system calls, nothing else.
  static FileIO& Posix();
  // The one in use: Posix() unless a ScopedFileIO is alive.
  static FileIO& Current();

  // open(2) with O_CLOEXEC added, retried on EINTR. O_TMPFILE makes an
  // unnamed file in directory `path`.
  virtual int Open(const std::string& path, int flags, mode_t mode = 0644) = 0;
  // Gives the unnamed (O_TMPFILE) file open as `fd` the name `dest` (linkat
  // through /proc/self/fd); EEXIST when `dest` exists.
  virtual int LinkFd(int fd, const std::string& dest) = 0;
  // link(2).
  virtual int Link(const std::string& from, const std::string& to) = 0;
  // renameat2(2) with `flags` (0 or RENAME_NOREPLACE).
  virtual int Rename(const std::string& from, const std::string& to, unsigned flags = 0) = 0;
  virtual int Unlink(const std::string& path) = 0;
  virtual int Mkdir(const std::string& path, mode_t mode = 0755) = 0;
  virtual int Rmdir(const std::string& path) = 0;
  // fsync(2), fdatasync(2), syncfs(2) of `fd` (a file or a directory).
  virtual int Fsync(int fd) = 0;
  virtual int Fdatasync(int fd) = 0;
  virtual int Syncfs(int fd) = 0;
};

// Makes `io` FileIO::Current() for its lifetime (tests only). Backends made
// meanwhile keep using it after it ends; scopes do not nest across threads.
class ScopedFileIO {
 public:
  explicit ScopedFileIO(FileIO* io);
  ~ScopedFileIO();
  ScopedFileIO(const ScopedFileIO&) = delete;
  ScopedFileIO& operator=(const ScopedFileIO&) = delete;

 private:
  FileIO* previous_;
};

}  // namespace imgfs
