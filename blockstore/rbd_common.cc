// The rbd disk backend's shared helpers (blockstore/rbd_internal.h): the
// cluster connection, image handles, metadata and omap reads, and names.
#include <algorithm>
#include <cerrno>
#include <cstring>

#include "blockstore/rbd_internal.h"
#include "blockstore/units.h"

namespace imgfs {
namespace rbd_internal {
namespace {

// librbd refuses an image with more objects than an object map holds
// (cls_rbd's MAX_OBJECT_MAP_OBJECT_COUNT: 976.6 TiB with 4 MiB objects).
// imgfs stops at 2^24 objects (64 TiB with 4 MiB objects, a 4 MiB object
// map): the object map is written whole when a disk is created or grown
// and read whole when it is opened for writing, which took 4 s at 64 TiB and
// 11 s at 256 TiB on the test cluster, against the client's 20 s op timeout
// (docs/rbd.md, "Disk sizes").
constexpr uint64_t kLibrbdMaxObjects = 256'000'000;
constexpr unsigned kMaxObjectsLog2 = 24;

// The pool and namespace of `target` into `c`.
Status ParseTarget(std::string_view target, Connection* c) {
  size_t slash = target.find('/');
  c->pool = std::string(target.substr(0, slash));
  if (slash != std::string_view::npos) c->ns = std::string(target.substr(slash + 1));
  c->where = std::string(target);
  if (c->pool.empty() || (slash != std::string_view::npos && c->ns.empty()) ||
      c->ns.find('/') != std::string::npos) {
    return Status::InvalidArgument("disk backend 'rbd:" + std::string(target) +
                                   "': expected rbd:POOL or rbd:POOL/NAMESPACE");
  }
  return Status::OK();
}

// The client's configuration: the conf file, CEPH_ARGS, the keyring, the
// client timeouts and librbd's options.
Status Configure(rados_t cluster, const CephOptions& opts) {
  // Errors reach the user as one Status line; Ceph's own log stays off stderr.
  auto quiet = [&] {
    (void)rados_conf_set(cluster, "log_to_stderr", "false");
    (void)rados_conf_set(cluster, "err_to_stderr", "false");
  };
  quiet();
  int r = rados_conf_read_file(cluster, opts.conf_file.empty() ? nullptr : opts.conf_file.c_str());
  if (r < 0 && !(opts.conf_file.empty() && r == -ENOENT)) {
    return Err(r, "ceph: reading configuration " +
                      (opts.conf_file.empty() ? std::string("(default)") : opts.conf_file));
  }
  if (r = rados_conf_parse_env(cluster, nullptr); r < 0) return Err(r, "ceph: CEPH_ARGS");
  quiet();
  if (!opts.keyring.empty()) {
    if (r = rados_conf_set(cluster, "keyring", opts.keyring.c_str()); r < 0) {
      return Err(r, "ceph: setting keyring");
    }
  }
  const std::string t = std::to_string(opts.timeout_seconds > 0 ? opts.timeout_seconds : 20);
  for (const char* k : {"client_mount_timeout", "rados_mon_op_timeout", "rados_osd_op_timeout"}) {
    if (r = rados_conf_set(cluster, k, t.c_str()); r < 0) return Err(r, std::string("ceph: ") + k);
  }
  // Discard must make partial objects read back as zeros too.
  // A write is acknowledged once the cluster has it, never from librbd's
  // in-process cache: a server that dies must not take acknowledged writes
  // with it (docs/rbd.md, "A server replaced").
  (void)rados_conf_set(cluster, "rbd_cache", "false");
  (void)rados_conf_set(cluster, "rbd_skip_partial_discard", "false");
  (void)rados_conf_set(cluster, "rbd_discard_granularity_bytes", "4096");
  return Status::OK();
}

// The I/O context of the pool (and namespace) of a connected `c`.
Status OpenPool(Connection* c) {
  int r = rados_ioctx_create(c->cluster, c->pool.c_str(), &c->io);
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
  return Status::OK();
}

}  // namespace

DiskSizeLimit RbdSizeLimit(uint64_t object_size) {
  uint64_t objects = std::min<uint64_t>(kLibrbdMaxObjects, uint64_t{1} << kMaxObjectsLog2);
  return {objects * object_size, "2^" + std::to_string(kMaxObjectsLog2) + " RBD objects of " +
                                     FormatSize(object_size) + ", imgfs's largest rbd disk"};
}

Result<std::shared_ptr<Connection>> Connect(std::string_view target, const CephOptions* ceph) {
  CephOptions opts = ceph ? *ceph : CephOptions{};
  auto c = std::make_shared<Connection>();
  RETURN_IF_ERROR(ParseTarget(target, c.get()));
  std::string id = opts.client_id.empty() ? "admin" : opts.client_id;
  if (id.starts_with("client.")) id = id.substr(7);
  const std::string who = "client." + id;
  if (int r = rados_create(&c->cluster, id.c_str()); r < 0)
    return Err(r, "rados: creating a client");
  RETURN_IF_ERROR(Configure(c->cluster, opts));
  const std::string conf_desc =
      "(conf " + (opts.conf_file.empty() ? std::string("default") : opts.conf_file) + ", " + who +
      (opts.keyring.empty() ? std::string() : ", keyring " + opts.keyring) + ")";
  if (int r = rados_connect(c->cluster); r < 0) {
    return Err(r, "ceph: connecting to the cluster " + conf_desc);
  }
  RETURN_IF_ERROR(OpenPool(c.get()));
  // Any call that needs the OSDs: fails here, clearly, rather than on first use.
  std::vector<rbd_image_spec_t> specs(1);
  size_t n = 1;
  int r = rbd_list2(c->io, specs.data(), &n);
  if (r >= 0) rbd_image_spec_list_cleanup(specs.data(), n);
  if (r < 0 && r != -ERANGE) return Err(r, "rbd: listing images in " + c->where + " " + conf_desc);
  return c;
}

Result<Image> OpenImage(Connection& c, const std::string& name, bool read_only,
                        const char* snap) {
  rbd_image_t img = nullptr;
  int r = read_only ? rbd_open_read_only(c.io, name.c_str(), &img, snap)
                    : rbd_open(c.io, name.c_str(), &img, snap);
  if (r < 0) return Err(r, "rbd: opening " + c.Where(name));
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

Status NotFoundAsDisk(const Status& s, const DiskRef& ref) {
  if (s.IsNotFound()) return Status::NotFound("disk " + ref.ToString() + " not found");
  return s;
}

std::optional<ImageId> BaseImageId(std::string_view name) {
  if (!name.starts_with(kBasePrefix)) return std::nullopt;
  auto id = ImageId::FromHex(name.substr(std::strlen(kBasePrefix)));
  if (!id.ok()) return std::nullopt;
  return *id;
}

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

int CollectExtent(uint64_t off, size_t len, int exists, void* arg) {
  if (exists) static_cast<std::vector<Extent>*>(arg)->push_back({off, len});
  return 0;
}

int AddExtentBytes(uint64_t, size_t len, int exists, void* arg) {
  if (exists) *static_cast<uint64_t*>(arg) += len;
  return 0;
}

Result<uint64_t> ObjectBytes(rbd_image_t img, uint64_t size, const std::string& where) {
  uint64_t used = 0;
  // (librbd asserts on an empty range.)
  if (size == 0) return used;
  int r = rbd_diff_iterate2(img, nullptr, 0, size, 0, 1, &AddExtentBytes, &used);
  if (r < 0) return Err(r, "rbd: usage of " + where);
  return used;
}

}  // namespace rbd_internal

std::string RbdDiskName(const DiskRef& ref) { return ref.instance + "_" + ref.disk; }

std::string RbdBaseName(const ImageId& id) {
  return std::string(rbd_internal::kBasePrefix) + id.Hex();
}

}  // namespace imgfs
