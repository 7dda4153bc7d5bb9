// Small POSIX file helpers shared by the local backends and the store.
// Every error comes back as a Status made by Status::FromErrno with the path.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "blockstore/file_io.h"
#include "blockstore/status.h"

namespace imgfs {

// Writes `data` to `path` atomically and durably: a temp file in the same
// directory, fsync, rename over `path`, fsync of the directory. A crash
// leaves either the old file or the new one, never a partial one.
Status WriteFileAtomic(const std::string& path, std::string_view data,
                       FileIO& io = FileIO::Current());

// Reads a whole file. NotFound when it does not exist.
Result<std::string> ReadFile(const std::string& path);

// Reads into `buf` until it is full or the file ends: with pread at `offset`,
// or from the current position when there is none (pipes, stdin). Returns the
// bytes read, short only at the end of the file. Retries EINTR; errors are
// "read <what>".
Result<size_t> ReadFull(int fd, MutableByteView buf, std::optional<uint64_t> offset,
                        const std::string& what);
// Writes all of `data`: with pwrite at `offset`, or at the current position
// when there is none. Retries EINTR; errors are "write <what>".
Status WriteFull(int fd, ByteView data, std::optional<uint64_t> offset, const std::string& what);

// fsync of a directory (makes renames and creations in it durable).
Status FsyncDir(const std::string& dir, FileIO& io = FileIO::Current());

// mkdir -p with mode 0755. OK when it already exists as a directory. Each
// directory it makes is made durable (fsync of its parent).
Status MakeDirs(const std::string& path, FileIO& io = FileIO::Current());

// Removes `path` and everything under it (rm -rf); OK when it is missing.
// Not durable until the caller syncs the parent directory.
Status RemoveTree(const std::string& path, FileIO& io = FileIO::Current());

// The largest size a file in `dir` can have, as its file system says when
// asked for it: the size up to which ftruncate(2) of a new file in `dir`
// succeeds (EFBIG beyond; the same limit, s_maxbytes, bounds pwrite(2) and
// fallocate(2)), rounded down to 4 KiB and at most `ceiling`. pathconf's
// _PC_FILESIZEBITS cannot tell: it says 64 on ext4, whose files end at
// 16 TiB - 4 KiB with 4 KiB blocks. The file is unnamed (O_TMPFILE; a named
// one removed at once where that is lacking) and stays sparse: a few dozen
// ftruncate calls, no data. `fs_type` names the file system for messages:
// "ext4" (also ext2/ext3), "xfs", "btrfs", "tmpfs", else its statfs magic.
struct FileSizeLimit {
  uint64_t max_size = 0;
  std::string fs_type;
};
Result<FileSizeLimit> ProbeFileSizeLimit(const std::string& dir, uint64_t ceiling);

// A file descriptor closed on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept;
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd();
  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }

 private:
  int fd_ = -1;
};

// io.Open as a UniqueFd; errors are "open <path>".
Result<UniqueFd> OpenFd(FileIO& io, const std::string& path, int flags, mode_t mode = 0644);

}  // namespace imgfs
