// The mount's file system, as a plain class: the namespace, the inode table
// and open files, over a Store. The libfuse adapter (fuse_adapter.h) turns
// each FUSE request into one call here; unit tests call it directly.
//
// Namespace (docs/design.md §6):
//   /                       root (inode 1)
//   /_base/                 read-only directory of images
//   /_base/<image id>       read-only file: the raw bytes of an image
//   /<instance>/            one directory per instance of the disk backend
//   /<instance>/<disk>      read-write file: one disk
// Nothing is cached about the namespace beyond the inodes the kernel holds:
// every lookup and directory listing asks the store, so disks created or
// removed with the command line appear and vanish without a remount.
//
// Errors: every method returns a Status (or Result) whose ToErrno() is what
// the kernel sees. Names that break the rules of blockstore/names.h are
// InvalidArgument (EINVAL); files or directories at the wrong level are
// PermissionDenied (EPERM); anything written under _base is ReadOnly (EROFS);
// removing or renaming an open disk is Busy (EBUSY).
//
// Thread safety: every method may be called from many threads at once.
// Lock order (acquire in this order, never the reverse):
//   1. ns_mu_  serialises namespace changes (create, mkdir, unlink, rmdir,
//              rename) and the opening and closing of disks; it may be held
//              across store calls.
//   2. mu_     guards the inode table and the handle table; held only for
//              short sections, never across store calls or I/O.
//   3. OpenFile::mu  guards one open file's Disk pointer; short sections only.
// Disk I/O (read, write, discard, flush) runs with no lock of this class held.
// retire_mu_ is a leaf: nothing else is acquired while it is held.
#pragma once

#include <sys/stat.h>
#include <sys/statvfs.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <vector>

#include "blockstore/disk.h"
#include "blockstore/image.h"
#include "blockstore/mutex.h"
#include "blockstore/status.h"
#include "cache/store.h"
#include "fusefs/metrics.h"

namespace imgfs::fusefs {

inline constexpr uint64_t kRootIno = 1;
inline constexpr uint64_t kBaseDirIno = 2;
inline constexpr const char* kBaseDirName = "_base";

struct FsOptions {
  bool allow_shrink = false;  // -o allow_shrink: a smaller size shrinks instead of EPERM
  // How long the kernel may cache names and attributes (seconds).
  double entry_timeout = 1.0;
  double attr_timeout = 1.0;
  // Page-cache policy for opens without O_DIRECT: true bypasses the page
  // cache (FOPEN_DIRECT_IO) for every open. O_DIRECT opens always bypass it.
  bool direct_io_always = false;
  // unlink and rename of an open disk: a disk with a handle still in use
  // is EBUSY at once. One whose every handle got its FLUSH (close(2)) with
  // no request since is waiting for its RELEASE, which the kernel sends just
  // after close() returns: they wait for it, at most this long (a dup'd
  // descriptor or a mapping can keep a closed file open), then EBUSY.
  int release_grace_ms = 1000;
  uid_t uid = 0;  // owner of the directories (the mounting user)
  gid_t gid = 0;
};

enum class NodeKind : uint8_t { kRoot, kBaseDir, kImage, kInstance, kDisk };

// The result of a lookup or create: an inode the kernel now holds one more
// lookup reference to, and its attributes.
struct Entry {
  uint64_t ino = 0;
  struct stat attr {};
};

struct DirEntry {
  std::string name;
  uint64_t ino = 0;
  mode_t type = 0;  // S_IFDIR or S_IFREG
};

// What open and create hand back to the kernel.
struct OpenReply {
  uint64_t fh = 0;
  bool direct_io = false;  // bypass the page cache for this open
  bool keep_cache = false;
};

// Who is asking (FUSE's request context); used for the owner of new disks.
// The kernel has already applied the caller's umask to modes it passes.
struct Caller {
  uid_t uid = 0;
  gid_t gid = 0;
};

// Which attributes SetAttr changes (a subset of the FUSE_SET_ATTR_* bits).
struct AttrChange {
  std::optional<uint64_t> size;
  std::optional<mode_t> mode;
  std::optional<uid_t> uid;
  std::optional<gid_t> gid;
  bool times = false;  // atime/mtime: accepted, not stored (mtime is the backend's)
};

// What the kernel holds of a mount, which a successor server needs to take
// it over (docs/operations.md, "Crashes and upgrades"): the inode number of
// every name the kernel may still use, and the open file and directory
// handles. Inode numbers are never reused within a mount.
struct FsState {
  struct Open {
    uint64_t ino = 0;
    int flags = 0;  // open(2)'s, without O_CREAT, O_EXCL and O_TRUNC
  };
  std::map<std::string, uint64_t> inos;  // name key ("d/<instance>/<disk>"...) -> inode
  std::map<uint64_t, Open> opens;        // file handle -> what was opened
  std::map<uint64_t, uint64_t> dirs;     // directory handle -> inode
  uint64_t next_ino = 3;                 // the next inode number to hand out
  uint64_t next_fh = 1;                  // the next handle number to hand out
};

// Receives every change to the FsState as it happens, before the reply that
// lets the kernel see it. Called with the file system's locks held: it must
// not block for long and must not call back into the FileSystem.
class StateSink {
 public:
  virtual ~StateSink() = default;
  virtual void Bind(const std::string& key, uint64_t ino) = 0;
  virtual void Unbind(const std::string& key) = 0;
  virtual void Opened(uint64_t fh, const FsState::Open& open) = 0;
  virtual void Released(uint64_t fh) = 0;
  virtual void DirOpened(uint64_t dh, uint64_t ino) = 0;
  virtual void DirReleased(uint64_t dh) = 0;
};

class FileSystem {
 public:
  // `store` must outlive the FileSystem.
  FileSystem(Store& store, FsOptions options);
  ~FileSystem();
  FileSystem(const FileSystem&) = delete;
  FileSystem& operator=(const FileSystem&) = delete;

  const FsOptions& options() const { return opts_; }

  // Resolves `name` in directory `parent` and takes one lookup reference on
  // the inode (released with Forget). NotFound (ENOENT) when absent.
  Result<Entry> Lookup(uint64_t parent, std::string_view name);
  // Drops `nlookup` lookup references; the inode is forgotten at zero.
  void Forget(uint64_t ino, uint64_t nlookup);

  // Attributes of an inode. NotFound when it has vanished (e.g. `imgfs disk
  // rm` from the command line).
  Result<struct stat> GetAttr(uint64_t ino);
  // Changes attributes. A size change grows the disk in O(1); a smaller size
  // is PermissionDenied unless allow_shrink. Mode and owner persist through
  // DiskBackend::SetAttrs. `fh` is the open file when the kernel names one.
  Result<struct stat> SetAttr(uint64_t ino, const AttrChange& change, std::optional<uint64_t> fh);

  // Directories. OpenDir snapshots the listing; ReadDir pages through it
  // from entry index `offset` (entries "." and ".." included).
  Result<uint64_t> OpenDir(uint64_t ino);
  Result<std::vector<DirEntry>> ReadDir(uint64_t dh, uint64_t offset);
  void ReleaseDir(uint64_t dh);

  // Namespace changes.
  Result<Entry> MkDir(uint64_t parent, std::string_view name, mode_t mode, const Caller& who);
  Status RmDir(uint64_t parent, std::string_view name);
  // Creates a blank thin disk of size 0 (grown by truncate or by writing) and
  // opens it. `flags` are open(2)'s.
  Result<std::pair<Entry, OpenReply>> Create(uint64_t parent, std::string_view name, mode_t mode,
                                             int flags, const Caller& who);
  // Creates a blank disk without opening it (mknod of a regular file).
  Result<Entry> MkNod(uint64_t parent, std::string_view name, mode_t mode, const Caller& who);
  Status Unlink(uint64_t parent, std::string_view name);
  // RENAME_NOREPLACE is honoured; RENAME_EXCHANGE is NotSupported. Without
  // NOREPLACE an existing target disk that nobody has open is replaced.
  Status Rename(uint64_t parent, std::string_view name, uint64_t new_parent,
                std::string_view new_name, unsigned int flags);

  // Files. Opening a disk for writing takes the backend's lock (Busy when
  // another process writes it) and records a use of its parent image. Opening
  // anything under _base for writing is ReadOnly (EROFS).
  Result<OpenReply> Open(uint64_t ino, int flags);
  // Reads up to buf.size() bytes at `offset`; short at the end of the file.
  Result<size_t> Read(uint64_t fh, uint64_t offset, MutableByteView buf);
  // Writes all of `data`; a write past the end grows the disk first.
  Result<size_t> Write(uint64_t fh, uint64_t offset, ByteView data);
  // fallocate(2): PUNCH_HOLE|KEEP_SIZE and ZERO_RANGE discard; mode 0 grows
  // the file when the range passes its end and is otherwise a no-op.
  Status Fallocate(uint64_t fh, int mode, uint64_t offset, uint64_t length);

  // Asynchronous forms of Read, Write, Fallocate, Flush and Fsync (the
  // synchronous ones wait for these). The checks, and any growth of the disk,
  // run before the call returns; the disk I/O itself is the disk's async form
  // (Disk::ReadBuffersAsync...), so a remote disk keeps many requests in
  // flight without a thread each. `done` is called exactly once, possibly
  // before the call returns, possibly on the disk backend's completion
  // thread: it must not block and must not call back into this class. A
  // write's `data` is read only before WriteAsync returns. Errors are as for
  // the synchronous forms. A read's bytes come in the disk's own buffers (up
  // to `size` bytes; fewer at the end of the file), so the mount replies
  // without copying them.
  using SizeCallback = std::function<void(Result<size_t>)>;
  using StatusCallback = std::function<void(Status)>;
  void ReadAsync(uint64_t fh, uint64_t offset, size_t size, Disk::ReadBuffersCallback done);
  void WriteAsync(uint64_t fh, uint64_t offset, ByteView data, SizeCallback done);
  void FallocateAsync(uint64_t fh, int mode, uint64_t offset, uint64_t length, StatusCallback done);
  void FlushAsync(uint64_t fh, StatusCallback done);
  void FsyncAsync(uint64_t fh, StatusCallback done);
  // lseek(2) for SEEK_DATA and SEEK_HOLE: the next offset at or after
  // `offset` that holds data (or is a hole; the end of the file counts as a
  // hole). nullopt when there is none: the kernel's ENXIO.
  Result<std::optional<uint64_t>> Lseek(uint64_t fh, uint64_t offset, int whence);
  // close(2) of one descriptor: makes what this open file wrote durable and
  // returns the error if that fails.
  Status Flush(uint64_t fh);
  // fsync/fdatasync: Disk::Flush; its error is returned.
  Status Fsync(uint64_t fh);
  // The last close of an open file. Flushes if anything is unflushed (an
  // error is logged: release cannot report it) and closes the disk when no
  // other open file uses it.
  void Release(uint64_t fh);

  // statfs: the disk backend's real capacity and free space.
  Result<struct statvfs> StatFs();

  // Flushes every open disk and closes them (unmount). Returns the first error.
  Status Shutdown();

  // Take-over (docs/operations.md, "Crashes and upgrades"). SetStateSink
  // makes every later change reach `sink` (null: none); call it before
  // serving. Snapshot is the current state. Restore, on a FileSystem that
  // has served nothing yet, takes over `state` from a predecessor: names keep
  // their inode numbers, and each open handle is opened again under its old
  // number (a disk open for writing takes the backend's lock again). A
  // handle that cannot be opened again stays known, and every request on it
  // fails with IOError naming the cause; their number is returned.
  void SetStateSink(StateSink* sink);
  FsState Snapshot();
  size_t Restore(const FsState& state);

  // How the mount makes the kernel drop the attributes it keeps of inode
  // `ino` (FUSE's notify_inval_inode), called when another client changed
  // an open disk's size (Disk::SetHeaderListener; docs/rbd.md, "Size").
  // Null: none. The FUSE server sets it once it has a session and clears
  // it before the session ends; a call in progress finishes first.
  void SetAttrInvalidator(std::function<void(uint64_t ino)> invalidate);

  // The mount's live counters (docs/operations.md, "Metrics").
  MountMetrics& metrics() { return metrics_; }

  // For tests: how many inodes the kernel holds and how many files are open.
  size_t InodeCountForTest();
  size_t OpenFileCountForTest();

 private:
  struct OpenFile;
  struct Node;
  struct Handle;
  struct DirHandle;

  Result<std::shared_ptr<Node>> GetNode(uint64_t ino);
  Result<std::shared_ptr<Handle>> GetHandle(uint64_t fh);
  // The open file behind handle `fh`, marked used, when it is a disk opened
  // for writing; ReadOnly for an image, PermissionDenied for a read-only open.
  Result<std::shared_ptr<OpenFile>> GetWritableFile(uint64_t fh);
  // Finds or makes the inode for `key`, optionally taking a lookup reference.
  std::shared_ptr<Node> NodeFor(const std::string& key, NodeKind kind, const std::string& instance,
                                const std::string& disk, const ImageId& image, bool take_ref);
  uint64_t InoFor(const std::string& key) REQUIRES(mu_);
  // Binds or unbinds a name's inode number, and tells the state sink.
  void BindLocked(const std::string& key, uint64_t ino) REQUIRES(mu_);
  void MoveKeyLocked(const std::string& from, const std::string& to) REQUIRES(mu_);
  // The node for an inode the kernel holds but no Node is cached for (it
  // was forgotten, or a predecessor server made it): rebuilt from its name.
  std::shared_ptr<Node> NodeFromKeyLocked(uint64_t ino, const std::string& key) REQUIRES(mu_);
  Result<std::vector<DirEntry>> ListDir(const std::shared_ptr<Node>& node);
  Result<struct stat> StatOf(const Node& node);
  Result<struct stat> StatDisk(const Node& node);
  Result<struct stat> StatImage(const Node& node);
  Result<Entry> LookupDisk(const std::string& instance, std::string_view name);
  Status WaitUntilClosed(const std::shared_ptr<Node>& node) REQUIRES(ns_mu_);
  Status GrowTo(OpenFile& of, uint64_t end);
  // A disk taken out of an open file (close, upgrade to writable, unmount) is
  // flushed and destroyed only once no asynchronous request holds it any
  // more (WaitIdle), on the thread that took it out: never on a backend's
  // completion thread, where the callbacks let go of it (DropDisk) after
  // their `done` ran: Shutdown returns only once every reply was made.
  void WaitIdle(const std::shared_ptr<Disk>& disk);
  void DropDisk(std::shared_ptr<Disk> disk);
  // Reopens an open file's disk for writing (taking the backend's write
  // lock, or in standby: OpenMode::kReadWriteStandby) unless it already is;
  // the read-only disk goes through WaitIdle.
  Status UpgradeToWritable(OpenFile& of, const DiskRef& ref);
  // Whether a disk of `instance` is open through this file system.
  bool HasOpenDisk(std::string_view instance);
  // The last handle open for writing was released while read-only ones
  // remain: the disk stops writing (Disk::StopWriting: flush, release the
  // backend's write lock, keep the handle for reads), or, where the backend
  // cannot, is reopened read-only (the writable disk flushed and closed; if
  // the reopen fails it stays open, and locked). qemu's migration source
  // reopens its image read-only when the migration completes; the
  // destination then takes the lock. A flush error is logged.
  void DowngradeToReadOnly(OpenFile& of, const DiskRef& ref);
  // Opens `node`; the new handle gets number `fh` when given (Restore),
  // else the next one.
  Result<OpenReply> OpenNodeLocked(const std::shared_ptr<Node>& node, int flags,
                                   std::optional<uint64_t> fh = std::nullopt);
  void ForgetNameLocked(const std::string& key) REQUIRES(mu_);
  // Wires a disk just opened for `of` to the mount: its local-read counter
  // and its header listener (SetAttrInvalidator).
  void AttachDisk(Disk& disk, const OpenFile& of);
  void InvalidateAttr(uint64_t ino);
  void KeepInstance(const std::string& instance);
  Result<uint64_t> ParentDataBytes(const ImageId& image);

  Store& store_;
  DiskBackend& disks_;
  const FsOptions opts_;
  const int64_t mount_time_ns_;
  MountMetrics metrics_;

  Mutex ns_mu_;
  Mutex mu_ ACQUIRED_AFTER(ns_mu_);
  CondVar closed_cv_;  // with mu_: an open file was released
  uint64_t next_ino_ GUARDED_BY(mu_) = 3;
  uint64_t next_fh_ GUARDED_BY(mu_) = 1;
  std::unordered_map<std::string, uint64_t> ino_of_ GUARDED_BY(mu_);
  std::unordered_map<uint64_t, std::string> key_of_ GUARDED_BY(mu_);  // ino_of_ reversed
  StateSink* sink_ GUARDED_BY(mu_) = nullptr;
  std::unordered_map<uint64_t, std::shared_ptr<Node>> nodes_ GUARDED_BY(mu_);
  std::unordered_map<uint64_t, std::shared_ptr<Handle>> handles_ GUARDED_BY(mu_);
  std::unordered_map<uint64_t, std::shared_ptr<DirHandle>> dirs_ GUARDED_BY(mu_);
  std::unordered_map<ImageId, uint64_t> parent_data_bytes_ GUARDED_BY(mu_);
  Mutex retire_mu_;  // leaf lock: with retire_cv_, an async request let go of its disk
  CondVar retire_cv_;
  Mutex inval_mu_;  // leaf lock, held across a call of invalidate_
  std::function<void(uint64_t)> invalidate_ GUARDED_BY(inval_mu_);
};

}  // namespace imgfs::fusefs
