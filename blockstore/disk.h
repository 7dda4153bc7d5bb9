// The disk backend: writable, thin, copy-on-write disks over images.
//
// A disk is named INSTANCE/DISK and is either a clone of a stored image (its
// parent) or blank. Implementations, chosen by the store's configuration:
//   - "local": an overlay in the store directory (docs/design.md §4);
//   - "mem":   in memory, for unit tests;
//   - "rbd:POOL": an RBD clone of the image published into POOL (docs/design.md §5).
//
// Semantics every implementation keeps (checked by tests/blockstore/
// disk_conformance_test.cc):
//   - unwritten ranges read as the parent's bytes, or zeros for holes, for a
//     blank disk, and beyond the parent's end (or beyond any size the disk was
//     ever shrunk to: the "parent overlap");
//   - Resize is O(1) and only grows unless allow_shrink is set;
//   - Discard makes the range read back as zeros and releases space where it
//     covers whole allocation units;
//   - after Flush returns OK, every write acknowledged before it survives a
//     crash of the process; a crash may lose only what was not flushed;
//   - a disk opened for writing is locked: a second Open for writing, and
//     Remove, from this or any other process, fail with Busy ("in use").
//     OpenMode::kReadWriteStandby relaxes the second Open, not the lock (see
//     there).
#pragma once

#include <cstdint>
#include <functional>
#include <atomic>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "blockstore/chunk_backend.h"
#include "blockstore/hash.h"
#include "blockstore/image.h"
#include "blockstore/names.h"
#include "blockstore/status.h"

namespace imgfs {

// Allocation unit of blank disks (disks made from an image use the image's
// chunk size, so that a copy-up reads exactly one parent chunk).
inline constexpr uint32_t kBlankDiskChunkSize = 64 * 1024;
// The largest disk size accepted (1 PiB), by every backend.
inline constexpr uint64_t kMaxDiskSize = uint64_t{1} << 50;

struct Extent {
  uint64_t offset = 0;
  uint64_t length = 0;
  bool operator==(const Extent&) const = default;
};

// File attributes the mount shows and persists (libvirt relabels disk files).
struct DiskAttrs {
  uint32_t mode = 0644;  // permission bits only
  uint32_t uid = 0;
  uint32_t gid = 0;
};

struct DiskInfo {
  DiskRef ref;
  uint64_t size = 0;
  uint64_t owned_bytes = 0;  // bytes the disk itself stores (not shared with its parent)
  std::optional<ImageId> parent;
  DiskAttrs attrs;
  int64_t mtime_ns = 0;  // last modification, nanoseconds since the epoch
  std::string location;  // backend-specific: a directory, or "rbd:pool/name"
};

// kReadWriteStandby: as kReadWrite, except that when another client holds
// the disk's write lock the open succeeds anyway, "in standby": reads work,
// and the first write, discard or resize takes the lock, waiting up to a few
// seconds for a holder that is letting it go (a live migration hands the
// disk over this way, docs/rbd.md "Live migration"), else fails with Busy
// and writes nothing. Flush of a disk that never held the lock is OK (it
// wrote nothing). Backends that cannot hand a disk over between clients
// (local, mem) treat it as kReadWrite.
enum class OpenMode : uint8_t { kReadOnly, kReadWrite, kReadWriteStandby };

// Bytes read into buffers the disk chose, so that the caller can pass them
// on without copying them (the mount replies with them): `pieces`, in order,
// stay valid while `owner` lives.
struct ReadBuffers {
  std::vector<ByteView> pieces;
  std::shared_ptr<const void> owner;

  size_t size() const;
  // Copies the bytes into `out`, which must hold size() bytes.
  void CopyTo(MutableByteView out) const;
};

// An open disk. Thread safety: Read, Write, Discard, Flush, Resize, Allocated
// and the async forms may all be called from many threads at once; Resize is
// serialised against I/O internally. Destroying a writable handle flushes it
// (as rbd_close does) and logs an error it cannot return: call Flush first to
// see errors. Unflushed writes survive a close; only a crash may lose them.
class Disk {
 public:
  using Callback = std::function<void(Status)>;

  virtual ~Disk() = default;

  virtual const DiskRef& ref() const = 0;
  virtual uint64_t size() const = 0;
  virtual bool writable() const = 0;

  // Reads `buf.size()` bytes at `offset`. The range must lie within size().
  virtual Status Read(uint64_t offset, MutableByteView buf) = 0;
  // Writes within size() (InvalidArgument beyond it; grow with Resize first).
  virtual Status Write(uint64_t offset, ByteView buf) = 0;
  // The range reads back as zeros afterwards. The part beyond size() is
  // ignored.
  virtual Status Discard(uint64_t offset, uint64_t length) = 0;
  // Makes every acknowledged write and the metadata durable. Errors are
  // always returned, never dropped.
  virtual Status Flush() = 0;
  // O(1). A size below the current one is refused with PermissionDenied
  // (the mount's EPERM) unless allow_shrink.
  virtual Status Resize(uint64_t new_size, bool allow_shrink) = 0;
  // The extents within [offset, offset+length) that hold data (written, or
  // data of the parent); everything else reads as zeros. Used for
  // SEEK_DATA/SEEK_HOLE. May over-report data, never under-report.
  virtual Result<std::vector<Extent>> Allocated(uint64_t offset, uint64_t length) = 0;

  // Asynchronous forms: `done` is called exactly once, possibly on another
  // thread, possibly before the call returns. A read's buffer must stay
  // valid until then; WriteAsync reads `buf` only before it returns (it is
  // written, or copied, by then: rbd copies it into librbd's request), so
  // the caller may reuse it at once. The defaults run the synchronous call
  // inline.
  virtual void ReadAsync(uint64_t offset, MutableByteView buf, Callback done);
  virtual void WriteAsync(uint64_t offset, ByteView buf, Callback done);
  virtual void DiscardAsync(uint64_t offset, uint64_t length, Callback done);
  virtual void FlushAsync(Callback done);

  // Stops writing in place: flushes, releases the backend's write lock
  // (another client may take it at once) and makes the handle read-only
  // (writes fail with ReadOnly; reads go on). The flush's error is returned;
  // the lock is released anyway. NotSupported when the backend cannot (the
  // caller reopens the disk read-only instead); OK for a read-only handle.
  virtual Status StopWriting() { return Status::NotSupported("stop writing in place"); }

  // Makes a read-only handle writable in place, as if opened again with
  // OpenMode::kReadWriteStandby (the write lock is taken now when it is
  // free, else at the first write), without a second open: a migration's
  // destination qemu opens its disk read-only while it waits and for
  // writing when it takes over, and that open is in the VM's downtime. OK
  // for a handle already writable. NotSupported when the backend cannot
  // (the caller opens the disk again); a handle that StopWriting made
  // read-only cannot.
  virtual Status StartWriting() { return Status::NotSupported("start writing in place"); }

  // Where to count the bytes of reads served from the local store instead
  // of the disk's backend (rbd: a clone's parent, docs/rbd.md); backends
  // that have no such reads ignore it. Set before the disk is shared.
  virtual void SetLocalReadCounter(std::shared_ptr<std::atomic<uint64_t>> bytes) { (void)bytes; }

  // Called, on a thread of the backend's, when another client changed the
  // disk's header (its size, after `rbd resize`): the mount then drops the
  // attributes the kernel keeps (docs/rbd.md, "Size"). Backends whose
  // disks only this handle changes ignore it. Set before the disk is
  // shared; the listener must stay valid while the disk lives.
  virtual void SetHeaderListener(std::function<void()> listener) { (void)listener; }

  // Reads `length` bytes at `offset` (within size()) into buffers of the
  // disk's choosing; `done` as for the async forms above. The default
  // allocates one buffer and calls ReadAsync; rbd hands over the buffers
  // librbd received the data in, which saves copying every byte once.
  using ReadBuffersCallback = std::function<void(Result<ReadBuffers>)>;
  virtual void ReadBuffersAsync(uint64_t offset, size_t length, ReadBuffersCallback done);
};

// An image published into the disk backend so that disks can be clones of it
// (rbd: the RBD image imgfs.base.<id>), or a half-done publication.
struct PublishedImage {
  ImageId image;
  std::string location;             // "rbd:pool/imgfs.base.<id>"
  uint64_t used_bytes = 0;          // allocated bytes, in whole RBD objects (as `rbd du`)
  bool complete = true;             // false: a publication that never finished
  bool in_progress = false;         // still under its temporary name (rbd: imgfs.tmp.*)
  std::vector<std::string> clones;  // "pool[/ns]/name" of every clone (complete ones only)
};

// The largest size a backend can hold for a disk, and what sets it.
struct DiskSizeLimit {
  uint64_t max_bytes = 0;
  std::string reason;  // "the largest file ext4 allows in /var/lib/imgfs/disks"
};

struct DiskCreateOptions {
  std::optional<ImageId> image;  // parent; nullopt for a blank disk
  std::optional<uint64_t> size;  // default: the image's size; required if blank
  DiskAttrs attrs;
};

// Thread safety: every method may be called from many threads at once.
class DiskBackend {
 public:
  virtual ~DiskBackend() = default;

  virtual std::string Describe() const = 0;  // "local", "mem:", "rbd:pool"

  // Creates a disk. AlreadyExists if it exists; NotFound if the image does
  // not; InvalidArgument if size is smaller than the image or missing for a
  // blank disk. Creating the instance directory is implicit.
  virtual Status Create(const DiskRef& ref, const DiskCreateOptions& opts) = 0;
  virtual Result<std::unique_ptr<Disk>> Open(const DiskRef& ref, OpenMode mode) = 0;
  // Busy ("in use") when open for writing anywhere.
  virtual Status Remove(const DiskRef& ref) = 0;
  // Renames within the backend, keeping data. Busy when open for writing;
  // AlreadyExists when `to` exists.
  virtual Status Rename(const DiskRef& from, const DiskRef& to) = 0;
  virtual Result<DiskInfo> Info(const DiskRef& ref) = 0;
  // Info of each of `refs`, in order (NotFound for one that is gone): what
  // listings use. The default asks Info for each; rbd reads the headers of
  // all of them in batches (docs/rbd.md, "Listing and lookup").
  virtual std::vector<Result<DiskInfo>> InfoMany(const std::vector<DiskRef>& refs);
  // Resizes a disk that is not open (the command line's `disk resize`). Busy
  // when it is open for writing; PermissionDenied for a refused shrink.
  virtual Status Resize(const DiskRef& ref, uint64_t new_size, bool allow_shrink) = 0;
  virtual Status SetAttrs(const DiskRef& ref, const DiskAttrs& attrs) = 0;

  // The largest size this backend can hold for a disk whose allocation unit
  // is `chunk_size` (a clone's is its image's chunk size, a blank disk's
  // kBlankDiskChunkSize). Create, Resize and an open Disk's Resize refuse
  // a larger size with TooLarge (the mount's EFBIG) and change nothing. Not
  // OK only when the backend cannot find out (local: the probe of its file
  // system failed). docs/operations.md, "Disk sizes", has the limits.
  virtual Result<DiskSizeLimit> MaxDiskSize(uint32_t chunk_size) = 0;

  // Instances: directories that hold disks. An instance exists while it has
  // disks or after CreateInstance (AlreadyExists if it exists). One made only
  // by creating a disk in it vanishes with its last disk; one made by
  // CreateInstance stays until RemoveInstance, which is NotEmpty while it has
  // disks. List of a missing instance is NotFound.
  virtual Status CreateInstance(const std::string& instance) = 0;
  virtual Status RemoveInstance(const std::string& instance) = 0;
  virtual Result<std::vector<std::string>> ListInstances() = 0;
  // Disks of one instance, or of all instances when `instance` is empty.
  virtual Result<std::vector<DiskRef>> List(const std::string& instance) = 0;

  // Space for statfs.
  virtual Result<SpaceInfo> Space() = 0;

  // Published images (rbd: imgfs.base.<id> with their clones, and half-done
  // imgfs.tmp.<id>.* publications). Empty for backends that publish nothing.
  virtual Result<std::vector<PublishedImage>> ListPublished() {
    return std::vector<PublishedImage>{};
  }
  // Removes the publication of `id` and the leftovers of its half-done
  // publications. Busy, naming the clones, when any clone (anywhere in the
  // cluster, made by anyone) has it as parent; then nothing but the leftovers
  // is removed. NotFound when it was not published. Safe against other hosts
  // publishing, cloning or unpublishing the same image at the same time.
  // Backends that publish nothing always return NotFound.
  virtual Status Unpublish(const ImageId& id) {
    (void)id;
    return Status::NotFound("not published");
  }
  // The published form of image `id` that clones of it need (rbd: the
  // snapshot imgfs.base.<id>@base in the pool, protected and marked): its
  // location when it is present and complete; NotFound naming it when it is
  // gone; Corruption when it is not a complete publication. NotSupported for
  // backends that publish nothing (their disks read parents from the store).
  // A store sharing its disk pool checks with this the parents of disks made
  // by other stores (docs/rbd.md, "Stores sharing a pool").
  virtual Result<std::string> CheckPublished(const ImageId& id) {
    (void)id;
    return Status::NotSupported("this disk backend publishes no images");
  }
  // Removes half-done publications whose publisher is gone (skipping those
  // still being written); returns their locations. Leaves complete ones.
  virtual Result<std::vector<std::string>> RemoveAbandonedPublications(bool dry_run) {
    (void)dry_run;
    return std::vector<std::string>{};
  }

  // Take-over of the mount by a new server (docs/operations.md, "Crashes and
  // upgrades"; docs/rbd.md, "A server replaced"). LockOwnerId is the name
  // this backend's locks on disks open for writing are held under ("client.4123"
  // for rbd), or "" when they die with the process (local: flock).
  // SetDeadLockOwners names owners known to be dead (earlier servers of the
  // same mount, reaped by the supervisor): an open for writing that finds a
  // disk locked by one of them breaks that lock at once, fencing the owner,
  // instead of failing Busy. Call before opening disks.
  virtual std::string LockOwnerId() const { return ""; }
  virtual void SetDeadLockOwners(std::vector<std::string> owners) { (void)owners; }

  // Checks the backend's own metadata of one disk (fsck); appends one line per
  // problem found. Non-OK only when the check could not run.
  virtual Status Check(const DiskRef& ref, std::vector<std::string>* problems) {
    (void)ref;
    (void)problems;
    return Status::OK();
  }
};

}  // namespace imgfs

namespace imgfs {

// Builds a disk backend from its spec as a store names it (blockstore/
// backends.h has the registry): "local" (under `store_path`/disks), "mem",
// "rbd:POOL[/NAMESPACE]". `images` opens parent images and must outlive the
// backend.
Result<std::unique_ptr<DiskBackend>> CreateDiskBackend(std::string_view spec,
                                                       const std::string& store_path,
                                                       ImageSource* images,
                                                       const CephOptions* ceph = nullptr);

}  // namespace imgfs
