// Private to the rbd disk backend: an open disk, RbdDisk (rbd_disk_io.cc; its
// reads of the parent from the local store are in rbd_local_parent.cc).
#pragma once

#include <rados/librados.h>
#include <rbd/librbd.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <memory>
#include <optional>
#include <shared_mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "blockstore/disk.h"
#include "blockstore/mutex.h"
#include "blockstore/rbd_internal.h"

namespace imgfs::rbd_internal {

class RbdDisk;
struct LocalParent;  // rbd_local_parent.h
struct AioRequest;   // rbd_disk_io.cc

// librbd's header watch of a disk open for writing: another client changed
// the image header (a resize by the lock owner, a flatten, a shrink of the
// overlap). The next size() asks librbd for the size again, and the next
// read for the parent overlap. Read-only librbd handles get no such
// notifications (librbd does not watch the header for them).
struct HeaderWatch : public librbd::UpdateWatchCtx {
  std::atomic<bool> size_changed{false};
  std::atomic<bool> overlap_changed{false};
  std::atomic<bool> info_changed{false};  // RbdDisk::FillInfo reads the header again
  std::optional<uint64_t> handle;
  Mutex mu;  // librbd may call handle_notify while the listener is set
  std::function<void()> listener GUARDED_BY(mu);  // Disk::SetHeaderListener

  void handle_notify() override {
    size_changed.store(true);
    overlap_changed.store(true);
    info_changed.store(true);
    MutexLock lock(mu);
    if (listener) listener();
  }
};

// The disks a backend has open with a writable librbd handle (every open
// disk, unless the cluster refused such a handle), by RBD image name: Info
// of such a disk reads from its open image (its header is watched, so
// librbd keeps it current) instead of opening the image again, which costs
// several round trips (qemu stats and looks up its disk file when it
// activates or inactivates it in a live migration, inside the VM's
// downtime). A disk leaves it first thing in its destructor.
struct OpenDisks {
  Mutex mu;
  std::unordered_multimap<std::string, const RbdDisk*> by_name GUARDED_BY(mu);
};

// Breaks the lock on `img` when its owner is a dead earlier server of this
// mount (SetDeadLockOwners; docs/rbd.md, "A server replaced"). librbd
// blocklists the owner's client before it breaks the lock
// (rbd_blocklist_on_break_lock), so nothing that client sent can land
// after this. True when the lock was broken.
bool BreakDeadOwner(Connection& conn, librbd::Image& img, const std::string& name);

class RbdDisk : public Disk {
 public:
  // `held`: the exclusive lock was taken by the open (writable disks);
  // a writable disk without it is in standby (OpenMode::kReadWriteStandby).
  // `rw_handle`: librbd opened the image for writing (every writable disk,
  // and read-only ones that StartWriting may make writable).
  RbdDisk(std::shared_ptr<Connection> conn, ImageSource* images, DiskRef ref, std::string name,
          std::unique_ptr<librbd::Image> image, bool writable, bool rw_handle, bool held,
          uint64_t size, DiskSizeLimit limit);

  // Starts the header watch (writable librbd handles: librbd watches the
  // header of no other) and the local parent reads: exact with the lock
  // held, verified without (LocalParent).
  Status Init();

  ~RbdDisk() override;

  const DiskRef& ref() const override { return ref_; }
  // Follows a size set by another client (the lock owner's resize, seen by
  // the header watch): asks librbd again after a change.
  uint64_t size() const override;
  bool writable() const override { return writable_.load(); }

  // Joins the backend's OpenDisks (writable librbd handles only: their
  // header is watched).
  void Register(std::shared_ptr<OpenDisks> reg);

  // DiskBackend::Info from the open image; `info->ref` and `location` are
  // the caller's. Called with OpenDisks::mu held.
  Status FillInfo(DiskInfo* info) const;

  // After a change of the header made through another handle of this
  // backend (SetAttrs): the next FillInfo reads it again.
  void InfoChanged() const { watch_.info_changed.store(true); }

  // The migration source's last writer closed: let the lock go now (the
  // destination is waiting for it), keep the handle for reads. Under
  // resize_mu_ held exclusively no request is being started; librbd's
  // lock_release waits for the ones in flight. The local parent reads stop
  // (they rely on the lock).
  Status StopWriting() override;

  // A migration's destination taking over (Disk::StartWriting): the open
  // handle becomes writable, with the lock taken now if it is free (the
  // source let it go when it stopped), else in standby until the first
  // write (TakeLock). No second open of the image, which is what this
  // saves: the destination's open for writing is in the VM's downtime.
  Status StartWriting() override;

  void SetLocalReadCounter(std::shared_ptr<std::atomic<uint64_t>> bytes) override {
    local_read_bytes_ = std::move(bytes);
  }
  // librbd calls it from the header watch (HeaderWatch), which only a
  // writable librbd handle has; update_unwatch in the destructor waits for
  // a call in progress.
  void SetHeaderListener(std::function<void()> listener) override {
    MutexLock lock(watch_.mu);
    watch_.listener = std::move(listener);
  }

  Status Read(uint64_t offset, MutableByteView buf) override;
  Status Write(uint64_t offset, ByteView buf) override;
  Status Discard(uint64_t offset, uint64_t length) override;
  Status Flush() override;
  Status Resize(uint64_t new_size, bool allow_shrink) override;
  Result<std::vector<Extent>> Allocated(uint64_t offset, uint64_t length) override;
  void ReadAsync(uint64_t offset, MutableByteView buf, Callback done) override;
  // librbd's C++ API reads into a bufferlist: its buffers are the ones the
  // messenger received the data in, handed on without a copy (the C API
  // copies them into the caller's buffer).
  void ReadBuffersAsync(uint64_t offset, size_t length, ReadBuffersCallback done) override;
  void WriteAsync(uint64_t offset, ByteView buf, Callback done) override;
  void DiscardAsync(uint64_t offset, uint64_t length, Callback done) override;
  void FlushAsync(Callback done) override;

 private:
  std::string Where() const { return conn_->Where(name_); }

  // FillInfo's figures from the image: parent, owned bytes, attributes.
  // The header is read through librbd's copy (kept current by the watch);
  // the usage and the attributes each cost round trips.
  Status ReadInfo(uint64_t size, DiskInfo* info) const;
  // The bytes of the objects the image has (the object map: a round trip).
  Result<uint64_t> Usage(uint64_t size) const;
  // Counts the owned bytes again on a thread of its own (FillInfo answers
  // with the last count meanwhile). Counted as a request in flight, so the
  // destructor waits for it.
  void RefreshUsage(uint64_t size) const;

  LocalParent* Local() const { return local_ptr_.load(std::memory_order_acquire); }

  // A disk in standby takes the exclusive lock at its first write, discard
  // or resize (rbd_lock_acquire, so librbd's automatic transitions stay off
  // and the lock is kept until the disk is closed). A holder that is letting
  // the lock go (a migration's source closing its writable descriptor) is
  // waited for, up to kHandOverWait; a holder that keeps it (a writer still
  // running) makes this Busy, and nothing is written. librbd reloads the
  // object map when it takes the lock, so what another client wrote is seen;
  // then the local parent reads start.
  Status TakeLock();

  // ---- The reads of the parent from the local store (rbd_local_parent.cc).
  // Starts the exact local parent reads (once; the lock is held and kept),
  // in place of verified ones if the disk had them.
  void StartLocalReads();
  // Whether [offset, offset+length) is the parent's bytes (LocalParent),
  // after taking in a header change made by another client.
  bool LocalCovers(uint64_t offset, uint64_t length);
  // Starts the once-a-second stat of the header (LocalParent::header_oid);
  // its completion counts as a request (Finished), so a failure stops the
  // local reads and the disk's destructor waits for it.
  void CheckStillConnected(LocalParent& local);
  struct HeaderCheck;
  static void HeaderChecked(rados_completion_t c, void* arg);
  // After any failed request (a lost lock, a blocklisted client, a full
  // cluster) every read goes to the cluster: the local reads rely on this
  // handle being the clone's only writer.
  void StopLocalReads();
  // Reads a range admitted from the local image; false to read it from the
  // cluster instead when the local image fails (a damaged chunk is never
  // returned: the cluster has the same bytes).
  bool ReadLocal(LocalParent& local, uint64_t offset, MutableByteView buf);
  // The verified local reads of a disk without the lock (LocalParent): the
  // disk's LocalParent when it is verified and may hold [offset,
  // offset+length), else null.
  LocalParent* LocalMayCover(uint64_t offset, uint64_t length) const;
  // Stats the clone's objects the range touches and reads the parent
  // overlap from the header, all at once (the header read shared with the
  // other verified reads that began before it was sent: JoinOverlapCheck),
  // then reads the range from the local image if the clone still reads the
  // parent there, else from the cluster. Counted as a request in flight; a
  // failed stat or overlap read counts as a failed request (Finished).
  void ReadVerified(LocalParent& local, uint64_t offset, size_t length, ReadBuffersCallback done);
  struct Verify;
  struct VerifyPart;
  struct OverlapCheck;
  static void VerifyPartDone(rados_completion_t c, void* arg);
  static void VerifyPartResult(VerifyPart& part, int r);
  static void VerifySettle(Verify* v, int r);
  void JoinOverlapCheck(Verify* v);
  void SendOverlapCheck();
  static void OverlapChecked(rados_completion_t c, void* arg);
  static void OverlapCheckDone(OverlapCheck* check, int r);
  void FinishVerify(Verify* v);
  // ----

  // An asynchronous read of the range from the cluster (librbd).
  void ReadCluster(uint64_t offset, size_t length, ReadBuffersCallback done);

  Status CheckWritable() const {
    if (!writable_.load()) return Status::ReadOnly("disk " + ref_.ToString() + " is open read-only");
    return Status::OK();
  }

  // The part of [offset, offset+length) within the disk.
  uint64_t ClipToSize(uint64_t offset, uint64_t length) const;
  Status CheckRange(uint64_t offset, uint64_t length) const;

  // A request and its librbd completion (*c stays null if that cannot be
  // made: then Abort it).
  AioRequest* Start(Callback done, const char* what, librbd::RBD::AioCompletion** c);
  void Abort(AioRequest* req, librbd::RBD::AioCompletion* c, int r);
  void Finished(int r);

  std::shared_ptr<Connection> conn_;  // constant after construction
  ImageSource* const images_;         // may be null
  const DiskRef ref_;
  const std::string name_;
  const std::unique_ptr<librbd::Image> image_;  // closed on destruction
  const DiskSizeLimit limit_;                   // what Resize accepts
  const bool rw_handle_;        // librbd opened the image for writing
  std::atomic<bool> writable_;  // set by StartWriting, cleared for good by StopWriting
  bool stopped_ GUARDED_BY(take_mu_) = false;  // StopWriting ran
  std::shared_ptr<OpenDisks> open_disks_;  // set once by Register, before other threads see it
  mutable std::shared_mutex resize_mu_;  // I/O shared, Resize exclusive
  // Changed under resize_mu_ held exclusively, or held shared by size()
  // taking in another client's resize.
  mutable std::atomic<uint64_t> size_;
  mutable HeaderWatch watch_;  // registered for writable librbd handles

  // FillInfo's figures, read again after a header change (the parent and
  // the attributes) or, in the background, a second after they were counted
  // (the owned bytes).
  mutable Mutex info_mu_;
  mutable bool info_valid_ GUARDED_BY(info_mu_) = false;
  mutable DiskInfo info_ GUARDED_BY(info_mu_);
  mutable std::chrono::steady_clock::time_point usage_at_ GUARDED_BY(info_mu_);

  Mutex take_mu_;                // serialises TakeLock
  std::atomic<bool> held_;       // the exclusive lock is ours (kept until destruction)
  // Null: every read goes to the cluster. Set in Init (exact with the lock
  // held, else verified) or, exact, under take_mu_ when the lock is taken;
  // local_ptr_ is what readers load. Verified ones replaced by exact ones
  // are kept in retired_ for reads still checking against them.
  std::unique_ptr<LocalParent> local_;
  std::unique_ptr<LocalParent> retired_;
  std::atomic<LocalParent*> local_ptr_{nullptr};
  // Bytes read from local_ (SetLocalReadCounter); set before other threads
  // see the disk.
  std::shared_ptr<std::atomic<uint64_t>> local_read_bytes_;

  // The verified reads' header read (JoinOverlapCheck): whether one is in
  // flight, and the reads that began since it was sent.
  Mutex check_mu_;
  bool checking_ GUARDED_BY(check_mu_) = false;
  std::vector<Verify*> check_waiting_ GUARDED_BY(check_mu_);

  Mutex inflight_mu_;
  CondVar inflight_cv_;
  size_t inflight_ GUARDED_BY(inflight_mu_) = 0;
};

}  // namespace imgfs::rbd_internal
