// The "rbd:POOL[/NAMESPACE]" disk backend (blockstore/rbd_disk.h;
// docs/rbd.md): RbdDiskBackend creates, opens, renames, resizes and removes
// disks and keeps the instances, over an open disk (rbd_disk_io.cc), the
// lookups without opening (rbd_info.cc) and the publication of images
// (rbd_publish.cc). Also its registry type and the target check of
// `imgfs init`.
#include <rados/librados.h>
#include <rbd/librbd.h>
#include <rbd/librbd.hpp>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <set>
#include <tuple>

#include "blockstore/backends.h"
#include "blockstore/disk_util.h"
#include "blockstore/rbd_disk.h"
#include "blockstore/rbd_disk_io.h"
#include "blockstore/rbd_info.h"
#include "blockstore/rbd_internal.h"
#include "blockstore/rbd_publish.h"

namespace imgfs {
namespace rbd_internal {
namespace {

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

class RbdDiskBackend : public DiskBackend {
 public:
  RbdDiskBackend(std::shared_ptr<Connection> conn, ImageSource* images)
      : conn_(std::move(conn)),
        images_(images),
        open_disks_(std::make_shared<OpenDisks>()),
        info_(conn_, open_disks_),
        publications_(conn_) {}

  std::string Describe() const override { return "rbd:" + conn_->where; }

  // New images take the object size of rbd_default_order (4 MiB unless the
  // Ceph configuration says otherwise); clones take their parent's, which
  // imgfs published with the same default.
  Result<DiskSizeLimit> MaxDiskSize(uint32_t chunk_size) override {
    (void)chunk_size;
    return RbdSizeLimit(DefaultObjectSize());
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
    ASSIGN_OR_RETURN(uint64_t size, opts.image ? CreateClone(ref, name, opts, limit)
                                               : CreateBlank(ref, name, opts));
    Status s = FinishCreate(ref, name, size, opts.attrs);
    if (!s.ok()) (void)rbd_remove(conn_->io, name.c_str());
    return s;
  }

  Result<std::unique_ptr<Disk>> Open(const DiskRef& ref, OpenMode mode) override {
    RETURN_IF_ERROR(ValidateRef(ref));
    const std::string name = RbdDiskName(ref);
    bool rw = mode != OpenMode::kReadOnly;
    bool rw_handle = true;
    ASSIGN_OR_RETURN(std::unique_ptr<librbd::Image> img, OpenHandle(ref, name, rw, &rw_handle));
    bool held = false;
    if (rw) {
      ASSIGN_OR_RETURN(held, LockForWriting(ref, name, mode, *img));
    }
    librbd::image_info_t info{};
    if (int r = img->stat(info, sizeof info); r < 0) return Err(r, "rbd: size of " + Where(name));
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
    if (in_use.IsNotFound() && MissingParent(*conn_, name).ok()) in_use = Status::OK();
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

  // Without opening the image (docs/rbd.md, "Listing and lookup";
  // InfoReader).
  Result<DiskInfo> Info(const DiskRef& ref) override { return info_.Info(ref); }
  std::vector<Result<DiskInfo>> InfoMany(const std::vector<DiskRef>& refs) override {
    return info_.InfoMany(refs);
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

  // Publication (Publications, rbd_publish.cc).
  Result<std::vector<PublishedImage>> ListPublished() override { return publications_.List(); }
  Result<std::string> CheckPublished(const ImageId& id) override {
    return publications_.Check(id);
  }
  Status Unpublish(const ImageId& id) override { return publications_.Unpublish(id); }
  Result<std::vector<std::string>> RemoveAbandonedPublications(bool dry_run) override {
    return publications_.RemoveAbandoned(dry_run);
  }

  // A disk the pool lists but librbd cannot open (NotFound) lost its parent:
  // a published base removed by hand behind librbd's back (its clone
  // records edited). Says which parent, read from the disk's header.
  Status Check(const DiskRef& ref, std::vector<std::string>* problems) override {
    RETURN_IF_ERROR(ValidateRef(ref));
    const std::string name = RbdDiskName(ref);
    auto img = OpenImage(*conn_, name, true);
    if (img.ok() || !img.status().IsNotFound()) return Status::OK();  // fsck's Info said it
    auto why = MissingParent(*conn_, name);
    if (why.status().IsNotFound()) return Status::OK();  // no such disk (removed meanwhile)
    RETURN_IF_ERROR(why.status());
    problems->push_back("disk " + ref.ToString() + ": RBD image " + Where(name) +
                        " cannot be opened: " + *why);
    return Status::OK();
  }

 private:
  std::string Where(const std::string& name) const { return conn_->Where(name); }

  uint64_t DefaultObjectSize() const {
    char buf[32] = {};
    int order = 22;
    if (rados_conf_get(conn_->cluster, "rbd_default_order", buf, sizeof buf) == 0) {
      int o = std::atoi(buf);
      if (o >= 12 && o <= 26) order = o;
    }
    return uint64_t{1} << order;
  }

  // Create's blank image of opts.size bytes; its size.
  Result<uint64_t> CreateBlank(const DiskRef& ref, const std::string& name,
                               const DiskCreateOptions& opts) {
    if (!opts.size) return Status::InvalidArgument("a blank disk needs a size");
    RbdOptions o;
    int r = rbd_create4(conn_->io, name.c_str(), *opts.size, o.opts);
    if (r == -EEXIST) return Status::AlreadyExists("disk " + ref.ToString() + " already exists");
    if (r < 0) return Err(r, "rbd: creating " + Where(name));
    return *opts.size;
  }

  // Create's clone of image *opts.image, published first if it is not;
  // its size (opts.size, or the image's).
  Result<uint64_t> CreateClone(const DiskRef& ref, const std::string& name,
                               const DiskCreateOptions& opts, const DiskSizeLimit& limit) {
    if (!images_) return Status::NotSupported("this rbd backend has no image source");
    ASSIGN_OR_RETURN(ImageGeometry geometry, images_->GetGeometry(*opts.image));
    uint64_t size = opts.size.value_or(geometry.size);
    if (size > limit.max_bytes) return disk_util::SizeError("disk " + ref.ToString(), size, limit);
    if (size < geometry.size) {
      return Status::InvalidArgument("disk size " + std::to_string(size) +
                                     " is smaller than the image " + opts.image->Hex() + " (" +
                                     std::to_string(geometry.size) + " bytes)");
    }
    RETURN_IF_ERROR(publications_.Clone(*images_, *opts.image, ref, name));
    return size;
  }

  // Open's librbd handle. Disks use librbd's C++ API, whose reads hand over
  // their buffers. A read-only disk gets a writable librbd handle too (no
  // lock taken): its header is watched (it follows a resize made elsewhere)
  // and StartWriting can make it writable without opening it again. If that
  // open fails (a client the cluster lets only read; a writable open, which
  // registers a watch, timing out on a cluster just back from a stall: seen
  // once, ETIMEDOUT, in guest_flush@rbd), a read-only handle as before
  // (`*rw_handle` false).
  Result<std::unique_ptr<librbd::Image>> OpenHandle(const DiskRef& ref, const std::string& name,
                                                    bool rw, bool* rw_handle) {
    librados::IoCtx io;
    librados::IoCtx::from_rados_ioctx_t(conn_->io, io);
    auto img = std::make_unique<librbd::Image>();
    librbd::RBD rbd;
    *rw_handle = true;
    int r = rbd.open(io, *img, name.c_str());
    if (!rw && r < 0 && r != -ENOENT) {
      spdlog::debug("{}: a writable handle for a read-only open failed ({}); opening read-only",
                    Where(name), std::strerror(-r));
      *rw_handle = false;
      img = std::make_unique<librbd::Image>();
      r = rbd.open_read_only(io, *img, name.c_str(), nullptr);
    }
    if (r < 0) return NotFoundAsDisk(Err(r, "rbd: opening " + Where(name)), ref);
    return img;
  }

  // Open's exclusive lock of a disk opened for writing: true when taken,
  // false when another client holds it and `mode` allows standby, else Busy.
  Result<bool> LockForWriting(const DiskRef& ref, const std::string& name, OpenMode mode,
                              librbd::Image& img) {
    // A lock a dead earlier server of this mount still holds is broken
    // first: asking its owner would wait for an answer that never comes.
    BreakDeadOwner(*conn_, img, name);
    int r = img.lock_acquire(RBD_LOCK_MODE_EXCLUSIVE);
    if (r == -EROFS || r == -EBUSY || r == -EAGAIN) {
      if (mode != OpenMode::kReadWriteStandby) {
        return Status::Busy("disk " + ref.ToString() + " is in use (open for writing elsewhere)");
      }
      spdlog::info("{}: open for writing elsewhere; opened in standby", Where(name));
      return false;
    }
    if (r < 0) return Err(r, "rbd: locking " + Where(name));
    return true;
  }

  static Status InUse(const DiskRef& ref) {
    return Status::Busy("disk " + ref.ToString() + " is in use (open for writing)");
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
    if (!img.ok()) return NotOpened(*conn_, img.status(), ref, name);
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

  std::shared_ptr<Connection> conn_;  // constant after construction
  ImageSource* images_;               // constant after construction
  const std::shared_ptr<OpenDisks> open_disks_;
  InfoReader info_;
  Publications publications_;
};

}  // namespace
}  // namespace rbd_internal

Status CheckRbdTarget(std::string_view target, const CephOptions* ceph) {
  using rbd_internal::Err;
  ASSIGN_OR_RETURN(auto c, rbd_internal::Connect(target, ceph));
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
  ASSIGN_OR_RETURN(auto conn, rbd_internal::Connect(target, ceph));
  return std::unique_ptr<DiskBackend>(
      std::make_unique<rbd_internal::RbdDiskBackend>(std::move(conn), images));
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
