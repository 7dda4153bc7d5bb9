// Reads of a clone's parent served from the local image store (LocalParent,
// blockstore/rbd_local_parent.h; docs/rbd.md, "Reads of the parent from the
// local store"): opening them when a disk takes its lock, the test of a read
// against them, the once-a-second check that the client is still connected,
// and the fall-back to the cluster.
#include "blockstore/rbd_local_parent.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <cstring>
#include <ctime>
#include <vector>

#include "blockstore/rbd_disk_io.h"

namespace imgfs::rbd_internal {

std::unique_ptr<LocalParent> OpenLocalParent(Connection& conn, ImageSource* images,
                                             librbd::Image& img, const std::string& name) {
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
  if ((features & kMaps) != kMaps || (flags & RBD_FLAG_OBJECT_MAP_INVALID) ||
      img.get_stripe_count() != 1 || info.obj_size == 0 || overlap == 0) {
    return nullptr;
  }
  auto image = images->OpenImage(*id);
  if (!image.ok() || (*image)->size() < overlap) return nullptr;
  auto local = std::make_unique<LocalParent>();
  local->image = std::move(*image);
  local->object_size = info.obj_size;
  local->overlap = overlap;
  local->objects = static_cast<size_t>((overlap + info.obj_size - 1) / info.obj_size);
  local->child = std::make_unique<std::atomic<bool>[]>(local->objects);
  std::vector<Extent> present;
  if (img.diff_iterate2(nullptr, 0, overlap, false, true, &CollectExtent, &present) < 0) {
    return nullptr;
  }
  for (const Extent& e : present) local->MarkChild(e.offset, e.length);
  std::string image_id;
  if (img.get_id(&image_id) < 0) return nullptr;
  local->header_oid = "rbd_header." + image_id;
  spdlog::debug("{}: reads of the parent's bytes come from local image {}", conn.Where(name),
                id->Hex());
  return local;
}

// ---- RbdDisk's side of the local reads (declared in rbd_disk_io.h).

void RbdDisk::StartLocalReads() {
  if (Local()) return;
  local_ = OpenLocalParent(*conn_, images_, *image_, name_);
  if (local_) {
    watch_.overlap_changed = true;  // a change before the reads began
    local_ptr_.store(local_.get(), std::memory_order_release);
  }
}

bool RbdDisk::LocalCovers(uint64_t offset, uint64_t length) {
  LocalParent* local = Local();
  if (!local) return false;
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

bool RbdDisk::ReadLocal(uint64_t offset, MutableByteView buf) {
  Status st = Local()->image->Read(offset, buf);
  if (st.ok()) {
    if (local_read_bytes_) local_read_bytes_->fetch_add(buf.size(), std::memory_order_relaxed);
    return true;
  }
  spdlog::warn("{}: reading the parent's bytes locally failed, reading them from the cluster: {}",
               Where(), st.ToString());
  return false;
}

}  // namespace imgfs::rbd_internal
