#include "blockstore/rbd_disk.h"

#include <rados/librados.h>
#include <rbd/librbd.h>
#include <rbd/librbd.hpp>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <ctime>
#include <deque>
#include <list>
#include <map>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <shared_mutex>
#include <thread>
#include <unordered_map>
#include <functional>

#include "blockstore/disk_util.h"
#include "blockstore/mutex.h"
#include "blockstore/units.h"
#include "blockstore/backends.h"

namespace imgfs {
namespace {

constexpr char kBasePrefix[] = "imgfs.base.";
constexpr char kTmpPrefix[] = "imgfs.tmp.";
constexpr char kSnap[] = "base";
constexpr char kInstancesObject[] = "imgfs.instances";
constexpr char kPublishedKey[] = "imgfs.published";
constexpr uint64_t kFeatures = RBD_FEATURE_LAYERING | RBD_FEATURE_EXCLUSIVE_LOCK |
                               RBD_FEATURE_OBJECT_MAP | RBD_FEATURE_FAST_DIFF |
                               RBD_FEATURE_DEEP_FLATTEN;
// librbd refuses an image with more objects than an object map holds
// (cls_rbd's MAX_OBJECT_MAP_OBJECT_COUNT: 976.6 TiB with 4 MiB objects).
// imgfs stops at 2^24 objects (64 TiB with 4 MiB objects, a 4 MiB object
// map): the object map is written whole when a disk is created or grown
// and read whole when it is opened for writing, which took 4 s at 64 TiB and
// 11 s at 256 TiB on the test cluster, against the client's 20 s op timeout
// (docs/rbd.md, "Disk sizes").
constexpr uint64_t kLibrbdMaxObjects = 256'000'000;
constexpr unsigned kMaxObjectsLog2 = 24;
constexpr uint64_t kPublishRunBytes = 4u << 20;  // RBD's default object size
constexpr size_t kPublishDepth = 16;
constexpr int kPublishLockSeconds = 30;

Status Err(int r, std::string_view what) { return Status::FromErrno(r, what); }

DiskSizeLimit RbdSizeLimit(uint64_t object_size) {
  uint64_t objects = std::min<uint64_t>(kLibrbdMaxObjects, uint64_t{1} << kMaxObjectsLog2);
  return {objects * object_size, "2^" + std::to_string(kMaxObjectsLog2) + " RBD objects of " +
                                     FormatSize(object_size) + ", imgfs's largest rbd disk"};
}

// One cluster connection and I/O context, shared by the backend and its disks.
struct Connection {
  rados_t cluster = nullptr;
  rados_ioctx_t io = nullptr;
  std::string pool;
  std::string ns;
  std::string where;  // "pool" or "pool/ns", for messages and locations
  // Lock owners that are dead earlier servers of this mount
  // (DiskBackend::SetDeadLockOwners): an open for writing breaks their lock.
  Mutex dead_mu;
  std::vector<std::string> dead_owners GUARDED_BY(dead_mu);

  ~Connection() {
    if (io) rados_ioctx_destroy(io);
    if (cluster) rados_shutdown(cluster);
  }
};

// An open RBD image, closed on destruction.
class Image {
 public:
  Image() = default;
  explicit Image(rbd_image_t img) : img_(img) {}
  Image(Image&& o) noexcept : img_(std::exchange(o.img_, nullptr)) {}
  Image& operator=(Image&& o) noexcept {
    std::swap(img_, o.img_);
    return *this;
  }
  ~Image() {
    if (img_) rbd_close(img_);
  }
  rbd_image_t get() const { return img_; }

 private:
  rbd_image_t img_ = nullptr;
};

Result<Image> OpenImage(Connection& c, const std::string& name, bool read_only,
                        const char* snap = nullptr) {
  rbd_image_t img = nullptr;
  int r = read_only ? rbd_open_read_only(c.io, name.c_str(), &img, snap)
                    : rbd_open(c.io, name.c_str(), &img, snap);
  if (r < 0) return Err(r, "rbd: opening " + c.where + "/" + name);
  return Image(img);
}

Result<std::string> GetMetadata(rbd_image_t img, const char* key) {
  std::string value(64, '\0');
  for (int i = 0; i < 4; i++) {
    std::fill(value.begin(), value.end(), '\0');
    size_t len = value.size();
    int r = rbd_metadata_get(img, key, value.data(), &len);
    if (r == -ERANGE) {
      value.resize(len);
      continue;
    }
    if (r < 0) return Err(r, std::string("rbd: reading metadata ") + key);
    // On success librbd leaves `len` as it was: the value is NUL-terminated.
    value.resize(strnlen(value.data(), value.size()));
    return value;
  }
  return Status::IOError(std::string("rbd: metadata ") + key + " keeps growing");
}

// The images of the pool (namespace): name and image id of each.
Result<std::vector<std::pair<std::string, std::string>>> ListImageSpecs(Connection& c) {
  std::vector<rbd_image_spec_t> specs(64);
  for (;;) {
    size_t n = specs.size();
    int r = rbd_list2(c.io, specs.data(), &n);
    if (r == -ERANGE) {
      specs.resize(n + 16);
      continue;
    }
    if (r < 0) return Err(r, "rbd: listing images in " + c.where);
    std::vector<std::pair<std::string, std::string>> out;
    out.reserve(n);
    for (size_t i = 0; i < n; i++) out.emplace_back(specs[i].name, specs[i].id);
    rbd_image_spec_list_cleanup(specs.data(), n);
    return out;
  }
}

Result<std::vector<std::string>> ListImageNames(Connection& c) {
  ASSIGN_OR_RETURN(auto specs, ListImageSpecs(c));
  std::vector<std::string> names;
  names.reserve(specs.size());
  for (auto& [name, id] : specs) names.push_back(std::move(name));
  return names;
}

// The value of omap key `key` of object `oid`; NotFound when the object or
// the key is missing.
Result<std::string> OmapValue(rados_ioctx_t io, const std::string& oid, const std::string& key) {
  rados_read_op_t op = rados_create_read_op();
  rados_omap_iter_t it = nullptr;
  int rval = 0;
  const char* keys[] = {key.c_str()};
  size_t key_lens[] = {key.size()};
  rados_read_op_omap_get_vals_by_keys2(op, keys, 1, key_lens, &it, &rval);
  int r = rados_read_op_operate(op, io, oid.c_str(), 0);
  rados_release_read_op(op);
  if (r == 0 && rval < 0) r = rval;
  if (r < 0) {
    if (it) rados_omap_get_end(it);
    if (r == -ENOENT) return Status::NotFound("rados: no object " + oid);
    return Err(r, "rados: reading " + oid);
  }
  std::optional<std::string> value;
  char* k = nullptr;
  char* v = nullptr;
  size_t klen = 0, vlen = 0;
  while (rados_omap_get_next2(it, &k, &v, &klen, &vlen) == 0 && k) {
    if (std::string_view(k, klen) == key) value.emplace(v, vlen);
  }
  rados_omap_get_end(it);
  if (!value) return Status::NotFound("rados: no key " + key + " in " + oid);
  return *value;
}

// Calls `fn` with each omap key of object `oid` that begins with
// `prefix`, in order, reading them a thousand at a time (a range of the
// sorted keys: the cost grows with the keys that match, not with all). No
// keys when the object does not exist.
Status ForEachOmapKey(rados_ioctx_t io, const char* oid, const std::string& prefix,
                      const std::function<void(const std::string&)>& fn) {
  std::string after;
  for (;;) {
    rados_read_op_t op = rados_create_read_op();
    rados_omap_iter_t it = nullptr;
    unsigned char more = 0;
    int prval = 0;
    rados_read_op_omap_get_vals2(op, after.c_str(), prefix.c_str(), 1000, &it, &more, &prval);
    int r = rados_read_op_operate(op, io, oid, 0);
    rados_release_read_op(op);
    if (r == 0 && prval < 0) r = prval;
    if (r < 0) {
      if (it) rados_omap_get_end(it);
      if (r == -ENOENT) return Status::OK();
      return Err(r, std::string("rados: reading the keys of ") + oid);
    }
    char* key = nullptr;
    char* val = nullptr;
    size_t key_len = 0, val_len = 0;
    while (rados_omap_get_next2(it, &key, &val, &key_len, &val_len) == 0 && key) {
      after.assign(key, key_len);
      fn(after);
    }
    rados_omap_get_end(it);
    if (!more) return Status::OK();
  }
}

// Ceph's encodings, as librbd stores them: little-endian integers, strings
// as a 32-bit length and the bytes. Fails (false) past the end.
struct Decoder {
  std::string_view in;
  template <typename T>
  bool Int(T* out) {
    if (in.size() < sizeof(T)) return false;
    T v = 0;
    for (size_t i = 0; i < sizeof(T); ++i) v |= T(uint8_t(in[i])) << (8 * i);
    *out = v;
    in.remove_prefix(sizeof(T));
    return true;
  }
  bool String(std::string* out) {
    uint32_t n = 0;
    if (!Int(&n) || in.size() < n) return false;
    out->assign(in.substr(0, n));
    in.remove_prefix(n);
    return true;
  }
};

// "<instance>_<disk>" back to a DiskRef, or nullopt for other images.
std::optional<DiskRef> ParseDiskName(std::string_view name) {
  size_t us = name.find('_');
  if (us == std::string_view::npos) return std::nullopt;
  DiskRef ref{std::string(name.substr(0, us)), std::string(name.substr(us + 1))};
  if (!ValidateInstanceName(ref.instance).ok() || !ValidateDiskName(ref.disk).ok()) {
    return std::nullopt;
  }
  return ref;
}

Status ValidateRef(const DiskRef& ref) {
  RETURN_IF_ERROR(ValidateInstanceName(ref.instance));
  return ValidateDiskName(ref.disk);
}

Result<size_t> CountWatchers(rbd_image_t img) {
  std::vector<rbd_image_watcher_t> w(8);
  for (;;) {
    size_t n = w.size();
    int r = rbd_watchers_list(img, w.data(), &n);
    if (r == -ERANGE) {
      w.resize(n + 8);
      continue;
    }
    if (r < 0) return Err(r, "rbd: listing watchers");
    rbd_watchers_list_cleanup(w.data(), n);
    return n;
  }
}

// The completion of one asynchronous request of a disk: hands the result to
// `done`.
struct AioRequest {
  Disk::Callback done;
  std::function<void(int)> finished;  // bookkeeping of the issuing disk (librbd's result)
  const char* what;
};

// librbd calls progress callbacks unconditionally.
int NoProgress(uint64_t, uint64_t, void*) { return 0; }

// librbd calls the completion callback unconditionally.
void NoCallback(rbd_completion_t, void*) {}

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

// diff_iterate2's callback: collects the extents that hold data into a
// std::vector<Extent>.
int CollectExtent(uint64_t off, size_t len, int exists, void* arg) {
  if (exists) static_cast<std::vector<Extent>*>(arg)->push_back({off, len});
  return 0;
}

// The parent's bytes of a clone, read from the local image store instead of
// from the cluster: the base `imgfs.base.<id>@base` holds exactly the bytes
// of stored image <id> (content-addressed, and a snapshot never changes).
// Used only while the disk holds its exclusive lock, taken with librbd's
// automatic transitions off, so nothing but this handle writes the clone,
// and `child` (which of its objects the clone has) stays exact: it is
// filled from the object map when the lock is taken (librbd loads the map
// afresh then), set before any write or discard reaches an object, and never
// cleared. A disk opened in standby (another client held the lock) has none
// until its first write takes the lock. A read goes to the local image only
// when it lies below the parent overlap and within objects the clone does
// not have; there the clone reads the parent, so the bytes are the same.
// Header changes made through other clients (`rbd resize` or `rbd flatten`
// are forwarded to the lock owner, us) reach the disk's header watch
// (HeaderWatch): the next read then asks librbd for the overlap again.
struct LocalParent {
  std::shared_ptr<ImageReader> image;
  uint64_t object_size = 0;
  std::atomic<uint64_t> overlap{0};  // only shrinks (with the disk)
  size_t objects = 0;                // of the overlap when the lock was taken
  std::unique_ptr<std::atomic<bool>[]> child;
  // A client cut off from the cluster (blocklisted when another host breaks
  // its lock) must not go on answering from here: at most once a second a
  // read also stats the image header in the cluster, and a failure stops
  // the local reads.
  std::string header_oid;
  std::atomic<int64_t> next_check_ns{0};

  void LowerOverlap(uint64_t to) {
    uint64_t cur = overlap.load();
    while (to < cur && !overlap.compare_exchange_weak(cur, to)) {
    }
  }

  void MarkChild(uint64_t offset, uint64_t length) {
    if (length == 0) return;
    uint64_t first = offset / object_size;
    uint64_t last = (offset + length - 1) / object_size;
    for (uint64_t o = first; o <= last && o < objects; ++o) {
      child[o].store(true, std::memory_order_release);
    }
  }

  bool Covers(uint64_t offset, uint64_t length) const {
    if (length == 0 || offset + length > overlap.load(std::memory_order_acquire)) return false;
    uint64_t first = offset / object_size;
    uint64_t last = (offset + length - 1) / object_size;
    for (uint64_t o = first; o <= last; ++o) {
      if (o >= objects || child[o].load(std::memory_order_acquire)) return false;
    }
    return true;
  }
};

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

  void handle_notify() override {
    size_changed.store(true);
    overlap_changed.store(true);
    info_changed.store(true);
  }
};

// How old the bytes a disk owns (DiskInfo::owned_bytes, st_blocks through
// the mount) may be before FillInfo counts them again, in the background.
constexpr auto kUsageRefresh = std::chrono::seconds(1);

std::unique_ptr<LocalParent> OpenLocalParent(Connection& conn, ImageSource* images,
                                             librbd::Image& img, const std::string& name);

// How long a disk opened in standby waits, at its first write, for a lock
// holder that is letting the lock go (qemu's source closes its writable
// descriptor when a migration completes, a moment after the destination may
// already write), before the write fails with Busy.
constexpr auto kHandOverWait = std::chrono::seconds(5);
constexpr auto kHandOverPoll = std::chrono::milliseconds(5);

class RbdDisk;

// Breaks the lock on `img` when its owner is a dead earlier server of this
// mount (SetDeadLockOwners; docs/rbd.md, "A server replaced"). librbd
// blocklists the owner's client before it breaks the lock
// (rbd_blocklist_on_break_lock), so nothing that client sent can land
// after this. True when the lock was broken.
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
      spdlog::error("{}: breaking the lock of dead server {}: {}", conn.where + "/" + name, owner,
                    std::strerror(-r));
      return false;
    }
    spdlog::warn("{}: broke the lock of {} (an earlier server of this mount, dead; its client "
                 "is blocklisted)",
                 conn.where + "/" + name, owner);
    return true;
  }
  return false;
}

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

Result<DiskAttrs> ParseAttrs(const std::function<Result<std::string>(const char*)>& get) {
  DiskAttrs a;
  std::pair<const char*, uint32_t*> kv[] = {
      {"imgfs.mode", &a.mode}, {"imgfs.uid", &a.uid}, {"imgfs.gid", &a.gid}};
  for (auto& [k, p] : kv) {
    auto v = get(k);
    if (!v.ok()) {
      if (v.status().IsNotFound()) continue;
      return v.status();
    }
    try {
      *p = static_cast<uint32_t>(std::stoul(*v));
    } catch (...) {
      return Status::Corruption(std::string("rbd: metadata ") + k + " is not a number: " + *v);
    }
  }
  return a;
}

class RbdDisk : public Disk {
 public:
  // `held`: the exclusive lock was taken by the open (writable disks);
  // a writable disk without it is in standby (OpenMode::kReadWriteStandby).
  // `rw_handle`: librbd opened the image for writing (every writable disk,
  // and read-only ones that StartWriting may make writable).
  RbdDisk(std::shared_ptr<Connection> conn, ImageSource* images, DiskRef ref, std::string name,
          std::unique_ptr<librbd::Image> image, bool writable, bool rw_handle, bool held,
          uint64_t size, DiskSizeLimit limit)
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

  // Starts the header watch (writable librbd handles: librbd watches the
  // header of no other) and, with the lock held, the local parent reads.
  Status Init() {
    if (!rw_handle_) return Status::OK();
    uint64_t handle = 0;
    if (int r = image_->update_watch(&watch_, &handle); r < 0) {
      return Err(r, "rbd: watching the header of " + Where());
    }
    watch_.handle = handle;
    // A change made before the watch began.
    watch_.size_changed = true;
    if (held_) StartLocalReads();
    return Status::OK();
  }

  ~RbdDisk() override {
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

  const DiskRef& ref() const override { return ref_; }
  // Follows a size set by another client (the lock owner's resize, seen by
  // the header watch): asks librbd again after a change.
  uint64_t size() const override {
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
  bool writable() const override { return writable_.load(); }

  // Joins the backend's OpenDisks (writable librbd handles only: their
  // header is watched).
  void Register(std::shared_ptr<OpenDisks> reg) {
    MutexLock lock(reg->mu);
    reg->by_name.emplace(name_, this);
    open_disks_ = std::move(reg);
  }

  // DiskBackend::Info from the open image; `info->ref` and `location` are
  // the caller's. Called with OpenDisks::mu held.
  Status FillInfo(DiskInfo* info) const {
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

  // After a change of the header made through another handle of this
  // backend (SetAttrs): the next FillInfo reads it again.
  void InfoChanged() const { watch_.info_changed.store(true); }

  // The migration source's last writer closed: let the lock go now (the
  // destination is waiting for it), keep the handle for reads. Under
  // resize_mu_ held exclusively no request is being started; librbd's
  // lock_release waits for the ones in flight. The local parent reads stop
  // (they rely on the lock).
  Status StopWriting() override {
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

  // A migration's destination taking over (Disk::StartWriting): the open
  // handle becomes writable, with the lock taken now if it is free (the
  // source let it go when it stopped), else in standby until the first
  // write (TakeLock). No second open of the image, which is what this
  // saves: the destination's open for writing is in the VM's downtime.
  Status StartWriting() override {
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

  void SetLocalReadCounter(std::shared_ptr<std::atomic<uint64_t>> bytes) override {
    local_read_bytes_ = std::move(bytes);
  }

  Status Read(uint64_t offset, MutableByteView buf) override {
    std::shared_lock lock(resize_mu_);
    RETURN_IF_ERROR(CheckRange(offset, buf.size()));
    if (buf.empty()) return Status::OK();
    if (LocalCovers(offset, buf.size()) && ReadLocal(offset, buf)) return Status::OK();
    ceph::bufferlist bl;
    ssize_t r = image_->read2(offset, buf.size(), bl, 0);
    if (r < 0) {
      StopLocalReads();
      return Err(static_cast<int>(r), "rbd: reading " + Where());
    }
    ToReadBuffers(bl, buf.size()).CopyTo(buf);
    return Status::OK();
  }

  Status Write(uint64_t offset, ByteView buf) override {
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

  Status Discard(uint64_t offset, uint64_t length) override {
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

  Status Flush() override {
    if (!held_.load()) return Status::OK();
    int r = image_->flush();
    if (r < 0) {
      StopLocalReads();
      return Err(r, "rbd: flushing " + Where());
    }
    return Status::OK();
  }

  Status Resize(uint64_t new_size, bool allow_shrink) override {
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

  Result<std::vector<Extent>> Allocated(uint64_t offset, uint64_t length) override {
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

  void ReadAsync(uint64_t offset, MutableByteView buf, Callback done) override {
    ReadBuffersAsync(offset, buf.size(),
                     [buf, done = std::move(done)](Result<ReadBuffers> data) {
                       if (!data.ok()) return done(data.status());
                       data->CopyTo(buf);
                       done(Status::OK());
                     });
  }

  // librbd's C++ API reads into a bufferlist: its buffers are the ones the
  // messenger received the data in, handed on without a copy (the C API
  // copies them into the caller's buffer).
  void ReadBuffersAsync(uint64_t offset, size_t length, ReadBuffersCallback done) override {
    std::shared_lock lock(resize_mu_);
    Status s = CheckRange(offset, length);
    if (!s.ok()) return done(std::move(s));
    if (length == 0) return done(ReadBuffers{});
    if (LocalCovers(offset, length)) {
      std::shared_ptr<uint8_t[]> buf(new uint8_t[length]);
      if (ReadLocal(offset, MutableByteView(buf.get(), length))) {
        return done(ReadBuffers{{ByteView(buf.get(), length)}, buf});
      }
    }
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

  void WriteAsync(uint64_t offset, ByteView buf, Callback done) override {
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

  void DiscardAsync(uint64_t offset, uint64_t length, Callback done) override {
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

  void FlushAsync(Callback done) override {
    if (!held_.load()) return done(Status::OK());
    librbd::RBD::AioCompletion* c = nullptr;
    AioRequest* req = Start(std::move(done), "rbd: flushing", &c);
    int r = c ? image_->aio_flush(c) : -ENOMEM;
    if (r < 0) Abort(req, c, r);
  }

 private:
  std::string Where() const { return conn_->where + "/" + name_; }

  // FillInfo's figures from the image: parent, owned bytes, attributes.
  // The header is read through librbd's copy (kept current by the watch);
  // the usage and the attributes each cost round trips.
  Status ReadInfo(uint64_t size, DiskInfo* info) const {
    librbd::linked_image_spec_t parent;
    librbd::snap_spec_t snap;
    info->parent.reset();
    int r = image_->get_parent(&parent, &snap);
    if (r == 0) {
      if (parent.image_name.starts_with(kBasePrefix)) {
        auto id = ImageId::FromHex(
            std::string_view(parent.image_name).substr(std::strlen(kBasePrefix)));
        if (id.ok()) info->parent = *id;
      }
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

  // The bytes of the objects the image has (the object map: a round trip).
  Result<uint64_t> Usage(uint64_t size) const {
    uint64_t owned = 0;
    // (librbd asserts on an empty range.)
    int r = size == 0 ? 0
                      : image_->diff_iterate2(
                            nullptr, 0, size, false, true,
                            [](uint64_t, size_t len, int exists, void* arg) {
                              if (exists) *static_cast<uint64_t*>(arg) += len;
                              return 0;
                            },
                            &owned);
    if (r < 0) return Err(r, "rbd: usage of " + Where());
    return owned;
  }

  // Counts the owned bytes again on a thread of its own (FillInfo answers
  // with the last count meanwhile). Counted as a request in flight, so the
  // destructor waits for it.
  void RefreshUsage(uint64_t size) const {
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


  LocalParent* Local() const { return local_ptr_.load(std::memory_order_acquire); }

  // A disk in standby takes the exclusive lock at its first write, discard
  // or resize (rbd_lock_acquire, so librbd's automatic transitions stay off
  // and the lock is kept until the disk is closed). A holder that is letting
  // the lock go (a migration's source closing its writable descriptor) is
  // waited for, up to kHandOverWait; a holder that keeps it (a writer still
  // running) makes this Busy, and nothing is written. librbd reloads the
  // object map when it takes the lock, so what another client wrote is seen;
  // then the local parent reads start.
  Status TakeLock() {
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

  // Starts the local parent reads (once; the lock is held and kept).
  void StartLocalReads() {
    if (Local()) return;
    local_ = OpenLocalParent(*conn_, images_, *image_, name_);
    if (local_) {
      watch_.overlap_changed = true;  // a change before the reads began
      local_ptr_.store(local_.get(), std::memory_order_release);
    }
  }

  // Whether [offset, offset+length) is the parent's bytes (LocalParent),
  // after taking in a header change made by another client.
  bool LocalCovers(uint64_t offset, uint64_t length) {
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

  // Starts the once-a-second stat of the header (LocalParent::header_oid);
  // its completion counts as a request (Finished), so a failure stops the
  // local reads and the disk's destructor waits for it.
  void CheckStillConnected(LocalParent& local) {
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

  struct HeaderCheck {
    RbdDisk* disk;
    uint64_t size = 0;
    time_t mtime = 0;
  };

  static void HeaderChecked(rados_completion_t c, void* arg) {
    auto* check = static_cast<HeaderCheck*>(arg);
    int r = rados_aio_get_return_value(c);
    rados_aio_release(c);
    RbdDisk* disk = check->disk;
    delete check;
    disk->Finished(r);
  }

  // After any failed request (a lost lock, a blocklisted client, a full
  // cluster) every read goes to the cluster: the local reads rely on this
  // handle being the clone's only writer.
  void StopLocalReads() {
    LocalParent* local = Local();
    if (local && local->overlap.exchange(0) != 0) {
      spdlog::warn("{}: a request failed; the parent's bytes are read from the cluster from now on",
                   Where());
    }
  }

  // Reads a range LocalCovers admitted from the local image; false to read
  // it from the cluster instead when the local image fails (a damaged chunk
  // is never returned: the cluster has the same bytes).
  bool ReadLocal(uint64_t offset, MutableByteView buf) {
    Status st = Local()->image->Read(offset, buf);
    if (st.ok()) {
      if (local_read_bytes_) local_read_bytes_->fetch_add(buf.size(), std::memory_order_relaxed);
      return true;
    }
    spdlog::warn("{}: reading the parent's bytes locally failed, reading them from the cluster: {}",
                 Where(), st.ToString());
    return false;
  }

  Status CheckWritable() const {
    if (!writable_.load()) return Status::ReadOnly("disk " + ref_.ToString() + " is open read-only");
    return Status::OK();
  }

  // The part of [offset, offset+length) within the disk.
  uint64_t ClipToSize(uint64_t offset, uint64_t length) const {
    uint64_t size = size_.load();
    if (offset >= size) return 0;
    return std::min(length, size - offset);
  }

  Status CheckRange(uint64_t offset, uint64_t length) const {
    uint64_t size = size_.load();
    if (length > size || offset > size - length) {
      return Status::InvalidArgument("disk " + ref_.ToString() + ": range " +
                                     std::to_string(offset) + "+" + std::to_string(length) +
                                     " is beyond its size " + std::to_string(size));
    }
    return Status::OK();
  }

  // A request and its librbd completion (*c stays null if that cannot be
  // made: then Abort it).
  AioRequest* Start(Callback done, const char* what, librbd::RBD::AioCompletion** c) {
    {
      MutexLock lock(inflight_mu_);
      inflight_++;
    }
    auto* req = new AioRequest{std::move(done), [this](int r) { Finished(r); }, what};
    *c = new (std::nothrow) librbd::RBD::AioCompletion(req, &AioComplete);
    return req;
  }

  void Abort(AioRequest* req, librbd::RBD::AioCompletion* c, int r) {
    if (c) c->release();
    Callback done = std::move(req->done);
    std::string what = std::string(req->what) + " " + Where();
    delete req;
    Finished(r);
    done(Err(r, what));
  }

  void Finished(int r) {
    if (r < 0) StopLocalReads();
    MutexLock lock(inflight_mu_);
    if (--inflight_ == 0) inflight_cv_.NotifyAll();
  }


  static std::vector<Extent> MergeClip(std::vector<Extent> in, uint64_t offset, uint64_t length) {
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
  // Null: every read goes to the cluster. Set once, under take_mu_ or in
  // Init, when the lock is held; local_ptr_ is what readers load.
  std::unique_ptr<LocalParent> local_;
  std::atomic<LocalParent*> local_ptr_{nullptr};
  // Bytes read from local_ (SetLocalReadCounter); set before other threads
  // see the disk.
  std::shared_ptr<std::atomic<uint64_t>> local_read_bytes_;

  Mutex inflight_mu_;
  CondVar inflight_cv_;
  size_t inflight_ GUARDED_BY(inflight_mu_) = 0;
};

// The local reads of a disk's parent (see LocalParent), or null when they
// cannot be used: images are not local, the parent is not a base of this
// pool, striping or a missing/invalid object map would make `child`
// inexact or slow to build, or the image is not in the store. Never fails
// the open: the cluster serves every read then.
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
  auto id = ImageId::FromHex(std::string_view(parent.image_name).substr(std::strlen(kBasePrefix)));
  uint64_t features = 0, flags = 0, overlap = 0;
  librbd::image_info_t info{};
  if (!id.ok() || img.features(&features) < 0 || img.get_flags(&flags) < 0 ||
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
  spdlog::debug("{}: reads of the parent's bytes come from local image {}", conn.where + "/" + name,
                id->Hex());
  return local;
}

// ---- Listing and lookup without opening images (docs/rbd.md, "Listing
// and lookup") ----
//
// What DiskInfo needs of a disk is in RADOS objects that librbd keeps: the
// header's omap (cls_rbd's keys: size, order, features, flags, parent,
// modify_timestamp, metadata_<key>) and the object map (cls_rbd's
// BitVector<2>, rbd_object_map.<id>). Opening an image costs an open of
// librbd's image context (a watch-free open still reads the header in
// several round trips, 20-30 ms here); these reads cost one round trip per
// object and are issued many at a time.

constexpr size_t kHeaderReadDepth = 128;          // reads in flight in a batch
constexpr size_t kObjectMapFirstRead = 64 << 10;  // object maps up to 1 TiB of 4 MiB objects
constexpr auto kParentCacheTime = std::chrono::seconds(30);

// Asynchronous RADOS reads, each one read op on one object: omap values by
// key, or the first bytes of the object. Run issues them, kHeaderReadDepth
// at a time, and waits for all.
class ReadBatch {
 public:
  struct Req {
    std::string oid;
    std::vector<std::string> keys;  // omap read when not empty
    size_t len = 0;                 // else a read of `len` bytes
    // Results: r < 0 is the error (-ENOENT: no such object).
    int r = 0;
    std::map<std::string, std::string> values;
    std::string data;
    // In flight.
    rados_completion_t c = nullptr;
    rados_read_op_t op = nullptr;
    rados_omap_iter_t it = nullptr;
    int prval = 0;
    size_t bytes_read = 0;
  };

  explicit ReadBatch(rados_ioctx_t io) : io_(io) {}
  ~ReadBatch() {
    for (auto& q : reqs_) Reap(*q);
  }

  size_t AddOmap(std::string oid, std::vector<std::string> keys) {
    auto q = std::make_unique<Req>();
    q->oid = std::move(oid);
    q->keys = std::move(keys);
    reqs_.push_back(std::move(q));
    return reqs_.size() - 1;
  }
  size_t AddRead(std::string oid, size_t len) {
    auto q = std::make_unique<Req>();
    q->oid = std::move(oid);
    q->len = len;
    reqs_.push_back(std::move(q));
    return reqs_.size() - 1;
  }
  Req& operator[](size_t i) { return *reqs_[i]; }

  void Run() {
    std::deque<Req*> inflight;
    for (auto& q : reqs_) {
      if (q->c) continue;  // an earlier Run issued it
      while (inflight.size() >= kHeaderReadDepth) {
        Reap(*inflight.front());
        inflight.pop_front();
      }
      Issue(*q);
      if (q->c) inflight.push_back(q.get());
    }
    for (Req* q : inflight) Reap(*q);
  }

 private:
  void Issue(Req& q) {
    q.op = rados_create_read_op();
    if (!q.keys.empty()) {
      std::vector<const char*> keys;
      std::vector<size_t> lens;
      for (const auto& k : q.keys) {
        keys.push_back(k.c_str());
        lens.push_back(k.size());
      }
      rados_read_op_omap_get_vals_by_keys2(q.op, keys.data(), keys.size(), lens.data(), &q.it,
                                           &q.prval);
    } else {
      q.data.resize(q.len);
      rados_read_op_read(q.op, 0, q.len, q.data.data(), &q.bytes_read, &q.prval);
    }
    int r = rados_aio_create_completion2(nullptr, nullptr, &q.c);
    if (r == 0) r = rados_aio_read_op_operate(q.op, io_, q.c, q.oid.c_str(), 0);
    if (r < 0) {
      if (q.c) rados_aio_release(q.c);
      q.c = nullptr;
      rados_release_read_op(q.op);
      q.op = nullptr;
      q.r = r;
      q.len = 0;
      q.keys.clear();
    }
  }

  void Reap(Req& q) {
    if (!q.c) return;
    rados_aio_wait_for_complete(q.c);
    int r = rados_aio_get_return_value(q.c);
    rados_aio_release(q.c);
    q.c = nullptr;
    if (r == 0 && q.prval < 0) r = q.prval;
    q.r = r;
    if (!q.keys.empty()) {
      if (r >= 0 && q.it) {
        char* k = nullptr;
        char* v = nullptr;
        size_t klen = 0, vlen = 0;
        while (rados_omap_get_next2(q.it, &k, &v, &klen, &vlen) == 0 && k) {
          q.values.emplace(std::string(k, klen), std::string(v, vlen));
        }
      }
      if (q.it) rados_omap_get_end(q.it);
      q.it = nullptr;
    } else {
      q.data.resize(r >= 0 ? q.bytes_read : 0);
    }
    rados_release_read_op(q.op);
    q.op = nullptr;
  }

  rados_ioctx_t io_;
  std::vector<std::unique_ptr<Req>> reqs_;
};

// A clone's parent as cls_rbd's "parent" key holds it.
struct ParentSpec {
  int64_t pool = -1;
  std::string ns;
  std::string image_id;
  uint64_t snap = 0;
};

// Decodes the "parent" key (cls_rbd_parent: version, compat, length, pool
// id, namespace (version 2), image id, snapshot id, overlap).
std::optional<ParentSpec> DecodeParent(std::string_view v) {
  Decoder d{v};
  uint8_t version = 0, compat = 0;
  uint32_t length = 0;
  ParentSpec p;
  if (!d.Int(&version) || !d.Int(&compat) || !d.Int(&length) || !d.Int(&p.pool)) {
    return std::nullopt;
  }
  if (version >= 2 && !d.String(&p.ns)) return std::nullopt;
  if (!d.String(&p.image_id) || !d.Int(&p.snap)) return std::nullopt;
  return p;
}

// The header keys HeaderInfo reads.
const std::vector<std::string>& HeaderKeys() {
  static const std::vector<std::string> keys = {"size",
                                                "order",
                                                "features",
                                                "flags",
                                                "parent",
                                                "modify_timestamp",
                                                "metadata_imgfs.mode",
                                                "metadata_imgfs.uid",
                                                "metadata_imgfs.gid"};
  return keys;
}

// A disk's header, decoded; nullopt when it is not what the fast path
// understands (then the image is opened instead).
struct Header {
  uint64_t size = 0;
  uint64_t object_size = 0;
  std::optional<ParentSpec> parent;
  int64_t mtime_ns = 0;
  DiskAttrs attrs;
};

std::optional<Header> DecodeHeader(const std::map<std::string, std::string>& kv, int64_t pool,
                                   const std::string& ns) {
  auto get = [&](const char* k) -> const std::string* {
    auto it = kv.find(k);
    return it == kv.end() ? nullptr : &it->second;
  };
  Header h;
  uint8_t order = 0;
  uint64_t features = 0, flags = 0;
  const std::string* v = get("size");
  if (!v || !Decoder{*v}.Int(&h.size)) return std::nullopt;
  if (!(v = get("order")) || !Decoder{*v}.Int(&order) || order < 12 || order > 26) {
    return std::nullopt;
  }
  h.object_size = uint64_t{1} << order;
  if (!(v = get("features")) || !Decoder{*v}.Int(&features)) return std::nullopt;
  if ((v = get("flags")) && !Decoder{*v}.Int(&flags)) return std::nullopt;
  // The object map must be there and valid, objects not striped.
  constexpr uint64_t kMaps = RBD_FEATURE_OBJECT_MAP | RBD_FEATURE_FAST_DIFF;
  if ((features & kMaps) != kMaps || (features & RBD_FEATURE_STRIPINGV2) ||
      (flags & (RBD_FLAG_OBJECT_MAP_INVALID | RBD_FLAG_FAST_DIFF_INVALID))) {
    return std::nullopt;
  }
  if ((v = get("parent"))) {
    h.parent = DecodeParent(*v);
    if (!h.parent) return std::nullopt;
    if (h.parent->pool == -1) {
      h.parent.reset();  // detached (flattened)
    } else if (h.parent->pool != pool || h.parent->ns != ns) {
      return std::nullopt;  // a parent elsewhere: librbd says what it is
    }
  }
  if ((v = get("modify_timestamp"))) {
    Decoder d{*v};
    uint32_t sec = 0, nsec = 0;
    if (d.Int(&sec) && d.Int(&nsec)) h.mtime_ns = int64_t{sec} * 1000000000 + nsec;
  }
  auto attrs = ParseAttrs([&](const char* key) -> Result<std::string> {
    auto it = kv.find(std::string("metadata_") + key);
    if (it == kv.end()) return Status::NotFound(key);
    return it->second;
  });
  if (!attrs.ok()) return std::nullopt;
  h.attrs = *attrs;
  return h;
}

// The bytes of the objects an image has, from its object map (cls_rbd's
// encoding: the header as a length-prefixed bufferlist holding version,
// compat, length and the count of objects; then 2 bits an object, the first
// object in the high bits of the first byte; then a footer). nullopt when
// the map does not match the header, or `map` holds only its beginning
// (`*need` says how many bytes to read then).
std::optional<uint64_t> OwnedFromObjectMap(std::string_view map, uint64_t size,
                                           uint64_t object_size, size_t* need) {
  Decoder d{map};
  uint32_t hlen = 0;
  uint8_t version = 0, compat = 0;
  uint32_t length = 0;
  uint64_t count = 0;
  if (!d.Int(&hlen) || hlen != 14 || !d.Int(&version) || !d.Int(&compat) || !d.Int(&length) ||
      length != 8 || !d.Int(&count)) {
    return std::nullopt;
  }
  if (count != (size + object_size - 1) / object_size) return std::nullopt;
  const size_t bytes = static_cast<size_t>((count + 3) / 4);
  if (d.in.size() < bytes) {
    *need = 4 + hlen + bytes;
    return std::nullopt;
  }
  uint64_t owned = 0;
  for (uint64_t i = 0; i < count; ++i) {
    uint8_t byte = static_cast<uint8_t>(d.in[i / 4]);
    if (((byte >> (6 - 2 * (i % 4))) & 3) == 0) continue;  // OBJECT_NONEXISTENT
    owned += std::min(object_size, size - i * object_size);
  }
  return owned;
}

class RbdDiskBackend : public DiskBackend {
 public:
  RbdDiskBackend(std::shared_ptr<Connection> conn, ImageSource* images)
      : conn_(std::move(conn)), images_(images), open_disks_(std::make_shared<OpenDisks>()) {}

  std::string Describe() const override { return "rbd:" + conn_->where; }

  // New images take the object size of rbd_default_order (4 MiB unless the
  // Ceph configuration says otherwise); clones take their parent's, which
  // imgfs published with the same default.
  Result<DiskSizeLimit> MaxDiskSize(uint32_t chunk_size) override {
    (void)chunk_size;
    return RbdSizeLimit(DefaultObjectSize());
  }

  uint64_t DefaultObjectSize() const {
    char buf[32] = {};
    int order = 22;
    if (rados_conf_get(conn_->cluster, "rbd_default_order", buf, sizeof buf) == 0) {
      int o = std::atoi(buf);
      if (o >= 12 && o <= 26) order = o;
    }
    return uint64_t{1} << order;
  }

  // librbd names a lock's owner by its client's address ("IP:PORT/NONCE",
  // the nonce random per client instance); rados_getaddrs gives this
  // client's, as "[v2:IP:PORT/NONCE,...]" or "v2:IP:PORT/NONCE".
  std::string LockOwnerId() const override {
    char* addrs = nullptr;
    if (rados_getaddrs(conn_->cluster, &addrs) < 0 || !addrs) return "";
    std::string a(addrs);
    rados_buffer_free(addrs);
    a = a.substr(a.find_first_not_of('['));
    a = a.substr(0, a.find_first_of(",]"));
    if (a.starts_with("v1:") || a.starts_with("v2:")) a = a.substr(3);
    if (a.starts_with("any:")) a = a.substr(4);
    return a;
  }

  void SetDeadLockOwners(std::vector<std::string> owners) override {
    MutexLock lock(conn_->dead_mu);
    conn_->dead_owners = std::move(owners);
  }

  Status Create(const DiskRef& ref, const DiskCreateOptions& opts) override {
    RETURN_IF_ERROR(ValidateRef(ref));
    const std::string name = RbdDiskName(ref);
    const DiskSizeLimit limit = RbdSizeLimit(DefaultObjectSize());
    if (opts.size && *opts.size > limit.max_bytes) {
      return disk_util::SizeError("disk " + ref.ToString(), *opts.size, limit);
    }
    {
      rbd_image_t img = nullptr;
      int r = rbd_open_read_only(conn_->io, name.c_str(), &img, nullptr);
      if (r == 0) {
        rbd_close(img);
        return Status::AlreadyExists("disk " + ref.ToString() + " already exists");
      }
    }
    uint64_t size = 0;
    if (!opts.image) {
      if (!opts.size) return Status::InvalidArgument("a blank disk needs a size");
      size = *opts.size;
      RbdOptions o;
      int r = rbd_create4(conn_->io, name.c_str(), size, o.opts);
      if (r == -EEXIST) return Status::AlreadyExists("disk " + ref.ToString() + " already exists");
      if (r < 0) return Err(r, "rbd: creating " + Where(name));
    } else {
      if (!images_) return Status::NotSupported("this rbd backend has no image source");
      ASSIGN_OR_RETURN(ImageGeometry geometry, images_->GetGeometry(*opts.image));
      size = opts.size.value_or(geometry.size);
      if (size > limit.max_bytes)
        return disk_util::SizeError("disk " + ref.ToString(), size, limit);
      if (size < geometry.size) {
        return Status::InvalidArgument("disk size " + std::to_string(size) +
                                       " is smaller than the image " + opts.image->Hex() + " (" +
                                       std::to_string(geometry.size) + " bytes)");
      }
      const std::string base = RbdBaseName(*opts.image);
      // The manifest is loaded only when the image still has to be published.
      // The base may be unpublished (by gc or `image rm` on any host)
      // between Publish and the clone: clone under the publication lock held
      // shared, and publish again when the base went away meanwhile.
      for (;;) {
        ASSIGN_OR_RETURN(bool published, IsPublished(base));
        if (!published) {
          ASSIGN_OR_RETURN(auto reader, images_->OpenImage(*opts.image));
          RETURN_IF_ERROR(Publish(*reader));
        }
        ASSIGN_OR_RETURN(bool cloned, CloneLocked(*opts.image, ref, name));
        if (cloned) break;
      }
    }
    Status s = FinishCreate(ref, name, size, opts.attrs);
    if (!s.ok()) (void)rbd_remove(conn_->io, name.c_str());
    return s;
  }

  Result<std::unique_ptr<Disk>> Open(const DiskRef& ref, OpenMode mode) override {
    RETURN_IF_ERROR(ValidateRef(ref));
    const std::string name = RbdDiskName(ref);
    bool rw = mode != OpenMode::kReadOnly;
    // Disks use librbd's C++ API, whose reads hand over their buffers.
    librados::IoCtx io;
    librados::IoCtx::from_rados_ioctx_t(conn_->io, io);
    auto img = std::make_unique<librbd::Image>();
    librbd::RBD rbd;
    // A read-only disk gets a writable librbd handle too (no lock taken):
    // its header is watched (it follows a resize made elsewhere) and
    // StartWriting can make it writable without opening it again. If that
    // open fails (a client the cluster lets only read; a writable open,
    // which registers a watch, timing out on a cluster just back from a
    // stall: seen once, ETIMEDOUT, in guest_flush@rbd), a read-only handle
    // as before.
    bool rw_handle = true;
    int r = rbd.open(io, *img, name.c_str());
    if (!rw && r < 0 && r != -ENOENT) {
      spdlog::debug("{}: a writable handle for a read-only open failed ({}); opening read-only",
                    Where(name), std::strerror(-r));
      rw_handle = false;
      img = std::make_unique<librbd::Image>();
      r = rbd.open_read_only(io, *img, name.c_str(), nullptr);
    }
    if (r < 0) return NotFoundAsDisk(Err(r, "rbd: opening " + Where(name)), ref);
    bool held = false;
    if (rw) {
      // A lock a dead earlier server of this mount still holds is broken
      // first: asking its owner would wait for an answer that never comes.
      BreakDeadOwner(*conn_, *img, name);
      r = img->lock_acquire(RBD_LOCK_MODE_EXCLUSIVE);
      if (r == -EROFS || r == -EBUSY || r == -EAGAIN) {
        if (mode != OpenMode::kReadWriteStandby) {
          return Status::Busy("disk " + ref.ToString() + " is in use (open for writing elsewhere)");
        }
        spdlog::info("{}: open for writing elsewhere; opened in standby", Where(name));
      } else if (r < 0) {
        return Err(r, "rbd: locking " + Where(name));
      } else {
        held = true;
      }
    }
    librbd::image_info_t info{};
    if (r = img->stat(info, sizeof info); r < 0) return Err(r, "rbd: size of " + Where(name));
    auto disk = std::make_unique<RbdDisk>(conn_, images_, ref, name, std::move(img), rw,
                                          rw_handle, held, info.size, RbdSizeLimit(info.obj_size));
    RETURN_IF_ERROR(disk->Init());
    if (rw_handle) disk->Register(open_disks_);
    return std::unique_ptr<Disk>(std::move(disk));
  }

  Status Remove(const DiskRef& ref) override {
    RETURN_IF_ERROR(ValidateRef(ref));
    const std::string name = RbdDiskName(ref);
    Status in_use = CheckNotInUse(ref, name);
    // A disk whose parent is gone cannot be opened by anyone: not in use.
    if (in_use.IsNotFound() && MissingParent(name).ok()) in_use = Status::OK();
    RETURN_IF_ERROR(in_use);
    int r = rbd_remove(conn_->io, name.c_str());
    if (r == -EBUSY) return InUse(ref);
    if (r < 0) return NotFoundAsDisk(Err(r, "rbd: removing " + Where(name)), ref);
    return Status::OK();
  }

  Status Rename(const DiskRef& from, const DiskRef& to) override {
    RETURN_IF_ERROR(ValidateRef(from));
    RETURN_IF_ERROR(ValidateRef(to));
    const std::string a = RbdDiskName(from), b = RbdDiskName(to);
    RETURN_IF_ERROR(CheckNotInUse(from, a));
    int r = rbd_rename(conn_->io, a.c_str(), b.c_str());
    if (r == -EEXIST) return Status::AlreadyExists("disk " + to.ToString() + " already exists");
    if (r < 0) return NotFoundAsDisk(Err(r, "rbd: renaming " + Where(a) + " to " + b), from);
    return Status::OK();
  }

  // Without opening the image (docs/rbd.md, "Listing and lookup"): a disk
  // open here answers from its open handle; any other from its header and
  // object map, read directly: the image id (rbd_id.<name>), then header and
  // object map together, then, the first time in kParentCacheTime, the
  // parent's name and snapshot. An image the direct reads do not
  // understand is opened instead.
  Result<DiskInfo> Info(const DiskRef& ref) override {
    RETURN_IF_ERROR(ValidateRef(ref));
    const std::string name = RbdDiskName(ref);
    if (auto open = OpenDiskInfo(ref, name)) return std::move(*open);
    char buf[256];
    int n = rados_read(conn_->io, ("rbd_id." + name).c_str(), buf, sizeof buf, 0);
    if (n == -ENOENT) return Status::NotFound("disk " + ref.ToString() + " not found");
    if (n < 0) return Err(n, "rados: reading rbd_id." + name);
    std::string id;
    if (!Decoder{std::string_view(buf, size_t(n))}.String(&id)) return OpenedInfo(ref, name);
    std::vector<Wanted> want{{ref, name, id}};
    return std::move(HeaderInfos(want, {})[0]);
  }

  // One listing of the pool (rbd_list2 gives names and ids), then the
  // headers and object maps of all disks in batches of asynchronous reads.
  std::vector<Result<DiskInfo>> InfoMany(const std::vector<DiskRef>& refs) override {
    std::vector<Result<DiskInfo>> out;
    auto specs = ListImageSpecs(*conn_);
    if (!specs.ok()) {
      out.assign(refs.size(), specs.status());
      return out;
    }
    std::unordered_map<std::string, std::string> id_of, name_of;
    for (auto& [name, id] : *specs) {
      name_of[id] = name;
      id_of[name] = std::move(id);
    }
    std::vector<Wanted> want;
    std::vector<size_t> where;
    out.reserve(refs.size());
    for (size_t i = 0; i < refs.size(); ++i) {
      const DiskRef& ref = refs[i];
      out.push_back(Status::NotFound("disk " + ref.ToString() + " not found"));
      if (Status s = ValidateRef(ref); !s.ok()) {
        out.back() = s;
        continue;
      }
      const std::string name = RbdDiskName(ref);
      if (auto open = OpenDiskInfo(ref, name)) {
        out.back() = std::move(*open);
        continue;
      }
      auto it = id_of.find(name);
      if (it == id_of.end()) continue;
      want.push_back({ref, name, it->second});
      where.push_back(i);
    }
    auto got = HeaderInfos(want, name_of);
    for (size_t j = 0; j < got.size(); ++j) out[where[j]] = std::move(got[j]);
    return out;
  }

  Status Resize(const DiskRef& ref, uint64_t new_size, bool allow_shrink) override {
    RETURN_IF_ERROR(ValidateRef(ref));
    const std::string name = RbdDiskName(ref);
    RETURN_IF_ERROR(CheckNotInUse(ref, name));
    ASSIGN_OR_RETURN(auto disk, Open(ref, OpenMode::kReadWrite));
    return disk->Resize(new_size, allow_shrink);
  }

  Status SetAttrs(const DiskRef& ref, const DiskAttrs& attrs) override {
    RETURN_IF_ERROR(ValidateRef(ref));
    const std::string name = RbdDiskName(ref);
    auto img = OpenImage(*conn_, name, false);
    if (!img.ok()) return NotFoundAsDisk(img.status(), ref);
    Status st = WriteAttrs(img->get(), name, attrs);
    // This mount's open handles read them again (their watch may not hear
    // of a metadata change).
    MutexLock lock(open_disks_->mu);
    auto [b, e] = open_disks_->by_name.equal_range(name);
    for (auto it = b; it != e; ++it) it->second->InfoChanged();
    return st;
  }

  Status CreateInstance(const std::string& instance) override {
    RETURN_IF_ERROR(ValidateInstanceName(instance));
    ASSIGN_OR_RETURN(auto instances, ListInstances());
    if (std::find(instances.begin(), instances.end(), instance) != instances.end()) {
      return Status::AlreadyExists("instance " + instance + " already exists");
    }
    return AddInstanceMarker(instance);
  }

  Status RemoveInstance(const std::string& instance) override {
    RETURN_IF_ERROR(ValidateInstanceName(instance));
    auto disks = List(instance);
    if (!disks.ok()) return disks.status();
    if (!disks->empty()) return Status::NotEmpty("instance " + instance + " still has disks");
    ASSIGN_OR_RETURN(auto markers, ReadInstanceMarkers());
    if (!markers.contains(instance)) return Status::NotFound("instance " + instance + " not found");
    rados_write_op_t op = rados_create_write_op();
    const char* keys[] = {instance.c_str()};
    rados_write_op_omap_rm_keys(op, keys, 1);
    int r = rados_write_op_operate(op, conn_->io, kInstancesObject, nullptr, 0);
    rados_release_write_op(op);
    if (r < 0) return Err(r, "rados: removing instance " + instance);
    return Status::OK();
  }

  Result<std::vector<std::string>> ListInstances() override {
    ASSIGN_OR_RETURN(auto set, ReadInstanceMarkers());
    ASSIGN_OR_RETURN(auto disks, List(""));
    for (const auto& d : disks) set.insert(d.instance);
    return std::vector<std::string>(set.begin(), set.end());
  }

  Result<std::vector<DiskRef>> List(const std::string& instance) override {
    if (!instance.empty()) RETURN_IF_ERROR(ValidateInstanceName(instance));
    // One instance: only its names, not the pool's (instance names have no
    // "_", so "<instance>_" begins its disks' names and no other's).
    ASSIGN_OR_RETURN(auto names, instance.empty() ? ListImageNames(*conn_)
                                                  : ImageNamesWithPrefix(instance + "_"));
    std::vector<DiskRef> out;
    for (const auto& n : names) {
      auto ref = ParseDiskName(n);
      if (ref && (instance.empty() || ref->instance == instance)) out.push_back(std::move(*ref));
    }
    if (!instance.empty() && out.empty()) {
      ASSIGN_OR_RETURN(auto markers, ReadInstanceMarkers());
      if (!markers.contains(instance)) {
        return Status::NotFound("instance " + instance + " not found");
      }
    }
    std::sort(out.begin(), out.end(), [](const DiskRef& a, const DiskRef& b) {
      return std::tie(a.instance, a.disk) < std::tie(b.instance, b.disk);
    });
    return out;
  }

  Result<SpaceInfo> Space() override {
    rados_cluster_stat_t cs{};
    if (int r = rados_cluster_stat(conn_->cluster, &cs); r < 0)
      return Err(r, "rados: cluster stat");
    rados_pool_stat_t ps{};
    if (int r = rados_ioctx_pool_stat(conn_->io, &ps); r < 0) {
      return Err(r, "rados: stat of pool " + conn_->pool);
    }
    SpaceInfo s;
    s.capacity_bytes = cs.kb * 1024;
    s.available_bytes = cs.kb_avail * 1024;
    s.used_bytes = ps.num_bytes;
    return s;
  }

 private:
  // rbd_image_options_t for new images: format 2 and kFeatures.
  struct RbdOptions {
    rbd_image_options_t opts;
    RbdOptions() {
      rbd_image_options_create(&opts);
      (void)rbd_image_options_set_uint64(opts, RBD_IMAGE_OPTION_FORMAT, 2);
      (void)rbd_image_options_set_uint64(opts, RBD_IMAGE_OPTION_FEATURES, kFeatures);
    }
    ~RbdOptions() { rbd_image_options_destroy(opts); }
  };

  std::string Where(const std::string& name) const { return conn_->where + "/" + name; }

  // A disk to answer Info for from its header: reference, RBD name, image id.
  struct Wanted {
    DiskRef ref;
    std::string name;
    std::string id;
  };

  // Info of a disk this backend has open (a writable librbd handle), or
  // nullopt.
  std::optional<Result<DiskInfo>> OpenDiskInfo(const DiskRef& ref, const std::string& name) {
    MutexLock lock(open_disks_->mu);
    auto it = open_disks_->by_name.find(name);
    if (it == open_disks_->by_name.end()) return std::nullopt;
    DiskInfo info;
    info.ref = ref;
    info.location = "rbd:" + Where(name);
    Status s = it->second->FillInfo(&info);
    if (!s.ok()) return Result<DiskInfo>(s);
    return Result<DiskInfo>(std::move(info));
  }

  // Info of each disk of `want` from its header and object map, read in
  // batches; `name_of` maps image ids of the pool to names (a listing's),
  // for parents, which are otherwise looked up. A disk whose header is gone
  // is NotFound; one whose header the direct reads do not understand, or
  // whose parent is not simply there (removed, in the trash, a snapshot
  // gone), is opened with librbd (OpenedInfo), which says what is wrong.
  std::vector<Result<DiskInfo>> HeaderInfos(
      const std::vector<Wanted>& want,
      const std::unordered_map<std::string, std::string>& name_of) {
    const int64_t pool = rados_ioctx_get_id(conn_->io);
    ReadBatch batch(conn_->io);
    for (const Wanted& w : want) {
      batch.AddOmap("rbd_header." + w.id, HeaderKeys());
      batch.AddRead("rbd_object_map." + w.id, kObjectMapFirstRead);
    }
    batch.Run();
    std::vector<Result<DiskInfo>> out;
    std::vector<std::optional<Header>> headers(want.size());
    std::vector<bool> slow(want.size(), false);
    for (size_t i = 0; i < want.size(); ++i) {
      const Wanted& w = want[i];
      out.push_back(Status::NotFound("disk " + w.ref.ToString() + " not found"));
      auto& hq = batch[2 * i];
      if (hq.r == -ENOENT || (hq.r >= 0 && hq.values.empty())) continue;  // removed meanwhile
      if (hq.r < 0) {
        out.back() = Err(hq.r, "rados: reading the header of " + Where(w.name));
        continue;
      }
      headers[i] = DecodeHeader(hq.values, pool, conn_->ns);
      if (!headers[i]) {
        slow[i] = true;
        continue;
      }
      const Header& h = *headers[i];
      auto& mq = batch[2 * i + 1];
      std::optional<uint64_t> owned;
      if (h.size == 0) {
        owned = 0;
      } else if (mq.r >= 0) {
        size_t need = 0;
        owned = OwnedFromObjectMap(mq.data, h.size, h.object_size, &need);
        if (!owned && need > mq.data.size() && mq.data.size() == kObjectMapFirstRead) {
          std::string whole(need, '\0');
          int r = rados_read(conn_->io, mq.oid.c_str(), whole.data(), whole.size(), 0);
          if (r >= 0) {
            whole.resize(size_t(r));
            owned = OwnedFromObjectMap(whole, h.size, h.object_size, &need);
          }
        }
      }
      if (!owned) {
        slow[i] = true;
        continue;
      }
      DiskInfo info;
      info.ref = w.ref;
      info.location = "rbd:" + Where(w.name);
      info.size = h.size;
      info.owned_bytes = *owned;
      info.attrs = h.attrs;
      info.mtime_ns = h.mtime_ns;
      out.back() = std::move(info);
    }
    // Parents: their names (imgfs.base.<image id>) and that the snapshot
    // is there, once for each.
    std::map<std::pair<std::string, uint64_t>, std::optional<ImageId>> parents;
    for (size_t i = 0; i < want.size(); ++i) {
      if (out[i].ok() && headers[i]->parent) {
        parents.emplace(std::make_pair(headers[i]->parent->image_id, headers[i]->parent->snap),
                        std::nullopt);
      }
    }
    std::set<std::pair<std::string, uint64_t>> bad = ResolveParents(&parents, name_of);
    for (size_t i = 0; i < want.size(); ++i) {
      if (out[i].ok() && headers[i]->parent) {
        auto key = std::make_pair(headers[i]->parent->image_id, headers[i]->parent->snap);
        if (bad.contains(key)) {
          slow[i] = true;
        } else {
          out[i]->parent = parents[key];
        }
      }
      if (slow[i]) out[i] = OpenedInfo(want[i].ref, want[i].name);
    }
    return out;
  }

  // Fills in the ImageId of each parent (image id, snapshot id) of
  // `parents` whose name is imgfs.base.<image id>; returns those that are
  // not simply there (no name in the pool's directory, no such snapshot)
  // or could not be read. Answers are kept for kParentCacheTime.
  std::set<std::pair<std::string, uint64_t>> ResolveParents(
      std::map<std::pair<std::string, uint64_t>, std::optional<ImageId>>* parents,
      const std::unordered_map<std::string, std::string>& name_of) {
    std::set<std::pair<std::string, uint64_t>> bad;
    const auto now = std::chrono::steady_clock::now();
    struct Ask {
      std::pair<std::string, uint64_t> key;
      std::optional<size_t> name_read;
      size_t snap_read;
      std::string name;
    };
    std::vector<Ask> asks;
    ReadBatch batch(conn_->io);
    {
      MutexLock lock(parents_mu_);
      for (auto& [key, id] : *parents) {
        auto it = parent_cache_.find(key);
        if (it != parent_cache_.end() && now - it->second.at < kParentCacheTime) {
          id = it->second.id;
          continue;
        }
        Ask a;
        a.key = key;
        if (auto n = name_of.find(key.first); n != name_of.end()) {
          a.name = n->second;
        } else {
          a.name_read = batch.AddOmap("rbd_directory", {"id_" + key.first});
        }
        char snap_key[40];
        std::snprintf(snap_key, sizeof snap_key, "snapshot_%016llx",
                      static_cast<unsigned long long>(key.second));
        a.snap_read = batch.AddOmap("rbd_header." + key.first, {snap_key});
        asks.push_back(std::move(a));
      }
    }
    if (asks.empty()) return bad;
    batch.Run();
    MutexLock lock(parents_mu_);
    for (Ask& a : asks) {
      if (a.name_read) {
        auto& q = batch[*a.name_read];
        auto v = q.values.find("id_" + a.key.first);
        if (q.r < 0 || v == q.values.end() || !Decoder{v->second}.String(&a.name)) {
          bad.insert(a.key);
          continue;
        }
      }
      auto& s = batch[a.snap_read];
      if (s.r < 0 || s.values.empty()) {
        bad.insert(a.key);
        continue;
      }
      std::optional<ImageId> id;
      if (a.name.starts_with(kBasePrefix)) {
        auto parsed = ImageId::FromHex(std::string_view(a.name).substr(std::strlen(kBasePrefix)));
        if (parsed.ok()) id = *parsed;
      }
      (*parents)[a.key] = id;
      parent_cache_[a.key] = {id, now};
    }
    return bad;
  }

  // Info by opening the image with librbd (images the direct reads do not
  // understand; and what is wrong with one that cannot be opened).
  Result<DiskInfo> OpenedInfo(const DiskRef& ref, const std::string& name) {
    auto img = OpenImage(*conn_, name, true);
    if (!img.ok()) return NotOpened(img.status(), ref, name);
    DiskInfo info;
    info.ref = ref;
    info.location = "rbd:" + Where(name);
    if (int r = rbd_get_size(img->get(), &info.size); r < 0) {
      return Err(r, "rbd: size of " + Where(name));
    }
    rbd_linked_image_spec_t parent;
    rbd_snap_spec_t snap;
    int r = rbd_get_parent(img->get(), &parent, &snap);
    if (r == 0) {
      std::string_view pname = parent.image_name ? parent.image_name : "";
      if (pname.starts_with(kBasePrefix)) {
        auto id = ImageId::FromHex(pname.substr(std::strlen(kBasePrefix)));
        if (id.ok()) info.parent = *id;
      }
      rbd_linked_image_spec_cleanup(&parent);
      rbd_snap_spec_cleanup(&snap);
    } else if (r != -ENOENT) {
      return Err(r, "rbd: parent of " + Where(name));
    }
    uint64_t owned = 0;
    // (librbd asserts on an empty range.)
    r = info.size == 0 ? 0
                       : rbd_diff_iterate2(
                             img->get(), nullptr, 0, info.size, 0, 1,
                             [](uint64_t, size_t len, int exists, void* arg) {
                               if (exists) *static_cast<uint64_t*>(arg) += len;
                               return 0;
                             },
                             &owned);
    if (r < 0) return Err(r, "rbd: usage of " + Where(name));
    info.owned_bytes = owned;
    timespec ts{};
    if (rbd_get_modify_timestamp(img->get(), &ts) == 0) {
      info.mtime_ns = int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
    }
    ASSIGN_OR_RETURN(info.attrs, ReadAttrs(img->get()));
    return info;
  }

  static Status InUse(const DiskRef& ref) {
    return Status::Busy("disk " + ref.ToString() + " is in use (open for writing)");
  }

  static Status NotFoundAsDisk(const Status& s, const DiskRef& ref) {
    if (s.IsNotFound()) return Status::NotFound("disk " + ref.ToString() + " not found");
    return s;
  }

  // NotFoundAsDisk, except for a disk that exists but cannot be opened
  // because its parent is gone (MissingParent): NotFound saying so.
  Status NotOpened(const Status& s, const DiskRef& ref, const std::string& name) {
    if (!s.IsNotFound()) return s;
    auto why = MissingParent(name);
    if (!why.ok()) return NotFoundAsDisk(s, ref);
    return Status::NotFound("disk " + ref.ToString() + " cannot be opened: " + *why +
                            " (RBD image " + Where(name) + ")");
  }

  // The pool's images whose names begin with `prefix`, read from the keys
  // name_<name> of rbd_directory's omap (what rbd_list2 reads whole).
  Result<std::vector<std::string>> ImageNamesWithPrefix(const std::string& prefix) {
    std::vector<std::string> out;
    RETURN_IF_ERROR(ForEachOmapKey(conn_->io, "rbd_directory", "name_" + prefix,
                                   [&](const std::string& key) { out.push_back(key.substr(5)); }));
    return out;
  }

  // Busy when some client has the image open for writing (it watches the
  // header); read-only opens do not watch.
  Status CheckNotInUse(const DiskRef& ref, const std::string& name) {
    auto img = OpenImage(*conn_, name, true);
    if (!img.ok()) return NotOpened(img.status(), ref, name);
    ASSIGN_OR_RETURN(size_t watchers, CountWatchers(img->get()));
    if (watchers > 0) return InUse(ref);
    return Status::OK();
  }

  Status FinishCreate(const DiskRef& ref, const std::string& name, uint64_t size,
                      const DiskAttrs& attrs) {
    auto img = OpenImage(*conn_, name, false);
    if (!img.ok()) return NotFoundAsDisk(img.status(), ref);
    uint64_t cur = 0;
    if (int r = rbd_get_size(img->get(), &cur); r < 0) return Err(r, "rbd: size of " + Where(name));
    if (cur != size) {
      if (int r = rbd_resize(img->get(), size); r < 0) {
        return Err(r, "rbd: resizing " + Where(name));
      }
    }
    return WriteAttrs(img->get(), name, attrs);
  }

  Status WriteAttrs(rbd_image_t img, const std::string& name, const DiskAttrs& a) {
    const std::pair<const char*, uint32_t> kv[] = {
        {"imgfs.mode", a.mode & 07777}, {"imgfs.uid", a.uid}, {"imgfs.gid", a.gid}};
    for (const auto& [k, v] : kv) {
      int r = rbd_metadata_set(img, k, std::to_string(v).c_str());
      if (r < 0) return Err(r, "rbd: setting " + std::string(k) + " of " + Where(name));
    }
    return Status::OK();
  }

  static Result<DiskAttrs> ReadAttrs(rbd_image_t img) {
    return ParseAttrs([img](const char* key) { return GetMetadata(img, key); });
  }

  Result<std::set<std::string>> ReadInstanceMarkers() {
    std::set<std::string> out;
    RETURN_IF_ERROR(ForEachOmapKey(conn_->io, kInstancesObject, "",
                                   [&](const std::string& key) { out.insert(key); }));
    return out;
  }

  Status AddInstanceMarker(const std::string& instance) {
    rados_write_op_t op = rados_create_write_op();
    const char* keys[] = {instance.c_str()};
    const char* vals[] = {""};
    size_t lens[] = {0};
    rados_write_op_omap_set(op, keys, vals, lens, 1);
    int r = rados_write_op_operate(op, conn_->io, kInstancesObject, nullptr, 0);
    rados_release_write_op(op);
    if (r < 0) return Err(r, "rados: recording instance " + instance);
    return Status::OK();
  }

  // OK(true) when `name` is a complete publication: snapshot "base" protected
  // and the published mark set. OK(false) when there is no such image.
  Result<bool> IsPublished(const std::string& name) {
    rbd_image_t raw = nullptr;
    int r = rbd_open_read_only(conn_->io, name.c_str(), &raw, kSnap);
    if (r == -ENOENT) return false;
    if (r < 0) return Err(r, "rbd: opening " + Where(name) + "@" + kSnap);
    Image img(raw);
    auto mark = GetMetadata(img.get(), kPublishedKey);
    if (!mark.ok() && !mark.status().IsNotFound()) return mark.status();
    int prot = 0;
    if (int r2 = rbd_snap_is_protected(img.get(), kSnap, &prot); r2 < 0) {
      return Err(r2, "rbd: checking " + Where(name) + "@" + kSnap);
    }
    if (!mark.ok() || *mark != "1" || !prot) {
      return Status::Corruption("rbd: " + Where(name) +
                                " exists but is not a complete imgfs publication (" +
                                (!mark.ok() ? mark.status().ToString() : "mark '" + *mark + "'") +
                                (prot ? "" : ", snapshot not protected") + "); remove it");
    }
    return true;
  }

  // Takes the publication lock of `id` (exclusive for publishers and
  // unpublishers, shared for cloners), waiting while others hold it unless
  // !wait. OK(false) when !wait and it is held elsewhere.
  Result<bool> LockPublication(const ImageId& id, const std::string& cookie, bool shared,
                               bool wait) {
    const std::string oid = PublishLockObject(id);
    for (;;) {
      timeval dur{kPublishLockSeconds, 0};
      int r = shared ? rados_lock_shared(conn_->io, oid.c_str(), "publish", cookie.c_str(), "clone",
                                         "imgfs clone", &dur, 0)
                     : rados_lock_exclusive(conn_->io, oid.c_str(), "publish", cookie.c_str(),
                                            "imgfs publication", &dur, 0);
      if (r == 0) return true;
      if (r != -EBUSY && r != -EEXIST) return Err(r, "rados: locking " + oid);
      if (!wait) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
  }

  void UnlockPublication(const ImageId& id, const std::string& cookie) {
    const std::string oid = PublishLockObject(id);
    (void)rados_unlock(conn_->io, oid.c_str(), "publish", cookie.c_str());
  }

  static std::string PublishLockObject(const ImageId& id) { return "imgfs.publish." + id.Hex(); }

  // Clones imgfs.base.<id>@base to `name` under the publication lock held
  // shared, so that no unpublisher removes the base meanwhile. OK(false)
  // when the base is not (any more) published.
  Result<bool> CloneLocked(const ImageId& id, const DiskRef& ref, const std::string& name) {
    const std::string base = RbdBaseName(id);
    const std::string cookie = RandomHex();
    ASSIGN_OR_RETURN(bool locked, LockPublication(id, cookie, /*shared=*/true, /*wait=*/true));
    (void)locked;
    Status s;
    bool cloned = false;
    auto published = IsPublished(base);
    if (!published.ok()) {
      s = published.status();
    } else if (*published) {
      RbdOptions o;
      int r = rbd_clone3(conn_->io, base.c_str(), kSnap, conn_->io, name.c_str(), o.opts);
      if (r == -EEXIST) {
        s = Status::AlreadyExists("disk " + ref.ToString() + " already exists");
      } else if (r < 0) {
        s = Err(r, "rbd: cloning " + Where(base) + "@" + kSnap + " to " + name);
      } else {
        cloned = true;
      }
    }
    UnlockPublication(id, cookie);
    RETURN_IF_ERROR(s);
    return cloned;
  }

 public:
  // Each publication costs a few image opens (state, usage, clones), all
  // round trips: they run on up to kListPublishedThreads threads at once,
  // so the listing takes a fraction of the sum of its round trips.
  Result<std::vector<PublishedImage>> ListPublished() override {
    ASSIGN_OR_RETURN(auto names, ListImageNames(*conn_));
    std::vector<std::string> ours;
    for (auto& n : names) {
      if (n.starts_with(kBasePrefix) || n.starts_with(kTmpPrefix)) ours.push_back(std::move(n));
    }
    // One slot a name: nullopt when it is skipped (not an id, removed
    // meanwhile), else its publication or the error that stops the listing.
    std::vector<std::optional<Result<PublishedImage>>> got(ours.size());
    std::atomic<size_t> next{0};
    auto work = [&] {
      for (size_t i = next++; i < ours.size(); i = next++) got[i] = PublishedOf(ours[i]);
    };
    constexpr size_t kListPublishedThreads = 8;
    std::vector<std::thread> threads;
    for (size_t t = 1; t < std::min(kListPublishedThreads, ours.size()); ++t) {
      threads.emplace_back(work);
    }
    work();
    for (auto& t : threads) t.join();
    std::vector<PublishedImage> out;
    for (auto& g : got) {
      if (!g) continue;
      if (!g->ok()) return g->status();
      out.push_back(std::move(**g));
    }
    return out;
  }

  // One publication of ListPublished; nullopt when `n` is to be skipped.
  std::optional<Result<PublishedImage>> PublishedOf(const std::string& n) {
    PublishedImage p;
    if (n.starts_with(kBasePrefix)) {
      auto id = ImageId::FromHex(std::string_view(n).substr(std::strlen(kBasePrefix)));
      if (!id.ok()) return std::nullopt;
      p.image = *id;
      auto done = IsPublished(n);
      if (!done.ok() && !done.status().IsCorruption() && !done.status().IsNotFound()) {
        return done.status();
      }
      p.complete = done.ok() && *done;
    } else {
      auto id = ImageId::FromHex(std::string_view(n).substr(std::strlen(kTmpPrefix), 32));
      if (!id.ok()) return std::nullopt;
      p.image = *id;
      p.complete = false;
      p.in_progress = true;
    }
    p.location = "rbd:" + Where(n);
    auto used = UsedBytes(n);
    if (!used.ok()) {
      if (used.status().IsNotFound()) return std::nullopt;  // removed meanwhile
      return used.status();
    }
    p.used_bytes = *used;
    auto clones = Children(n);
    if (!clones.ok()) {
      if (clones.status().IsNotFound()) return std::nullopt;
      return clones.status();
    }
    p.clones = std::move(*clones);
    return p;
  }

  Result<std::string> CheckPublished(const ImageId& id) override {
    const std::string base = RbdBaseName(id);
    const std::string location = "rbd:" + Where(base) + "@" + kSnap;
    auto published = IsPublished(base);
    if (published.status().IsCorruption()) {
      // Says why; clones use it, so "remove it" is no advice here.
      std::string why = published.status().message();
      if (why.ends_with("; remove it")) why.resize(why.size() - std::strlen("; remove it"));
      return Status::Corruption(why);
    }
    RETURN_IF_ERROR(published.status());
    if (!*published) return Status::NotFound("published base " + location + " is missing");
    return location;
  }

  // A disk the pool lists but librbd cannot open (NotFound) lost its parent:
  // a published base removed by hand behind librbd's back (its clone
  // records edited). Says which parent, read from the disk's header.
  Status Check(const DiskRef& ref, std::vector<std::string>* problems) override {
    RETURN_IF_ERROR(ValidateRef(ref));
    const std::string name = RbdDiskName(ref);
    auto img = OpenImage(*conn_, name, true);
    if (img.ok() || !img.status().IsNotFound()) return Status::OK();  // fsck's Info said it
    auto why = MissingParent(name);
    if (why.status().IsNotFound()) return Status::OK();  // no such disk (removed meanwhile)
    RETURN_IF_ERROR(why.status());
    problems->push_back("disk " + ref.ToString() + ": RBD image " + Where(name) +
                        " cannot be opened: " + *why);
    return Status::OK();
  }

  Status Unpublish(const ImageId& id) override {
    const std::string cookie = RandomHex();
    ASSIGN_OR_RETURN(bool locked, LockPublication(id, cookie, /*shared=*/false, /*wait=*/true));
    (void)locked;
    Status s = UnpublishLocked(id);
    UnlockPublication(id, cookie);
    return s;
  }

  Result<std::vector<std::string>> RemoveAbandonedPublications(bool dry_run) override {
    ASSIGN_OR_RETURN(auto names, ListImageNames(*conn_));
    std::vector<std::string> removed;
    for (const auto& n : names) {
      if (!n.starts_with(kTmpPrefix)) continue;
      auto id = ImageId::FromHex(std::string_view(n).substr(std::strlen(kTmpPrefix), 32));
      if (!id.ok()) continue;
      // A live publisher holds the lock while it writes its temporary image.
      const std::string cookie = RandomHex();
      ASSIGN_OR_RETURN(bool locked, LockPublication(*id, cookie, false, /*wait=*/false));
      if (!locked) continue;
      Status s = dry_run ? Status::OK() : RemoveFully(n);
      UnlockPublication(*id, cookie);
      RETURN_IF_ERROR(s);
      removed.push_back("rbd:" + Where(n));
    }
    return removed;
  }

 private:
  // The clones of name@base, as "pool[/ns]/image" (trashed ones marked);
  // empty when the image has no snapshot "base". NotFound when no image.
  Result<std::vector<std::string>> Children(const std::string& name) {
    auto img = OpenImage(*conn_, name, true);
    if (!img.ok()) return img.status();
    bool exists = false;
    if (int r = rbd_snap_exists(img->get(), kSnap, &exists); r < 0) {
      return Err(r, "rbd: snapshots of " + Where(name));
    }
    std::vector<std::string> out;
    if (!exists) return out;
    if (int r = rbd_snap_set(img->get(), kSnap); r < 0) {
      return Err(r, "rbd: opening " + Where(name) + "@" + kSnap);
    }
    std::vector<rbd_linked_image_spec_t> specs(16);
    for (;;) {
      size_t n = specs.size();
      int r = rbd_list_children3(img->get(), specs.data(), &n);
      if (r == -ERANGE) {
        specs.resize(n + 16);
        continue;
      }
      if (r < 0) return Err(r, "rbd: listing clones of " + Where(name) + "@" + kSnap);
      for (size_t i = 0; i < n; i++) {
        std::string c = specs[i].pool_name ? specs[i].pool_name : "?";
        if (specs[i].pool_namespace && *specs[i].pool_namespace) {
          c += "/" + std::string(specs[i].pool_namespace);
        }
        c += "/" + std::string(specs[i].image_name ? specs[i].image_name : "?");
        if (specs[i].trash) c += " (in the trash)";
        out.push_back(std::move(c));
      }
      rbd_linked_image_spec_list_cleanup(specs.data(), n);
      return out;
    }
  }

  // Why the RBD image `name`, which exists, cannot be opened: its parent,
  // from the "parent" key of its header (cls_rbd's encoding: version, compat,
  // length, pool id, namespace, image id, snapshot id, overlap). NotFound
  // when `name` is not an image or has no parent.
  Result<std::string> MissingParent(const std::string& name) {
    char buf[256];
    int n = rados_read(conn_->io, ("rbd_id." + name).c_str(), buf, sizeof buf, 0);
    if (n == -ENOENT) return Status::NotFound("no image " + Where(name));
    if (n < 0) return Err(n, "rados: reading rbd_id." + name);
    std::string image_id;
    if (!Decoder{std::string_view(buf, size_t(n))}.String(&image_id)) {
      return Status::Corruption("rbd: rbd_id." + name + " does not hold an image id");
    }
    auto spec = OmapValue(conn_->io, "rbd_header." + image_id, "parent");
    if (spec.status().IsNotFound()) {
      return Status::NotFound("rbd: " + Where(name) + " has no parent");  // not that, then
    }
    RETURN_IF_ERROR(spec.status());
    Decoder d{*spec};
    uint8_t version = 0, compat = 0;
    uint32_t length = 0;
    int64_t pool = 0;
    std::string ns, parent_id;
    uint64_t snap = 0;
    if (!d.Int(&version) || !d.Int(&compat) || !d.Int(&length) || !d.Int(&pool) || !d.String(&ns) ||
        !d.String(&parent_id) || !d.Int(&snap)) {
      return Status::Corruption("rbd: the parent of " + Where(name) + " cannot be decoded");
    }
    if (pool != rados_ioctx_get_id(conn_->io) || ns != conn_->ns) {
      return "its parent (pool id " + std::to_string(pool) +
             (ns.empty() ? "" : ", namespace " + ns) + ", RBD image id " + parent_id +
             ") is missing";
    }
    auto parent = OmapValue(conn_->io, "rbd_directory", "id_" + parent_id);
    if (parent.status().IsNotFound()) {
      return "its parent image (RBD image id " + parent_id + ") was removed from the pool";
    }
    RETURN_IF_ERROR(parent.status());
    std::string parent_name;
    if (!Decoder{*parent}.String(&parent_name)) parent_name = "id " + parent_id;
    if (parent_name.starts_with(kBasePrefix)) {
      return "its parent, the published base rbd:" + Where(parent_name) + "@" + kSnap +
             ", was removed (snapshot id " + std::to_string(snap) + " is gone)";
    }
    return "its parent snapshot " + Where(parent_name) + "@(id " + std::to_string(snap) +
           ") is missing";
  }

  // Allocated bytes of an image, in whole objects (fast with fast-diff).
  Result<uint64_t> UsedBytes(const std::string& name) {
    auto img = OpenImage(*conn_, name, true);
    if (!img.ok()) return img.status();
    uint64_t size = 0;
    if (int r = rbd_get_size(img->get(), &size); r < 0)
      return Err(r, "rbd: size of " + Where(name));
    uint64_t used = 0;
    if (size == 0) return used;
    int r = rbd_diff_iterate2(
        img->get(), nullptr, 0, size, 0, 1,
        [](uint64_t, size_t len, int exists, void* arg) {
          if (exists) *static_cast<uint64_t*>(arg) += len;
          return 0;
        },
        &used);
    if (r < 0) return Err(r, "rbd: usage of " + Where(name));
    return used;
  }

  Status UnpublishLocked(const ImageId& id) {
    (void)CleanAbandoned(id);
    const std::string name = RbdBaseName(id);
    ASSIGN_OR_RETURN(auto clones, Children(name));
    if (!clones.empty()) {
      std::string list;
      for (size_t i = 0; i < clones.size() && i < 10; ++i) list += (i ? ", " : "") + clones[i];
      if (clones.size() > 10) list += ", ... (" + std::to_string(clones.size()) + " clones)";
      return Status::Busy("published image " + Where(name) + " is in use by clones: " + list);
    }
    Status s = RemoveFully(name);
    if (s.IsBusy()) {
      // A clone made behind our back (librbd refuses to unprotect).
      return Status::Busy("published image " + Where(name) + " is in use: " + s.message());
    }
    if (s.ok()) spdlog::info("rbd: unpublished image {} ({})", id.Hex(), Where(name));
    return s;
  }

  // Publishers of one image take turns under the RADOS lock "publish" on the
  // object imgfs.publish.<id>, held for kPublishLockSeconds and renewed while
  // writing, so a publisher that dies frees it when it runs out. Under the
  // lock: if the base is still missing, write a temporary image, then rename
  // it to the base name. The others wait for the lock and then find the base.
  Status Publish(ImageReader& reader) {
    const std::string name = RbdBaseName(reader.id());
    const std::string oid = "imgfs.publish." + reader.id().Hex();
    const std::string cookie = RandomHex();
    for (;;) {
      ASSIGN_OR_RETURN(bool done, IsPublished(name));
      if (done) return Status::OK();
      timeval dur{kPublishLockSeconds, 0};
      int r = rados_lock_exclusive(conn_->io, oid.c_str(), "publish", cookie.c_str(),
                                   "imgfs publication", &dur, 0);
      if (r == -EBUSY || r == -EEXIST) {
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
        continue;
      }
      if (r < 0) return Err(r, "rados: locking " + oid);
      Status s = PublishLocked(reader, name, oid, cookie);
      (void)rados_unlock(conn_->io, oid.c_str(), "publish", cookie.c_str());
      if (!s.IsBusy()) return s.ok() ? s : s.WithContext("publishing image " + reader.id().Hex());
      // Busy: the lock ran out under us; start again.
    }
  }

  Status PublishLocked(ImageReader& reader, const std::string& name, const std::string& oid,
                       const std::string& cookie) {
    ASSIGN_OR_RETURN(bool done, IsPublished(name));
    if (done) return Status::OK();
    (void)CleanAbandoned(reader.id());
    auto renew = [&]() -> Status {
      timeval dur{kPublishLockSeconds, 0};
      int r = rados_lock_exclusive(conn_->io, oid.c_str(), "publish", cookie.c_str(),
                                   "imgfs publication", &dur, LIBRADOS_LOCK_FLAG_MUST_RENEW);
      if (r < 0) return Status::Busy("rados: lost the publication lock " + oid);
      return Status::OK();
    };
    std::string tmp = TempName(reader.id());
    Status s = WriteTemp(reader, tmp, renew);
    if (s.ok()) s = renew();
    if (s.ok()) {
      int r = rbd_rename(conn_->io, tmp.c_str(), name.c_str());
      if (r == 0) {
        spdlog::debug("rbd: published image {} as {}", reader.id().Hex(), Where(name));
        return Status::OK();
      }
      s = Err(r, "rbd: renaming " + Where(tmp) + " to " + name);
    }
    if (Status rm = RemoveFully(tmp); !rm.ok()) {
      spdlog::warn("rbd: could not remove {}: {}", Where(tmp), rm.ToString());
    }
    return s;
  }

  static std::string RandomHex() {
    static thread_local std::mt19937_64 rng{std::random_device{}()};
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(rng()));
    return buf;
  }

  static std::string TempName(const ImageId& id) {
    return std::string(kTmpPrefix) + id.Hex() + "." + RandomHex();
  }

  // Creates `tmp` and writes the image into it (holes skipped), snapshots
  // and protects "base", and sets the published mark. Holds the exclusive
  // lock meanwhile so that cleaners leave it alone.
  Status WriteTemp(ImageReader& reader, const std::string& tmp,
                   const std::function<Status()>& renew) {
    RbdOptions o;
    int r = rbd_create4(conn_->io, tmp.c_str(), reader.size(), o.opts);
    if (r < 0) return Err(r, "rbd: creating " + Where(tmp));
    ASSIGN_OR_RETURN(Image img, OpenImage(*conn_, tmp, false));
    if (r = rbd_lock_acquire(img.get(), RBD_LOCK_MODE_EXCLUSIVE); r < 0) {
      return Err(r, "rbd: locking " + Where(tmp));
    }
    RETURN_IF_ERROR(WriteData(reader, img.get(), tmp, renew));
    if (r = rbd_flush(img.get()); r < 0) return Err(r, "rbd: flushing " + Where(tmp));
    // Nobody else has the image open: no need to quiesce (which costs ~1 s).
    if (r = rbd_snap_create2(img.get(), kSnap, RBD_SNAP_CREATE_SKIP_QUIESCE, &NoProgress, nullptr);
        r < 0) {
      return Err(r, "rbd: snapshotting " + Where(tmp));
    }
    if (r = rbd_snap_protect(img.get(), kSnap); r < 0) {
      return Err(r, "rbd: protecting " + Where(tmp) + "@" + kSnap);
    }
    if (r = rbd_metadata_set(img.get(), "imgfs.image_id", reader.id().Hex().c_str()); r < 0) {
      return Err(r, "rbd: setting metadata of " + Where(tmp));
    }
    if (r = rbd_metadata_set(img.get(), kPublishedKey, "1"); r < 0) {
      return Err(r, "rbd: setting metadata of " + Where(tmp));
    }
    (void)rbd_lock_release(img.get());
    return Status::OK();
  }

  // Streams the non-hole chunks with up to kPublishDepth aio writes in flight.
  Status WriteData(ImageReader& reader, rbd_image_t img, const std::string& tmp,
                   const std::function<Status()>& renew) {
    auto renewed = std::chrono::steady_clock::now();
    const Manifest& m = reader.manifest();
    const uint64_t cs = m.chunk_size;
    struct Pending {
      rbd_completion_t c;
      Bytes buf;
    };
    std::deque<Pending> inflight;
    Status status;
    auto reap = [&](bool all) {
      while (!inflight.empty() && (all || inflight.size() >= kPublishDepth)) {
        Pending& p = inflight.front();
        rbd_aio_wait_for_complete(p.c);
        ssize_t r = rbd_aio_get_return_value(p.c);
        rbd_aio_release(p.c);
        if (r < 0 && status.ok()) status = Err(static_cast<int>(r), "rbd: writing " + Where(tmp));
        inflight.pop_front();
      }
    };
    size_t i = 0;
    const size_t n = m.chunks.size();
    while (i < n && status.ok()) {
      if (m.chunks[i].IsHole()) {
        i++;
        continue;
      }
      uint64_t start = i * cs;
      uint64_t end = start;
      while (i < n && !m.chunks[i].IsHole() && end - start < kPublishRunBytes &&
             (end == start || end % kPublishRunBytes != 0)) {
        end = std::min<uint64_t>((i + 1) * cs, m.size);
        i++;
      }
      reap(false);
      if (!status.ok()) break;
      if (std::chrono::steady_clock::now() - renewed >
          std::chrono::seconds(kPublishLockSeconds / 3)) {
        status = renew();
        if (!status.ok()) break;
        renewed = std::chrono::steady_clock::now();
      }
      Pending p;
      p.buf.resize(end - start);
      if (Status s = reader.Read(start, p.buf); !s.ok()) {
        status = s.WithContext("publishing image " + reader.id().Hex());
        break;
      }
      int r = rbd_aio_create_completion(nullptr, &NoCallback, &p.c);
      if (r < 0) {
        status = Err(r, "rbd: aio completion");
        break;
      }
      r = rbd_aio_write2(img, start, p.buf.size(), reinterpret_cast<const char*>(p.buf.data()), p.c,
                         0);
      if (r < 0) {
        rbd_aio_release(p.c);
        status = Err(r, "rbd: writing " + Where(tmp));
        break;
      }
      inflight.push_back(std::move(p));
    }
    reap(true);
    return status;
  }

  // Temporary publications of `id` left by publishers that died. Called
  // with the publication lock held, so no live publisher is writing one.
  Status CleanAbandoned(const ImageId& id) {
    ASSIGN_OR_RETURN(auto names, ListImageNames(*conn_));
    const std::string prefix = std::string(kTmpPrefix) + id.Hex() + ".";
    for (const auto& n : names) {
      if (!n.starts_with(prefix)) continue;
      spdlog::info("rbd: removing abandoned publication {}", Where(n));
      if (Status rm = RemoveFully(n); !rm.ok()) {
        spdlog::warn("rbd: could not remove {}: {}", Where(n), rm.ToString());
      }
    }
    return Status::OK();
  }

  Status RemoveFully(const std::string& name) {
    {
      auto img = OpenImage(*conn_, name, false);
      if (!img.ok()) return img.status().IsNotFound() ? Status::OK() : img.status();
      bool exists = false;
      if (rbd_snap_exists(img->get(), kSnap, &exists) == 0 && exists) {
        int prot = 0;
        if (rbd_snap_is_protected(img->get(), kSnap, &prot) == 0 && prot) {
          if (int r = rbd_snap_unprotect(img->get(), kSnap); r < 0) {
            return Err(r, "rbd: unprotecting " + Where(name) + "@" + kSnap);
          }
        }
        if (int r = rbd_snap_remove(img->get(), kSnap); r < 0) {
          return Err(r, "rbd: removing " + Where(name) + "@" + kSnap);
        }
      }
    }
    // A watch may linger a moment after a close: retry a little while. (A
    // client that died keeps watching until its watch times out; then the
    // image is left for a later publication to remove.)
    int r = 0;
    for (int i = 0; i < 50; i++) {
      r = rbd_remove(conn_->io, name.c_str());
      if (r != -EBUSY) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    if (r < 0 && r != -ENOENT) return Err(r, "rbd: removing " + Where(name));
    return Status::OK();
  }

  std::shared_ptr<Connection> conn_;  // constant after construction
  ImageSource* images_;               // constant after construction
  const std::shared_ptr<OpenDisks> open_disks_;
  // Parents of disks read from their headers: (image id, snapshot id) to
  // the stored image of imgfs.base.<image id> (nullopt: another parent).
  struct ParentAnswer {
    std::optional<ImageId> id;
    std::chrono::steady_clock::time_point at;
  };
  Mutex parents_mu_;
  std::map<std::pair<std::string, uint64_t>, ParentAnswer> parent_cache_ GUARDED_BY(parents_mu_);
};

Result<std::shared_ptr<Connection>> Connect(std::string_view target, const CephOptions* ceph) {
  CephOptions opts = ceph ? *ceph : CephOptions{};
  auto c = std::make_shared<Connection>();
  size_t slash = target.find('/');
  c->pool = std::string(target.substr(0, slash));
  if (slash != std::string_view::npos) c->ns = std::string(target.substr(slash + 1));
  c->where = std::string(target);
  if (c->pool.empty() || (slash != std::string_view::npos && c->ns.empty()) ||
      c->ns.find('/') != std::string::npos) {
    return Status::InvalidArgument("disk backend 'rbd:" + std::string(target) +
                                   "': expected rbd:POOL or rbd:POOL/NAMESPACE");
  }
  std::string id = opts.client_id.empty() ? "admin" : opts.client_id;
  if (id.starts_with("client.")) id = id.substr(7);
  const std::string who = "client." + id;
  if (int r = rados_create(&c->cluster, id.c_str()); r < 0)
    return Err(r, "rados: creating a client");
  // Errors reach the user as one Status line; Ceph's own log stays off stderr.
  auto quiet = [&] {
    (void)rados_conf_set(c->cluster, "log_to_stderr", "false");
    (void)rados_conf_set(c->cluster, "err_to_stderr", "false");
  };
  quiet();
  int r =
      rados_conf_read_file(c->cluster, opts.conf_file.empty() ? nullptr : opts.conf_file.c_str());
  if (r < 0 && !(opts.conf_file.empty() && r == -ENOENT)) {
    return Err(r, "ceph: reading configuration " +
                      (opts.conf_file.empty() ? std::string("(default)") : opts.conf_file));
  }
  if (r = rados_conf_parse_env(c->cluster, nullptr); r < 0) return Err(r, "ceph: CEPH_ARGS");
  quiet();
  if (!opts.keyring.empty()) {
    if (r = rados_conf_set(c->cluster, "keyring", opts.keyring.c_str()); r < 0) {
      return Err(r, "ceph: setting keyring");
    }
  }
  const std::string t = std::to_string(opts.timeout_seconds > 0 ? opts.timeout_seconds : 20);
  for (const char* k : {"client_mount_timeout", "rados_mon_op_timeout", "rados_osd_op_timeout"}) {
    if (r = rados_conf_set(c->cluster, k, t.c_str()); r < 0)
      return Err(r, std::string("ceph: ") + k);
  }
  // Discard must make partial objects read back as zeros too.
  // A write is acknowledged once the cluster has it, never from librbd's
  // in-process cache: a server that dies must not take acknowledged writes
  // with it (docs/rbd.md, "A server replaced").
  (void)rados_conf_set(c->cluster, "rbd_cache", "false");
  (void)rados_conf_set(c->cluster, "rbd_skip_partial_discard", "false");
  (void)rados_conf_set(c->cluster, "rbd_discard_granularity_bytes", "4096");
  const std::string conf_desc =
      "(conf " + (opts.conf_file.empty() ? std::string("default") : opts.conf_file) + ", " + who +
      (opts.keyring.empty() ? std::string() : ", keyring " + opts.keyring) + ")";
  if (r = rados_connect(c->cluster); r < 0) {
    return Err(r, "ceph: connecting to the cluster " + conf_desc);
  }
  r = rados_ioctx_create(c->cluster, c->pool.c_str(), &c->io);
  if (r == -ENOENT) return Status::NotFound("ceph: pool '" + c->pool + "' does not exist");
  if (r < 0) return Err(r, "ceph: opening pool " + c->pool);
  if (!c->ns.empty()) {
    bool exists = false;
    if (r = rbd_namespace_exists(c->io, c->ns.c_str(), &exists); r < 0) {
      return Err(r, "rbd: checking namespace " + c->where);
    }
    if (!exists) return Status::NotFound("rbd: namespace '" + c->where + "' does not exist");
    rados_ioctx_set_namespace(c->io, c->ns.c_str());
  }
  // Any call that needs the OSDs: fails here, clearly, rather than on first use.
  std::vector<rbd_image_spec_t> specs(1);
  size_t n = 1;
  r = rbd_list2(c->io, specs.data(), &n);
  if (r >= 0) rbd_image_spec_list_cleanup(specs.data(), n);
  if (r < 0 && r != -ERANGE) return Err(r, "rbd: listing images in " + c->where + " " + conf_desc);
  return c;
}

}  // namespace

std::string RbdDiskName(const DiskRef& ref) { return ref.instance + "_" + ref.disk; }

std::string RbdBaseName(const ImageId& id) { return std::string(kBasePrefix) + id.Hex(); }

Status CheckRbdTarget(std::string_view target, const CephOptions* ceph) {
  ASSIGN_OR_RETURN(auto c, Connect(target, ceph));
  std::string apps(256, '\0');
  size_t len = apps.size();
  int r = rados_application_list(c->io, apps.data(), &len);
  if (r == -ERANGE) {
    apps.assign(len, '\0');
    r = rados_application_list(c->io, apps.data(), &len);
  }
  if (r < 0) return Err(r, "ceph: reading the applications of pool " + c->pool);
  bool rbd = false;
  for (size_t at = 0; at < len && apps[at];) {
    std::string name(apps.c_str() + at);
    rbd = rbd || name == "rbd";
    at += name.size() + 1;
  }
  if (!rbd) {
    return Status::InvalidArgument("ceph: pool '" + c->pool +
                                   "' is not an RBD pool (run 'rbd pool init " + c->pool + "')");
  }
  // The key may allow reading only: find out now, not on the first disk.
  const std::string probe = "imgfs.init-probe." + std::to_string(getpid());
  r = rados_write_full(c->io, probe.c_str(), "imgfs", 5);
  if (r < 0) return Err(r, "ceph: writing to " + c->where);
  if (r = rados_remove(c->io, probe.c_str()); r < 0) {
    return Err(r, "ceph: removing the probe object " + probe + " in " + c->where);
  }
  return Status::OK();
}

Result<std::unique_ptr<DiskBackend>> CreateRbdDiskBackend(std::string_view target,
                                                          ImageSource* images,
                                                          const CephOptions* ceph) {
  ASSIGN_OR_RETURN(auto conn, Connect(target, ceph));
  return std::unique_ptr<DiskBackend>(std::make_unique<RbdDiskBackend>(std::move(conn), images));
}

DiskBackendType RbdDiskBackendType() {
  DiskBackendType t;
  t.name = "rbd";
  t.usage = "rbd:POOL[/NAMESPACE]";
  t.argument = SpecArgument::kRequired;
  t.shared_between_stores = true;
  t.create = [](const BackendContext& ctx, std::string_view arg) {
    return CreateRbdDiskBackend(arg, ctx.images, ctx.ceph);
  };
  // Nothing is created unless the cluster, the key and the pool work.
  t.prepare = [](const BackendContext& ctx, std::string_view arg) {
    return CheckRbdTarget(arg, ctx.ceph).WithContext("disks rbd:" + std::string(arg));
  };
  return t;
}

}  // namespace imgfs
