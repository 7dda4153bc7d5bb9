// Reads of a clone's parent served from the local image store (LocalParent,
// blockstore/rbd_local_parent.h; docs/rbd.md, "Reads of the parent from the
// local store"): opening them (exact when a disk takes its lock, verified
// for a disk without it), the test of a read against them, the
// once-a-second check that the client is still connected, the checks in the
// cluster of a verified read, and the fall-back to the cluster.
#include "blockstore/rbd_local_parent.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <vector>

#include "blockstore/rbd_disk_io.h"

namespace imgfs::rbd_internal {

std::unique_ptr<LocalParent> OpenLocalParent(Connection& conn, ImageSource* images,
                                             librbd::Image& img, const std::string& name,
                                             bool verify) {
  if (!images || !images->ReadsAreLocal()) return nullptr;
  librbd::linked_image_spec_t parent;
  librbd::snap_spec_t snap;
  if (img.get_parent(&parent, &snap) < 0) return nullptr;  // -ENOENT: not a clone
  if (parent.pool_name != conn.pool || parent.pool_namespace != conn.ns ||
      parent.trash || snap.name != kSnap || !parent.image_name.starts_with(kBasePrefix)) {
    return nullptr;
  }
  auto id = BaseImageId(parent.image_name);
  uint64_t features = 0, flags = 0, overlap = 0;
  librbd::image_info_t info{};
  if (!id || img.features(&features) < 0 || img.get_flags(&flags) < 0 ||
      img.overlap(&overlap) < 0 || img.stat(info, sizeof(info)) < 0) {
    return nullptr;
  }
  constexpr uint64_t kMaps = RBD_FEATURE_OBJECT_MAP | RBD_FEATURE_FAST_DIFF;
  bool map_ok = (features & kMaps) == kMaps && !(flags & RBD_FLAG_OBJECT_MAP_INVALID);
  // Verified reads stat the data objects in this pool: none elsewhere.
  if ((verify ? (features & RBD_FEATURE_DATA_POOL) != 0 : !map_ok) ||
      img.get_stripe_count() != 1 || info.obj_size == 0 || overlap == 0) {
    return nullptr;
  }
  auto image = images->OpenImage(*id);
  if (!image.ok() || (*image)->size() < overlap) return nullptr;
  auto local = std::make_unique<LocalParent>();
  local->verify = verify;
  local->image = std::move(*image);
  local->object_size = info.obj_size;
  local->overlap = overlap;
  local->objects = static_cast<size_t>((overlap + info.obj_size - 1) / info.obj_size);
  local->child = std::make_unique<std::atomic<bool>[]>(local->objects);
  if (!verify) {
    std::vector<Extent> present;
    if (img.diff_iterate2(nullptr, 0, overlap, false, true, &CollectExtent, &present) < 0) {
      return nullptr;
    }
    for (const Extent& e : present) local->MarkChild(e.offset, e.length);
  }
  std::string image_id;
  if (img.get_id(&image_id) < 0) return nullptr;
  local->header_oid = "rbd_header." + image_id;
  local->data_prefix = img.get_block_name_prefix();
  if (local->data_prefix.empty()) return nullptr;
  spdlog::debug("{}: reads of the parent's bytes come from local image {}{}", conn.Where(name),
                id->Hex(), verify ? ", checked in the cluster at each read" : "");
  return local;
}

std::optional<uint64_t> DecodeParentOverlap(const char* out, size_t len) {
  // std::optional<uint64_t> in Ceph's encoding: a byte (present or not),
  // then the value, little-endian.
  if (len == 1 && out[0] == 0) return 0;
  if (len != 9 || out[0] != 1) return std::nullopt;
  uint64_t v = 0;
  for (int i = 8; i >= 1; i--) v = (v << 8) | static_cast<uint8_t>(out[i]);
  return v;
}

// ---- RbdDisk's side of the local reads (declared in rbd_disk_io.h).

void RbdDisk::StartLocalReads() {
  LocalParent* cur = Local();
  if (cur && !cur->verify) return;
  auto local = OpenLocalParent(*conn_, images_, *image_, name_, /*verify=*/false);
  if (!local) return;  // verified reads, if the disk has them, go on
  watch_.overlap_changed = true;  // a change before the reads began
  retired_ = std::move(local_);
  local_ = std::move(local);
  local_ptr_.store(local_.get(), std::memory_order_release);
}

bool RbdDisk::LocalCovers(uint64_t offset, uint64_t length) {
  LocalParent* local = Local();
  if (!local || local->verify) return false;
  if (watch_.overlap_changed.exchange(false)) {
    uint64_t overlap = 0;
    if (image_->overlap(&overlap) < 0) {
      StopLocalReads();
      return false;
    }
    local->LowerOverlap(overlap);
  }
  CheckStillConnected(*local);
  return local->Covers(offset, length);
}

struct RbdDisk::HeaderCheck {
  RbdDisk* disk;
  uint64_t size = 0;
  time_t mtime = 0;
};

void RbdDisk::CheckStillConnected(LocalParent& local) {
  using namespace std::chrono;
  int64_t now = duration_cast<nanoseconds>(steady_clock::now().time_since_epoch()).count();
  int64_t next = local.next_check_ns.load();
  if (now < next || !local.next_check_ns.compare_exchange_strong(
                        next, now + duration_cast<nanoseconds>(seconds(1)).count())) {
    return;
  }
  {
    MutexLock lock(inflight_mu_);
    inflight_++;
  }
  auto* check = new HeaderCheck{this};
  rados_completion_t c = nullptr;
  int r = rados_aio_create_completion2(check, &HeaderChecked, &c);
  if (r == 0) r = rados_aio_stat(conn_->io, local.header_oid.c_str(), c, &check->size, &check->mtime);
  if (r < 0) {
    if (c) rados_aio_release(c);
    delete check;
    Finished(r);
  }
}

void RbdDisk::HeaderChecked(rados_completion_t c, void* arg) {
  auto* check = static_cast<HeaderCheck*>(arg);
  int r = rados_aio_get_return_value(c);
  rados_aio_release(c);
  RbdDisk* disk = check->disk;
  delete check;
  disk->Finished(r);
}

void RbdDisk::StopLocalReads() {
  LocalParent* local = Local();
  if (local && local->overlap.exchange(0) != 0) {
    spdlog::warn("{}: a request failed; the parent's bytes are read from the cluster from now on",
                 Where());
  }
}

bool RbdDisk::ReadLocal(LocalParent& local, uint64_t offset, MutableByteView buf) {
  Status st = local.image->Read(offset, buf);
  if (st.ok()) {
    if (local_read_bytes_) local_read_bytes_->fetch_add(buf.size(), std::memory_order_relaxed);
    return true;
  }
  spdlog::warn("{}: reading the parent's bytes locally failed, reading them from the cluster: {}",
               Where(), st.ToString());
  return false;
}

// ---- Verified reads (a disk without the lock).

// The stat of one data object of the clone, for a verified read.
struct RbdDisk::VerifyPart {
  Verify* v = nullptr;
  uint64_t object = 0;
  uint64_t size = 0;
  time_t mtime = 0;
};

struct RbdDisk::Verify {
  Verify(RbdDisk* d, LocalParent* l, uint64_t off, size_t len, ReadBuffersCallback cb)
      : disk(d), local(l), offset(off), length(len), done(std::move(cb)) {}

  RbdDisk* disk;
  LocalParent* local;
  uint64_t offset;
  size_t length;
  ReadBuffersCallback done;
  std::vector<VerifyPart> parts;
  std::atomic<size_t> pending{0};   // the parts and the overlap check
  std::atomic<int> error{0};        // the first failure (not ENOENT of an object)
  std::atomic<bool> exists{false};  // an object of the range is the clone's
  uint64_t overlap = 0;             // from the header (OverlapCheckDone)
};

// One read of the parent overlap from the header (cls_rbd's
// parent_overlap_get), shared by every verified read in `readers`: each
// began before it was sent.
struct RbdDisk::OverlapCheck {
  explicit OverlapCheck(RbdDisk* d) : disk(d) {}

  RbdDisk* disk;
  std::vector<Verify*> readers;
  rados_read_op_t op = nullptr;
  char snap[8] = {};  // parent_overlap_get's input
  char* out = nullptr;
  size_t out_len = 0;
  int prval = 0;

  ~OverlapCheck() {
    if (op) rados_release_read_op(op);
    if (out) rados_buffer_free(out);
  }
};

LocalParent* RbdDisk::LocalMayCover(uint64_t offset, uint64_t length) const {
  LocalParent* local = Local();
  return local && local->verify && local->Covers(offset, length) ? local : nullptr;
}

void RbdDisk::ReadVerified(LocalParent& local, uint64_t offset, size_t length,
                           ReadBuffersCallback done) {
  {
    MutexLock lock(inflight_mu_);
    inflight_++;
  }
  uint64_t first = offset / local.object_size;
  uint64_t last = (offset + length - 1) / local.object_size;
  auto* v = new Verify(this, &local, offset, length, std::move(done));
  v->parts.resize(last - first + 1);
  v->pending = v->parts.size() + 1;
  for (size_t i = 0; i < v->parts.size(); i++) {
    VerifyPart& part = v->parts[i];
    part.v = v;
    part.object = first + i;
    char oid[128];
    std::snprintf(oid, sizeof oid, "%s.%016llx", local.data_prefix.c_str(),
                  static_cast<unsigned long long>(part.object));
    rados_completion_t c = nullptr;
    int r = rados_aio_create_completion2(&part, &VerifyPartDone, &c);
    if (r == 0) r = rados_aio_stat(conn_->io, oid, c, &part.size, &part.mtime);
    if (r < 0) {
      if (c) rados_aio_release(c);
      VerifyPartResult(part, r);
    }
  }
  // Last: `v` may be done once it has joined.
  JoinOverlapCheck(v);
}

void RbdDisk::VerifyPartDone(rados_completion_t c, void* arg) {
  int r = rados_aio_get_return_value(c);
  rados_aio_release(c);
  VerifyPartResult(*static_cast<VerifyPart*>(arg), r);
}

void RbdDisk::VerifyPartResult(VerifyPart& part, int r) {
  Verify* v = part.v;
  if (r == 0) {
    v->exists.store(true);
    v->local->MarkChild(part.object * v->local->object_size, 1);
  } else if (r == -ENOENT) {
    r = 0;
  }
  VerifySettle(v, r);
}

void RbdDisk::VerifySettle(Verify* v, int r) {
  if (r < 0) {
    int none = 0;
    v->error.compare_exchange_strong(none, r);
  }
  if (v->pending.fetch_sub(1) == 1) v->disk->FinishVerify(v);
}

// The reads of the overlap are sent one at a time: a read that begins while
// one is in flight waits for the next, sent when that one is back (so the
// next is sent after the read began, as it must be), with every read that
// began meanwhile. Under load one header read serves many data reads.
void RbdDisk::JoinOverlapCheck(Verify* v) {
  {
    MutexLock lock(check_mu_);
    check_waiting_.push_back(v);
    if (checking_) return;
    checking_ = true;
  }
  SendOverlapCheck();
}

void RbdDisk::SendOverlapCheck() {
  auto* check = new OverlapCheck(this);
  {
    MutexLock lock(check_mu_);
    check->readers.swap(check_waiting_);
  }
  for (int i = 0; i < 8; i++) check->snap[i] = static_cast<char>(kNoSnap >> (8 * i));
  rados_completion_t c = nullptr;
  int r = -ENOMEM;
  check->op = rados_create_read_op();
  if (check->op) {
    rados_read_op_exec(check->op, "rbd", "parent_overlap_get", check->snap, sizeof check->snap,
                       &check->out, &check->out_len, &check->prval);
    r = rados_aio_create_completion2(check, &OverlapChecked, &c);
  }
  // The header of every LocalParent of this disk is the same.
  const std::string& oid = check->readers.front()->local->header_oid;
  if (r == 0) r = rados_aio_read_op_operate(check->op, conn_->io, c, oid.c_str(), 0);
  if (r < 0) {
    if (c) rados_aio_release(c);
    OverlapCheckDone(check, r);
  }
}

void RbdDisk::OverlapChecked(rados_completion_t c, void* arg) {
  int r = rados_aio_get_return_value(c);
  rados_aio_release(c);
  OverlapCheckDone(static_cast<OverlapCheck*>(arg), r);
}

void RbdDisk::OverlapCheckDone(OverlapCheck* check, int r) {
  uint64_t overlap = 0;
  if (r >= 0) r = check->prval;
  if (r >= 0) {
    auto got = DecodeParentOverlap(check->out, check->out_len);
    if (got) {
      overlap = *got;
    } else {
      r = -EIO;
    }
  }
  RbdDisk* disk = check->disk;
  std::vector<Verify*> readers = std::move(check->readers);
  delete check;
  // The next check first (its readers keep the disk alive); nothing of the
  // disk is touched after the last of these readers is done.
  bool again;
  {
    MutexLock lock(disk->check_mu_);
    again = !disk->check_waiting_.empty();
    if (!again) disk->checking_ = false;
  }
  if (again) disk->SendOverlapCheck();
  for (Verify* v : readers) {
    v->overlap = overlap;
    VerifySettle(v, r);
  }
}

void RbdDisk::FinishVerify(Verify* v) {
  std::unique_ptr<Verify> own(v);
  int r = v->error.load();
  LocalParent& local = *v->local;
  if (r == 0 && !v->exists.load()) {
    local.LowerOverlap(v->overlap);
    // Below the overlap just read, unless the local reads were stopped
    // (overlap 0) meanwhile.
    if (v->offset + v->length <= local.overlap.load()) {
      std::shared_ptr<uint8_t[]> buf(new uint8_t[v->length]);
      if (ReadLocal(local, v->offset, MutableByteView(buf.get(), v->length))) {
        v->done(ReadBuffers{{ByteView(buf.get(), v->length)}, buf});
        Finished(0);
        return;
      }
    }
  }
  ReadCluster(v->offset, v->length, std::move(v->done));
  Finished(r);
}

}  // namespace imgfs::rbd_internal
