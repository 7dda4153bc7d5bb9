// DiskInfo of rbd disks without opening their images (InfoReader,
// blockstore/rbd_info.h; docs/rbd.md, "Listing and lookup").
//
// What DiskInfo needs of a disk is in RADOS objects that librbd keeps: the
// header's omap (cls_rbd's keys: size, order, features, flags, parent,
// modify_timestamp, metadata_<key>) and the object map (cls_rbd's
// BitVector<2>, rbd_object_map.<id>). Opening an image costs an open of
// librbd's image context (a watch-free open still reads the header in
// several round trips, 20-30 ms here); these reads cost one round trip per
// object and are issued many at a time.
#include "blockstore/rbd_info.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <deque>

namespace imgfs::rbd_internal {
namespace {

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

// The header keys DecodeHeader reads.
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

// The owned bytes of an image with header `h`, from the batch's read of the
// beginning of its object map (`mq`), read again whole when the map is
// longer; nullopt when the map cannot be read or does not match the header.
std::optional<uint64_t> OwnedBytes(Connection& c, const Header& h, const ReadBatch::Req& mq) {
  if (h.size == 0) return 0;
  if (mq.r < 0) return std::nullopt;
  size_t need = 0;
  std::optional<uint64_t> owned = OwnedFromObjectMap(mq.data, h.size, h.object_size, &need);
  if (!owned && need > mq.data.size() && mq.data.size() == kObjectMapFirstRead) {
    std::string whole(need, '\0');
    int r = rados_read(c.io, mq.oid.c_str(), whole.data(), whole.size(), 0);
    if (r >= 0) {
      whole.resize(size_t(r));
      owned = OwnedFromObjectMap(whole, h.size, h.object_size, &need);
    }
  }
  return owned;
}

// One disk's Info, without its parent, from the batch's reads of its header
// (`hq`) and object map (`mq`); the header decoded into `*header`. nullopt
// when the image is to be opened instead: a header or an object map the
// direct reads do not understand.
std::optional<Result<DiskInfo>> InfoFromReads(Connection& c, int64_t pool, const DiskRef& ref,
                                              const std::string& name, const ReadBatch::Req& hq,
                                              const ReadBatch::Req& mq,
                                              std::optional<Header>* header) {
  if (hq.r == -ENOENT || (hq.r >= 0 && hq.values.empty())) {  // removed meanwhile
    return Result<DiskInfo>(Status::NotFound("disk " + ref.ToString() + " not found"));
  }
  if (hq.r < 0) return Result<DiskInfo>(Err(hq.r, "rados: reading the header of " + c.Where(name)));
  *header = DecodeHeader(hq.values, pool, c.ns);
  if (!*header) return std::nullopt;
  const Header& h = **header;
  std::optional<uint64_t> owned = OwnedBytes(c, h, mq);
  if (!owned) return std::nullopt;
  DiskInfo info;
  info.ref = ref;
  info.location = "rbd:" + c.Where(name);
  info.size = h.size;
  info.owned_bytes = *owned;
  info.attrs = h.attrs;
  info.mtime_ns = h.mtime_ns;
  return Result<DiskInfo>(std::move(info));
}

// The image id of RBD image `name`, from its object rbd_id.<name>: NotFound
// when there is no such image, nullopt when the object holds no image id.
Result<std::optional<std::string>> ReadImageId(Connection& c, const std::string& name) {
  char buf[256];
  int n = rados_read(c.io, ("rbd_id." + name).c_str(), buf, sizeof buf, 0);
  if (n == -ENOENT) return Status::NotFound("no image " + c.Where(name));
  if (n < 0) return Err(n, "rados: reading rbd_id." + name);
  std::string id;
  if (!Decoder{std::string_view(buf, size_t(n))}.String(&id)) return std::optional<std::string>();
  return std::optional<std::string>(std::move(id));
}

Result<DiskAttrs> ReadAttrs(rbd_image_t img) {
  return ParseAttrs([img](const char* key) { return GetMetadata(img, key); });
}

}  // namespace

Result<DiskInfo> InfoReader::Info(const DiskRef& ref) {
  RETURN_IF_ERROR(ValidateRef(ref));
  const std::string name = RbdDiskName(ref);
  if (auto open = OpenDiskInfo(ref, name)) return std::move(*open);
  auto id = ReadImageId(*conn_, name);
  if (id.status().IsNotFound()) return Status::NotFound("disk " + ref.ToString() + " not found");
  RETURN_IF_ERROR(id.status());
  if (!*id) return OpenedInfo(ref, name);
  std::vector<Wanted> want{{ref, name, **id}};
  return std::move(HeaderInfos(want, {})[0]);
}

std::vector<Result<DiskInfo>> InfoReader::InfoMany(const std::vector<DiskRef>& refs) {
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

std::optional<Result<DiskInfo>> InfoReader::OpenDiskInfo(const DiskRef& ref,
                                                         const std::string& name) {
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

std::vector<Result<DiskInfo>> InfoReader::HeaderInfos(
    const std::vector<Wanted>& want, const std::unordered_map<std::string, std::string>& name_of) {
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
    auto got = InfoFromReads(*conn_, pool, want[i].ref, want[i].name, batch[2 * i],
                             batch[2 * i + 1], &headers[i]);
    slow[i] = !got;
    out.push_back(got ? std::move(*got)
                      : Result<DiskInfo>(Status::NotFound("disk " + want[i].ref.ToString() +
                                                          " not found")));
  }
  // Parents: their names (imgfs.base.<image id>) and that the snapshot
  // is there, once for each.
  auto parent_of = [&](size_t i) -> std::optional<ParentKey> {
    if (!out[i].ok() || !headers[i]->parent) return std::nullopt;
    return ParentKey(headers[i]->parent->image_id, headers[i]->parent->snap);
  };
  std::map<ParentKey, std::optional<ImageId>> parents;
  for (size_t i = 0; i < want.size(); ++i) {
    if (auto key = parent_of(i)) parents.emplace(*key, std::nullopt);
  }
  std::set<ParentKey> bad = ResolveParents(&parents, name_of);
  for (size_t i = 0; i < want.size(); ++i) {
    if (auto key = parent_of(i)) {
      if (bad.contains(*key)) {
        slow[i] = true;
      } else {
        out[i]->parent = parents[*key];
      }
    }
    if (slow[i]) out[i] = OpenedInfo(want[i].ref, want[i].name);
  }
  return out;
}

std::set<InfoReader::ParentKey> InfoReader::ResolveParents(
    std::map<ParentKey, std::optional<ImageId>>* parents,
    const std::unordered_map<std::string, std::string>& name_of) {
  std::set<ParentKey> bad;
  const auto now = std::chrono::steady_clock::now();
  struct Ask {
    ParentKey key;
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
    std::optional<ImageId> id = BaseImageId(a.name);
    (*parents)[a.key] = id;
    parent_cache_[a.key] = {id, now};
  }
  return bad;
}

Result<DiskInfo> InfoReader::OpenedInfo(const DiskRef& ref, const std::string& name) {
  auto img = OpenImage(*conn_, name, true);
  if (!img.ok()) return NotOpened(*conn_, img.status(), ref, name);
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
    info.parent = BaseImageId(parent.image_name ? parent.image_name : "");
    rbd_linked_image_spec_cleanup(&parent);
    rbd_snap_spec_cleanup(&snap);
  } else if (r != -ENOENT) {
    return Err(r, "rbd: parent of " + Where(name));
  }
  ASSIGN_OR_RETURN(info.owned_bytes, ObjectBytes(img->get(), info.size, Where(name)));
  timespec ts{};
  if (rbd_get_modify_timestamp(img->get(), &ts) == 0) {
    info.mtime_ns = int64_t{ts.tv_sec} * 1000000000 + ts.tv_nsec;
  }
  ASSIGN_OR_RETURN(info.attrs, ReadAttrs(img->get()));
  return info;
}

Result<std::string> MissingParent(Connection& c, const std::string& name) {
  ASSIGN_OR_RETURN(std::optional<std::string> image_id, ReadImageId(c, name));
  if (!image_id) {
    return Status::Corruption("rbd: rbd_id." + name + " does not hold an image id");
  }
  auto value = OmapValue(c.io, "rbd_header." + *image_id, "parent");
  if (value.status().IsNotFound()) {
    return Status::NotFound("rbd: " + c.Where(name) + " has no parent");  // not that, then
  }
  RETURN_IF_ERROR(value.status());
  std::optional<ParentSpec> spec = DecodeParent(*value);
  if (!spec) {
    return Status::Corruption("rbd: the parent of " + c.Where(name) + " cannot be decoded");
  }
  const std::string& parent_id = spec->image_id;
  if (spec->pool != rados_ioctx_get_id(c.io) || spec->ns != c.ns) {
    return "its parent (pool id " + std::to_string(spec->pool) +
           (spec->ns.empty() ? "" : ", namespace " + spec->ns) + ", RBD image id " + parent_id +
           ") is missing";
  }
  auto parent = OmapValue(c.io, "rbd_directory", "id_" + parent_id);
  if (parent.status().IsNotFound()) {
    return "its parent image (RBD image id " + parent_id + ") was removed from the pool";
  }
  RETURN_IF_ERROR(parent.status());
  std::string parent_name;
  if (!Decoder{*parent}.String(&parent_name)) parent_name = "id " + parent_id;
  if (parent_name.starts_with(kBasePrefix)) {
    return "its parent, the published base rbd:" + c.Where(parent_name) + "@" + kSnap +
           ", was removed (snapshot id " + std::to_string(spec->snap) + " is gone)";
  }
  return "its parent snapshot " + c.Where(parent_name) + "@(id " + std::to_string(spec->snap) +
         ") is missing";
}

Status NotOpened(Connection& c, const Status& s, const DiskRef& ref, const std::string& name) {
  if (!s.IsNotFound()) return s;
  auto why = MissingParent(c, name);
  if (!why.ok()) return NotFoundAsDisk(s, ref);
  return Status::NotFound("disk " + ref.ToString() + " cannot be opened: " + *why +
                          " (RBD image " + c.Where(name) + ")");
}

}  // namespace imgfs::rbd_internal
