// An open rbd disk (blockstore/rbd_disk_io.h): reads, writes, discards and
// flushes through librbd's C++ API, synchronous and asynchronous; the
// exclusive lock (taken at the open, in standby, or handed over in a live
// migration: docs/rbd.md, "Live migration"); its size and its Info.
#include "blockstore/rbd_disk_io.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <functional>
#include <future>
#include <list>
#include <mutex>
#include <thread>

#include "blockstore/disk_util.h"
#include "blockstore/rbd_local_parent.h"

namespace imgfs::rbd_internal {

// The completion of one asynchronous request of a disk: hands the result to
// `done`.
struct AioRequest {
  Disk::Callback done;
  std::function<void(int)> finished;  // bookkeeping of the issuing disk (librbd's result)
  const char* what;
};

namespace {

// How old the bytes a disk owns (DiskInfo::owned_bytes, st_blocks through
// the mount) may be before FillInfo counts them again, in the background.
constexpr auto kUsageRefresh = std::chrono::seconds(1);

// How long a disk opened in standby waits, at its first write, for a lock
// holder that is letting the lock go (qemu's source closes its writable
// descriptor when a migration completes, a moment after the destination may
// already write), before the write fails with Busy.
constexpr auto kHandOverWait = std::chrono::seconds(5);
constexpr auto kHandOverPoll = std::chrono::milliseconds(5);

// librbd's C++ API passes its own completion object as `c`.
void AioComplete(librbd::completion_t c, void* arg) {
  auto* req = static_cast<AioRequest*>(arg);
  auto* comp = static_cast<librbd::RBD::AioCompletion*>(c);
  ssize_t r = comp->get_return_value();
  comp->release();
  Status s;
  if (r < 0) s = Err(static_cast<int>(r), req->what);
  Disk::Callback done = std::move(req->done);
  std::function<void(int)> finished = std::move(req->finished);
  delete req;
  finished(static_cast<int>(r));
  done(std::move(s));
}

// The first `length` bytes of a read's bufferlist, zeros where librbd
// returned fewer (a read is never short otherwise). `bl` is owned by the
// result.
ReadBuffers ToReadBuffers(std::shared_ptr<ceph::bufferlist> bl, size_t length) {
  if (bl->length() < length) bl->append_zero(static_cast<unsigned>(length - bl->length()));
  ReadBuffers out;
  for (const ceph::buffer::ptr& p : bl->buffers()) {
    if (length == 0) break;
    size_t n = std::min<size_t>(p.length(), length);
    if (n == 0) continue;
    out.pieces.emplace_back(reinterpret_cast<const uint8_t*>(p.c_str()), n);
    length -= n;
  }
  out.owner = std::move(bl);
  return out;
}

ReadBuffers ToReadBuffers(ceph::bufferlist& bl, size_t length) {
  return ToReadBuffers(std::make_shared<ceph::bufferlist>(std::move(bl)), length);
}

std::vector<Extent> MergeClip(std::vector<Extent> in, uint64_t offset, uint64_t length) {
  std::sort(in.begin(), in.end(),
            [](const Extent& a, const Extent& b) { return a.offset < b.offset; });
  std::vector<Extent> out;
  uint64_t end = offset + length;
  for (Extent e : in) {
    uint64_t s = std::max(e.offset, offset);
    uint64_t t = std::min(e.offset + e.length, end);
    if (s >= t) continue;
    if (!out.empty() && out.back().offset + out.back().length >= s) {
      out.back().length = std::max(out.back().offset + out.back().length, t) - out.back().offset;
    } else {
      out.push_back({s, t - s});
    }
  }
  return out;
}

}  // namespace

bool BreakDeadOwner(Connection& conn, librbd::Image& img, const std::string& name) {
  std::vector<std::string> dead;
  {
    MutexLock lock(conn.dead_mu);
    dead = conn.dead_owners;
  }
  if (dead.empty()) return false;
  rbd_lock_mode_t mode{};
  std::list<std::string> owners;
  if (img.lock_get_owners(&mode, &owners) < 0) return false;
  for (const std::string& owner : owners) {
    if (std::find(dead.begin(), dead.end(), owner) == dead.end()) continue;
    int r = img.lock_break(mode, owner);
    if (r < 0 && r != -ENOENT) {
      spdlog::error("{}: breaking the lock of dead server {}: {}", conn.Where(name), owner,
                    std::strerror(-r));
      return false;
    }
    spdlog::warn("{}: broke the lock of {} (an earlier server of this mount, dead; its client "
                 "is blocklisted)",
                 conn.Where(name), owner);
    return true;
  }
  return false;
}

RbdDisk::RbdDisk(std::shared_ptr<Connection> conn, ImageSource* images, DiskRef ref,
                 std::string name, std::unique_ptr<librbd::Image> image, bool writable,
                 bool rw_handle, bool held, uint64_t size, DiskSizeLimit limit)
    : conn_(std::move(conn)),
      images_(images),
      ref_(std::move(ref)),
      name_(std::move(name)),
      image_(std::move(image)),
      limit_(std::move(limit)),
      rw_handle_(rw_handle),
      writable_(writable),
      size_(size),
      held_(held) {}

Status RbdDisk::Init() {
  if (rw_handle_) {
    uint64_t handle = 0;
    if (int r = image_->update_watch(&watch_, &handle); r < 0) {
      return Err(r, "rbd: watching the header of " + Where());
    }
    watch_.handle = handle;
    // A change made before the watch began.
    watch_.size_changed = true;
  }
  if (held_) {
    StartLocalReads();
  } else {
    local_ = OpenLocalParent(*conn_, images_, *image_, name_, /*verify=*/true);
    local_ptr_.store(local_.get(), std::memory_order_release);
  }
  return Status::OK();
}

RbdDisk::~RbdDisk() {
  if (open_disks_) {
    MutexLock reg(open_disks_->mu);
    auto [b, e] = open_disks_->by_name.equal_range(name_);
    for (auto it = b; it != e; ++it) {
      if (it->second == this) {
        open_disks_->by_name.erase(it);
        break;
      }
    }
  }
  MutexLock lock(inflight_mu_);
  while (inflight_ != 0) inflight_cv_.Wait(inflight_mu_);
  lock.Unlock();
  // A disk in standby never wrote: nothing to flush, no lock to let go.
  if (held_.load()) {
    if (int r = image_->flush(); r < 0) {
      spdlog::error("{}", Err(r, "rbd: flushing " + Where() + " on close").ToString());
    }
    // librbd flushes again and waits for every request in flight before it
    // unlocks: the next holder sees all of this handle's writes.
    (void)image_->lock_release();
  }
  if (watch_.handle) (void)image_->update_unwatch(*watch_.handle);
}

uint64_t RbdDisk::size() const {
  if (watch_.size_changed.exchange(false)) {
    std::shared_lock lock(resize_mu_);
    uint64_t s = 0;
    if (image_->size(&s) == 0) {
      size_.store(s);
    } else {
      watch_.size_changed.store(true);  // try again next time
    }
  }
  return size_.load();
}

void RbdDisk::Register(std::shared_ptr<OpenDisks> reg) {
  MutexLock lock(reg->mu);
  reg->by_name.emplace(name_, this);
  open_disks_ = std::move(reg);
}

Status RbdDisk::FillInfo(DiskInfo* info) const {
  info->size = size();
  MutexLock lock(info_mu_);
  auto now = std::chrono::steady_clock::now();
  if (!info_valid_ || watch_.info_changed.exchange(false)) {
    info_valid_ = false;
    RETURN_IF_ERROR(ReadInfo(info->size, &info_));
    info_valid_ = true;
    usage_at_ = now;
  } else if (now - usage_at_ >= kUsageRefresh) {
    usage_at_ = now;
    RefreshUsage(info->size);
  }
  info->parent = info_.parent;
  info->attrs = info_.attrs;
  info->owned_bytes = info_.owned_bytes;
  timespec ts{};
  if (image_->get_modify_timestamp(&ts) == 0) {
    info->mtime_ns = int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
  }
  return Status::OK();
}

Status RbdDisk::StopWriting() {
  std::unique_lock lock(resize_mu_);
  MutexLock take(take_mu_);
  stopped_ = true;
  if (!writable_.exchange(false)) return Status::OK();
  if (!held_.load()) return Status::OK();
  Status st;
  if (LocalParent* local = Local()) local->overlap.store(0);  // for good
  if (int r = image_->flush(); r < 0) st = Err(r, "rbd: flushing " + Where());
  int r = image_->lock_release();
  held_.store(false);
  if (r < 0 && st.ok()) st = Err(r, "rbd: releasing the lock of " + Where());
  return st;
}

Status RbdDisk::StartWriting() {
  MutexLock take(take_mu_);
  if (writable_.load()) return Status::OK();
  if (!rw_handle_ || stopped_) return Disk::StartWriting();
  BreakDeadOwner(*conn_, *image_, name_);
  int r = image_->lock_acquire(RBD_LOCK_MODE_EXCLUSIVE);
  if (r == 0) {
    watch_.size_changed = true;
    held_.store(true, std::memory_order_release);
    StartLocalReads();
  } else if (r == -EROFS || r == -EBUSY || r == -EAGAIN) {
    spdlog::info("{}: open for writing elsewhere; writable in standby", Where());
  } else {
    return Err(r, "rbd: locking " + Where());
  }
  writable_.store(true);
  return Status::OK();
}

Status RbdDisk::Read(uint64_t offset, MutableByteView buf) {
  if (LocalMayCover(offset, buf.size())) {
    // Checked in the cluster first (asynchronously): wait for it.
    std::promise<Result<ReadBuffers>> p;
    ReadBuffersAsync(offset, buf.size(),
                     [&p](Result<ReadBuffers> r) { p.set_value(std::move(r)); });
    Result<ReadBuffers> r = p.get_future().get();
    if (!r.ok()) return r.status();
    r->CopyTo(buf);
    return Status::OK();
  }
  std::shared_lock lock(resize_mu_);
  RETURN_IF_ERROR(CheckRange(offset, buf.size()));
  if (buf.empty()) return Status::OK();
  if (LocalCovers(offset, buf.size()) && ReadLocal(*Local(), offset, buf)) return Status::OK();
  ceph::bufferlist bl;
  ssize_t r = image_->read2(offset, buf.size(), bl, 0);
  if (r < 0) {
    StopLocalReads();
    return Err(static_cast<int>(r), "rbd: reading " + Where());
  }
  ToReadBuffers(bl, buf.size()).CopyTo(buf);
  return Status::OK();
}

Status RbdDisk::Write(uint64_t offset, ByteView buf) {
  RETURN_IF_ERROR(CheckWritable());
  RETURN_IF_ERROR(TakeLock());
  std::shared_lock lock(resize_mu_);
  RETURN_IF_ERROR(CheckWritable());  // StopWriting may have run meanwhile
  RETURN_IF_ERROR(CheckRange(offset, buf.size()));
  if (buf.empty()) return Status::OK();
  if (LocalParent* local = Local()) local->MarkChild(offset, buf.size());
  ceph::bufferlist bl;
  bl.append(reinterpret_cast<const char*>(buf.data()), buf.size());
  ssize_t r = image_->write2(offset, buf.size(), bl, 0);
  if (r < 0) {
    StopLocalReads();
    return Err(static_cast<int>(r), "rbd: writing " + Where());
  }
  if (static_cast<size_t>(r) != buf.size())
    return Status::IOError("rbd: short write to " + Where());
  return Status::OK();
}

Status RbdDisk::Discard(uint64_t offset, uint64_t length) {
  RETURN_IF_ERROR(CheckWritable());
  RETURN_IF_ERROR(TakeLock());
  std::shared_lock lock(resize_mu_);
  RETURN_IF_ERROR(CheckWritable());
  length = ClipToSize(offset, length);
  if (length == 0) return Status::OK();
  if (LocalParent* local = Local()) local->MarkChild(offset, length);
  int r = image_->discard(offset, length);
  if (r < 0) {
    StopLocalReads();
    return Err(r, "rbd: discarding in " + Where());
  }
  return Status::OK();
}

Status RbdDisk::Flush() {
  if (!held_.load()) return Status::OK();
  int r = image_->flush();
  if (r < 0) {
    StopLocalReads();
    return Err(r, "rbd: flushing " + Where());
  }
  return Status::OK();
}

Status RbdDisk::Resize(uint64_t new_size, bool allow_shrink) {
  RETURN_IF_ERROR(CheckWritable());
  if (new_size > limit_.max_bytes) {
    return disk_util::SizeError("disk " + ref_.ToString(), new_size, limit_);
  }
  uint64_t cur = size();  // as set elsewhere, if it was
  if (new_size == cur) return Status::OK();
  RETURN_IF_ERROR(TakeLock());
  std::unique_lock lock(resize_mu_);
  RETURN_IF_ERROR(CheckWritable());
  cur = size_.load();
  if (new_size == cur) return Status::OK();
  if (new_size < cur && !allow_shrink) {
    return Status::PermissionDenied("disk " + ref_.ToString() + ": shrinking from " +
                                    std::to_string(cur) + " to " + std::to_string(new_size) +
                                    " bytes is refused");
  }
  // A shrink lowers the parent overlap (librbd does the same): what is
  // regrown beyond it reads zeros, not the parent. librbd copies up the
  // object the new end falls in, to truncate it.
  LocalParent* local = Local();
  if (local && new_size < local->overlap.load()) {
    local->MarkChild(new_size, 1);
    local->LowerOverlap(new_size);
  }
  int r = image_->resize(new_size);
  if (r < 0) return Err(r, "rbd: resizing " + Where());
  size_ = new_size;
  return Status::OK();
}

Result<std::vector<Extent>> RbdDisk::Allocated(uint64_t offset, uint64_t length) {
  std::shared_lock lock(resize_mu_);
  uint64_t size = size_.load();
  std::vector<Extent> out;
  if (offset >= size || length == 0) return out;
  length = std::min(length, size - offset);
  // Whole objects first (fast with the object map), then the exact
  // extents within each object that exists.
  std::vector<Extent> objects;
  int r = image_->diff_iterate2(nullptr, offset, length, true, true, &CollectExtent, &objects);
  if (r < 0) return Err(r, "rbd: mapping " + Where());
  for (const Extent& o : MergeClip(std::move(objects), offset, length)) {
    r = image_->diff_iterate2(nullptr, o.offset, o.length, true, false, &CollectExtent, &out);
    if (r < 0) return Err(r, "rbd: mapping " + Where());
  }
  return MergeClip(std::move(out), offset, length);
}

void RbdDisk::ReadAsync(uint64_t offset, MutableByteView buf, Callback done) {
  ReadBuffersAsync(offset, buf.size(), [buf, done = std::move(done)](Result<ReadBuffers> data) {
    if (!data.ok()) return done(data.status());
    data->CopyTo(buf);
    done(Status::OK());
  });
}

void RbdDisk::ReadBuffersAsync(uint64_t offset, size_t length, ReadBuffersCallback done) {
  std::shared_lock lock(resize_mu_);
  Status s = CheckRange(offset, length);
  if (!s.ok()) return done(std::move(s));
  if (length == 0) return done(ReadBuffers{});
  if (LocalParent* local = LocalMayCover(offset, length)) {
    return ReadVerified(*local, offset, length, std::move(done));
  }
  if (LocalCovers(offset, length)) {
    std::shared_ptr<uint8_t[]> buf(new uint8_t[length]);
    if (ReadLocal(*Local(), offset, MutableByteView(buf.get(), length))) {
      return done(ReadBuffers{{ByteView(buf.get(), length)}, buf});
    }
  }
  ReadCluster(offset, length, std::move(done));
}

void RbdDisk::ReadCluster(uint64_t offset, size_t length, ReadBuffersCallback done) {
  auto bl = std::make_shared<ceph::bufferlist>();
  librbd::RBD::AioCompletion* c = nullptr;
  AioRequest* req = Start(
      [bl, length, done = std::move(done)](Status st) {
        if (!st.ok()) return done(std::move(st));
        done(ToReadBuffers(std::move(bl), length));
      },
      "rbd: reading", &c);
  int r = c ? image_->aio_read2(offset, length, *bl, c, 0) : -ENOMEM;
  if (r < 0) Abort(req, c, r);
}

void RbdDisk::WriteAsync(uint64_t offset, ByteView buf, Callback done) {
  Status s = CheckWritable();
  if (s.ok()) s = TakeLock();
  if (!s.ok()) return done(std::move(s));
  std::shared_lock lock(resize_mu_);
  s = CheckWritable();
  if (s.ok()) s = CheckRange(offset, buf.size());
  if (!s.ok() || buf.empty()) return done(std::move(s));
  if (LocalParent* local = Local()) local->MarkChild(offset, buf.size());
  ceph::bufferlist bl;
  bl.append(reinterpret_cast<const char*>(buf.data()), buf.size());
  librbd::RBD::AioCompletion* c = nullptr;
  AioRequest* req = Start(std::move(done), "rbd: writing", &c);
  int r = c ? image_->aio_write2(offset, buf.size(), bl, c, 0) : -ENOMEM;
  if (r < 0) Abort(req, c, r);
}

void RbdDisk::DiscardAsync(uint64_t offset, uint64_t length, Callback done) {
  Status s = CheckWritable();
  if (s.ok()) s = TakeLock();
  if (!s.ok()) return done(std::move(s));
  std::shared_lock lock(resize_mu_);
  s = CheckWritable();
  if (!s.ok()) return done(std::move(s));
  length = ClipToSize(offset, length);
  if (length == 0) return done(Status::OK());
  if (LocalParent* local = Local()) local->MarkChild(offset, length);
  librbd::RBD::AioCompletion* c = nullptr;
  AioRequest* req = Start(std::move(done), "rbd: discarding", &c);
  int r = c ? image_->aio_discard(offset, length, c) : -ENOMEM;
  if (r < 0) Abort(req, c, r);
}

void RbdDisk::FlushAsync(Callback done) {
  if (!held_.load()) return done(Status::OK());
  librbd::RBD::AioCompletion* c = nullptr;
  AioRequest* req = Start(std::move(done), "rbd: flushing", &c);
  int r = c ? image_->aio_flush(c) : -ENOMEM;
  if (r < 0) Abort(req, c, r);
}

Status RbdDisk::ReadInfo(uint64_t size, DiskInfo* info) const {
  librbd::linked_image_spec_t parent;
  librbd::snap_spec_t snap;
  info->parent.reset();
  int r = image_->get_parent(&parent, &snap);
  if (r == 0) {
    info->parent = BaseImageId(parent.image_name);
  } else if (r != -ENOENT) {
    return Err(r, "rbd: parent of " + Where());
  }
  ASSIGN_OR_RETURN(info->owned_bytes, Usage(size));
  ASSIGN_OR_RETURN(info->attrs, ParseAttrs([&](const char* key) -> Result<std::string> {
                     std::string v;
                     int r2 = image_->metadata_get(key, &v);
                     if (r2 < 0) return Err(r2, std::string("rbd: reading metadata ") + key);
                     return v;
                   }));
  return Status::OK();
}

Result<uint64_t> RbdDisk::Usage(uint64_t size) const {
  uint64_t owned = 0;
  // (librbd asserts on an empty range.)
  int r = size == 0 ? 0
                    : image_->diff_iterate2(nullptr, 0, size, false, true, &AddExtentBytes, &owned);
  if (r < 0) return Err(r, "rbd: usage of " + Where());
  return owned;
}

void RbdDisk::RefreshUsage(uint64_t size) const {
  auto* self = const_cast<RbdDisk*>(this);
  {
    MutexLock lock(self->inflight_mu_);
    self->inflight_++;
  }
  std::thread([self, size] {
    auto owned = self->Usage(size);
    if (owned.ok()) {
      MutexLock lock(self->info_mu_);
      self->info_.owned_bytes = *owned;
    }
    self->Finished(0);
  }).detach();
}

Status RbdDisk::TakeLock() {
  if (held_.load(std::memory_order_acquire)) return Status::OK();
  MutexLock lock(take_mu_);
  if (held_.load()) return Status::OK();
  RETURN_IF_ERROR(CheckWritable());  // StopWriting ran
  auto deadline = std::chrono::steady_clock::now() + kHandOverWait;
  for (;;) {
    int r = image_->lock_acquire(RBD_LOCK_MODE_EXCLUSIVE);
    if (r == 0) break;
    if (r != -EROFS && r != -EBUSY && r != -EAGAIN) return Err(r, "rbd: locking " + Where());
    if (std::chrono::steady_clock::now() >= deadline) {
      return Status::Busy("disk " + ref_.ToString() + " is in use (open for writing elsewhere)");
    }
    std::this_thread::sleep_for(kHandOverPoll);
  }
  spdlog::info("{}: took the write lock (the disk was in standby)", Where());
  watch_.size_changed = true;
  held_.store(true, std::memory_order_release);
  StartLocalReads();
  return Status::OK();
}

uint64_t RbdDisk::ClipToSize(uint64_t offset, uint64_t length) const {
  uint64_t size = size_.load();
  if (offset >= size) return 0;
  return std::min(length, size - offset);
}

Status RbdDisk::CheckRange(uint64_t offset, uint64_t length) const {
  uint64_t size = size_.load();
  if (length > size || offset > size - length) {
    return Status::InvalidArgument("disk " + ref_.ToString() + ": range " +
                                   std::to_string(offset) + "+" + std::to_string(length) +
                                   " is beyond its size " + std::to_string(size));
  }
  return Status::OK();
}

AioRequest* RbdDisk::Start(Callback done, const char* what, librbd::RBD::AioCompletion** c) {
  {
    MutexLock lock(inflight_mu_);
    inflight_++;
  }
  auto* req = new AioRequest{std::move(done), [this](int r) { Finished(r); }, what};
  *c = new (std::nothrow) librbd::RBD::AioCompletion(req, &AioComplete);
  return req;
}

void RbdDisk::Abort(AioRequest* req, librbd::RBD::AioCompletion* c, int r) {
  if (c) c->release();
  Callback done = std::move(req->done);
  std::string what = std::string(req->what) + " " + Where();
  delete req;
  Finished(r);
  done(Err(r, what));
}

void RbdDisk::Finished(int r) {
  if (r < 0) StopLocalReads();
  MutexLock lock(inflight_mu_);
  if (--inflight_ == 0) inflight_cv_.NotifyAll();
}

}  // namespace imgfs::rbd_internal
