// Private to the rbd disk backend (blockstore/rbd_*.cc; docs/rbd.md): the
// names it gives RBD images and RADOS objects, the cluster connection, and the
// small librbd/librados helpers its files share.
//
// The backend's files, one job each:
//   rbd_common.cc        this header: connection, image handles, metadata and
//                        omap reads, names
//   rbd_disk_io.cc       an open disk (RbdDisk): reads, writes, flushes, the
//                        exclusive lock, asynchronous requests
//   rbd_local_parent.cc  reads of a clone's parent served from the local store
//   rbd_info.cc          DiskInfo without opening images: headers and object
//                        maps decoded (docs/rbd.md, "Listing and lookup")
//   rbd_publish.cc       publication of images as imgfs.base.<id>: the
//                        imgfs.tmp.* protocol, clones, unpublication
//   rbd_backend.cc       the DiskBackend over all of these, its registry type
//                        and the target check of `imgfs init`
#pragma once

#include <rados/librados.h>
#include <rbd/librbd.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "blockstore/disk.h"
#include "blockstore/mutex.h"
#include "blockstore/rbd_disk.h"

namespace imgfs::rbd_internal {

inline constexpr char kBasePrefix[] = "imgfs.base.";
inline constexpr char kTmpPrefix[] = "imgfs.tmp.";
inline constexpr char kSnap[] = "base";
inline constexpr char kInstancesObject[] = "imgfs.instances";
inline constexpr char kPublishedKey[] = "imgfs.published";
inline constexpr uint64_t kFeatures = RBD_FEATURE_LAYERING | RBD_FEATURE_EXCLUSIVE_LOCK |
                                      RBD_FEATURE_OBJECT_MAP | RBD_FEATURE_FAST_DIFF |
                                      RBD_FEATURE_DEEP_FLATTEN;

inline Status Err(int r, std::string_view what) { return Status::FromErrno(r, what); }

// The largest disk with objects of `object_size` bytes (docs/rbd.md, "Disk
// sizes").
DiskSizeLimit RbdSizeLimit(uint64_t object_size);

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

  // "pool[/ns]/<name>", for messages and locations.
  std::string Where(const std::string& name) const { return where + "/" + name; }

  ~Connection() {
    if (io) rados_ioctx_destroy(io);
    if (cluster) rados_shutdown(cluster);
  }
};

// Connects to the cluster of `target` ("POOL" or "POOL/NAMESPACE") and checks
// that the pool (and namespace) can be listed (CreateRbdDiskBackend).
Result<std::shared_ptr<Connection>> Connect(std::string_view target, const CephOptions* ceph);

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
                        const char* snap = nullptr);

// rbd_image_options_t for new images: format 2 and kFeatures.
struct RbdOptions {
  rbd_image_options_t opts;
  RbdOptions() {
    rbd_image_options_create(&opts);
    (void)rbd_image_options_set_uint64(opts, RBD_IMAGE_OPTION_FORMAT, 2);
    (void)rbd_image_options_set_uint64(opts, RBD_IMAGE_OPTION_FEATURES, kFeatures);
  }
  ~RbdOptions() { rbd_image_options_destroy(opts); }
  RbdOptions(const RbdOptions&) = delete;
  RbdOptions& operator=(const RbdOptions&) = delete;
};

Result<std::string> GetMetadata(rbd_image_t img, const char* key);

// The images of the pool (namespace): name and image id of each.
Result<std::vector<std::pair<std::string, std::string>>> ListImageSpecs(Connection& c);
Result<std::vector<std::string>> ListImageNames(Connection& c);

// The value of omap key `key` of object `oid`; NotFound when the object or
// the key is missing.
Result<std::string> OmapValue(rados_ioctx_t io, const std::string& oid, const std::string& key);

// Calls `fn` with each omap key of object `oid` that begins with
// `prefix`, in order, reading them a thousand at a time (a range of the
// sorted keys: the cost grows with the keys that match, not with all). No
// keys when the object does not exist.
Status ForEachOmapKey(rados_ioctx_t io, const char* oid, const std::string& prefix,
                      const std::function<void(const std::string&)>& fn);

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
std::optional<DiskRef> ParseDiskName(std::string_view name);

Status ValidateRef(const DiskRef& ref);

// `s`, or "disk ... not found" when it is NotFound.
Status NotFoundAsDisk(const Status& s, const DiskRef& ref);

// The stored image an RBD image named imgfs.base.<id> was published from;
// nullopt for any other name.
std::optional<ImageId> BaseImageId(std::string_view name);

// A disk's attributes from the metadata keys imgfs.mode, imgfs.uid and
// imgfs.gid, each read with `get` (NotFound: the default).
Result<DiskAttrs> ParseAttrs(const std::function<Result<std::string>(const char*)>& get);

// diff_iterate2's callbacks. CollectExtent collects the extents that hold
// data into a std::vector<Extent>; AddExtentBytes adds their lengths to a
// uint64_t.
int CollectExtent(uint64_t off, size_t len, int exists, void* arg);
int AddExtentBytes(uint64_t off, size_t len, int exists, void* arg);

// The bytes of the objects `img` (of `size` bytes) has, in whole objects
// (fast with the object map); `where` names it in the error.
Result<uint64_t> ObjectBytes(rbd_image_t img, uint64_t size, const std::string& where);

}  // namespace imgfs::rbd_internal
