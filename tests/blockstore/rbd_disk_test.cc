// The rbd disk backend against the real test cluster (tools/test.sh starts it
// and sets IMGFS_CEPH_*). Each test case works in its own RBD namespace.
#include "blockstore/rbd_disk.h"

#include <rados/librados.h>
#include <rbd/librbd.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <future>
#include <map>
#include <random>
#include <thread>

#include "blockstore/chunk_store.h"
#include "blockstore/image.h"
#include "blockstore/manifest.h"

using namespace imgfs;

namespace {

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

CephOptions ClusterOptions() {
  if (Env("IMGFS_CEPH_CONF").empty()) {
    FAIL(
        "IMGFS_CEPH_CONF is not set: run the tests with tools/test.sh, which starts the "
        "test Ceph cluster (tools/ceph-cluster.sh)");
  }
  CephOptions o;
  o.conf_file = Env("IMGFS_CEPH_CONF");
  o.client_id = Env("IMGFS_CEPH_ID");
  o.keyring = Env("IMGFS_CEPH_KEYRING");
  return o;
}

std::string RandomHex(size_t n) {
  static std::mt19937_64 rng{std::random_device{}()};
  std::string s;
  while (s.size() < n) s += "0123456789abcdef"[rng() % 16];
  return s;
}

// A direct librados/librbd client for checks behind the backend's back.
class Raw {
 public:
  explicit Raw(const CephOptions& o, const std::string& ns = "") {
    std::string id = o.client_id.empty() ? "admin" : o.client_id;
    REQUIRE(rados_create(&cluster_, id.c_str()) == 0);
    REQUIRE(rados_conf_read_file(cluster_, o.conf_file.c_str()) == 0);
    if (!o.keyring.empty()) REQUIRE(rados_conf_set(cluster_, "keyring", o.keyring.c_str()) == 0);
    REQUIRE(rados_connect(cluster_) == 0);
    REQUIRE(rados_ioctx_create(cluster_, Env("IMGFS_CEPH_POOL").c_str(), &io_) == 0);
    if (!ns.empty()) rados_ioctx_set_namespace(io_, ns.c_str());
  }
  ~Raw() {
    rados_ioctx_destroy(io_);
    rados_shutdown(cluster_);
  }
  rados_ioctx_t io() { return io_; }

  std::vector<std::string> Images() {
    std::vector<rbd_image_spec_t> specs(256);
    size_t n = specs.size();
    REQUIRE(rbd_list2(io_, specs.data(), &n) == 0);
    std::vector<std::string> out;
    for (size_t i = 0; i < n; i++) out.emplace_back(specs[i].name);
    rbd_image_spec_list_cleanup(specs.data(), n);
    std::sort(out.begin(), out.end());
    return out;
  }

  // Bytes the image stores itself (whole objects, parent excluded).
  uint64_t Used(const std::string& name, const char* snap = nullptr) {
    rbd_image_t img;
    REQUIRE(rbd_open_read_only(io_, name.c_str(), &img, snap) == 0);
    uint64_t size = 0, used = 0;
    REQUIRE(rbd_get_size(img, &size) == 0);
    REQUIRE(rbd_diff_iterate2(
                img, nullptr, 0, size, 0, 1,
                [](uint64_t, size_t len, int exists, void* arg) {
                  if (exists) *static_cast<uint64_t*>(arg) += len;
                  return 0;
                },
                &used) == 0);
    rbd_close(img);
    return used;
  }

 private:
  rados_t cluster_ = nullptr;
  rados_ioctx_t io_ = nullptr;
};

// An RBD namespace made for one test case and emptied and removed after it.
class Namespace {
 public:
  Namespace() : opts_(ClusterOptions()), name_("t" + RandomHex(12)), raw_(opts_) {
    REQUIRE(rbd_namespace_create(raw_.io(), name_.c_str()) == 0);
    in_ = std::make_unique<Raw>(opts_, name_);
  }
  ~Namespace() {
    Raw& in = *in_;
    // Clones first, then the bases they hang from.
    for (int pass = 0; pass < 2; pass++) {
      for (const auto& n : in.Images()) {
        bool base = n.starts_with("imgfs.");
        if ((pass == 0) == base) continue;
        rbd_image_t img;
        if (rbd_open(in.io(), n.c_str(), &img, nullptr) == 0) {
          int prot = 0;
          if (rbd_snap_is_protected(img, "base", &prot) == 0 && prot)
            rbd_snap_unprotect(img, "base");
          rbd_snap_remove(img, "base");
          rbd_close(img);
        }
        rbd_remove(in.io(), n.c_str());
      }
    }
    std::vector<std::string> objects;
    rados_list_ctx_t list;
    if (rados_nobjects_list_open(in.io(), &list) == 0) {
      const char* oid;
      while (rados_nobjects_list_next(list, &oid, nullptr, nullptr) == 0) {
        if (std::string_view(oid).starts_with("imgfs.")) objects.emplace_back(oid);
      }
      rados_nobjects_list_close(list);
    }
    for (const auto& o : objects) rados_remove(in.io(), o.c_str());
    in_.reset();
    rbd_namespace_remove(raw_.io(), name_.c_str());
  }
  const CephOptions& opts() const { return opts_; }
  std::string spec() const { return Env("IMGFS_CEPH_POOL") + "/" + name_; }
  const std::string& name() const { return name_; }
  Raw& raw() { return *in_; }  // a client in this namespace

 private:
  CephOptions opts_;
  std::string name_;
  Raw raw_;  // the pool's default namespace
  std::unique_ptr<Raw> in_;
};

// Images in a memory chunk store, served to the backend; `local` is what
// ReadsAreLocal answers (false, as for a rados chunk store, unless asked).
class TestImages : public ImageSource {
 public:
  explicit TestImages(uint32_t chunk_size = 64 * 1024, bool local = false)
      : chunks_(std::make_shared<ChunkStore>(*CreateChunkBackend("mem:"), chunk_size)),
        local_(local) {}

  bool ReadsAreLocal() const override { return local_; }

  // Makes image `id` read as `data` from now on (same size). Impossible in a
  // real store (ids are content hashes); lets a test see where reads go.
  void Substitute(const ImageId& id, const Bytes& data) {
    ImageId other = Add(data);
    std::lock_guard lock(mu_);
    manifests_[id] = manifests_[other];
  }

  ImageId Add(const Bytes& data) {
    Manifest m;
    m.size = data.size();
    m.chunk_size = chunks_->chunk_size();
    for (size_t off = 0; off < data.size(); off += m.chunk_size) {
      size_t n = std::min<size_t>(m.chunk_size, data.size() - off);
      auto put = chunks_->Put(ByteView(data).subspan(off, n));
      REQUIRE(put.ok());
      m.chunks.push_back(put->id);
    }
    ImageId id = m.Id();
    std::lock_guard lock(mu_);
    manifests_[id] = m;
    return id;
  }

  Result<std::shared_ptr<ImageReader>> OpenImage(const ImageId& id) override {
    std::lock_guard lock(mu_);
    auto it = manifests_.find(id);
    if (it == manifests_.end()) return Status::NotFound("image " + id.Hex() + " not found");
    return std::make_shared<ImageReader>(chunks_, id, it->second);
  }

 private:
  std::shared_ptr<ChunkStore> chunks_;
  const bool local_;
  std::mutex mu_;
  std::map<ImageId, Manifest> manifests_;
};

Bytes RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  Bytes b(n);
  for (size_t i = 0; i + 8 <= n; i += 8) {
    uint64_t v = rng();
    std::memcpy(&b[i], &v, 8);
  }
  return b;
}

// 12 MiB: 4 MiB of data, a 4 MiB hole (one whole RBD object), 4 MiB of data.
Bytes ImageWithHole(uint64_t seed) {
  Bytes b = RandomBytes(12u << 20, seed);
  std::memset(&b[4u << 20], 0, 4u << 20);
  return b;
}

std::unique_ptr<DiskBackend> Backend(const Namespace& ns, ImageSource* images) {
  auto b = CreateRbdDiskBackend(ns.spec(), images, &ns.opts());
  INFO(b.status().ToString());
  REQUIRE(b.ok());
  return std::move(*b);
}

const DiskRef kDisk{"inst1", "disk"};

#define REQUIRE_OK(expr)                  \
  do {                                    \
    Status s_ = (expr);                   \
    INFO(#expr << ": " << s_.ToString()); \
    REQUIRE(s_.ok());                     \
  } while (0)

// The first offset where `got` differs from `want`, or "same".
std::string Diff(const Bytes& got, const Bytes& want) {
  if (got.size() != want.size()) return "size " + std::to_string(got.size());
  auto m = std::mismatch(got.begin(), got.end(), want.begin());
  if (m.first == got.end()) return "same";
  return "differs from offset " + std::to_string(m.first - got.begin());
}

// Reads the disk one RBD object (4 MiB) at a time: a read that spans
// objects the clone has and objects it has not goes to the cluster whole.
Bytes ReadAll(Disk& d) {
  Bytes b(d.size(), 0xee);
  for (uint64_t off = 0; off < b.size(); off += 4u << 20) {
    size_t n = std::min<size_t>(4u << 20, b.size() - off);
    Status st = d.Read(off, MutableByteView(b).subspan(off, n));
    INFO(st.ToString());
    REQUIRE(st.ok());
  }
  return b;
}

// ReadBuffersAsync, waited for.
Bytes ReadBuffersOf(Disk& d, uint64_t off, size_t len) {
  std::promise<Result<ReadBuffers>> p;
  d.ReadBuffersAsync(off, len, [&p](Result<ReadBuffers> r) { p.set_value(std::move(r)); });
  Result<ReadBuffers> r = p.get_future().get();
  INFO(r.status().ToString());
  REQUIRE(r.ok());
  REQUIRE(r->size() == len);
  Bytes b(len);
  r->CopyTo(b);
  return b;
}

// From here on the local store answers other bytes for image `id` (its
// content inverted) than the published base holds, so every read shows
// where it was served from. Returns them.
Bytes InvertLocally(TestImages& images, const ImageId& id, const Bytes& content) {
  Bytes local = content;
  for (uint8_t& c : local) c ^= 0xff;
  images.Substitute(id, local);
  return local;
}

// Disk kDisk, a clone of a random image of `size` bytes, on a backend whose
// images are local and answer other bytes than the base (InvertLocally).
struct LocalClone {
  LocalClone(size_t size, uint64_t seed)
      : images(64 * 1024, /*local=*/true),
        content(RandomBytes(size, seed)),
        id(images.Add(content)),
        be(Backend(ns, &images)) {
    co.image = id;
    REQUIRE_OK(be->Create(kDisk, co));
    local = InvertLocally(images, id, content);
  }

  Namespace ns;
  TestImages images;
  Bytes content;
  ImageId id;
  std::unique_ptr<DiskBackend> be;
  DiskCreateOptions co;
  Bytes local;
};

}  // namespace

TEST_CASE("rbd: a blank disk reads zeros, keeps writes, grows, discards", "[rbd]") {
  Namespace ns;
  auto be = Backend(ns, nullptr);
  DiskCreateOptions co;
  REQUIRE(be->Create(kDisk, co).IsInvalidArgument());  // blank needs a size
  co.size = 8u << 20;
  co.attrs = {0600, 107, 108};
  REQUIRE_OK(be->Create(kDisk, co));
  REQUIRE(be->Create(kDisk, co).IsAlreadyExists());
  REQUIRE(ns.raw().Images() == std::vector<std::string>{"inst1_disk"});

  auto d = be->Open(kDisk, OpenMode::kReadWrite);
  REQUIRE(d.ok());
  Disk& disk = **d;
  REQUIRE(disk.size() == 8u << 20);
  Bytes zeros(1 << 20), buf(1 << 20);
  REQUIRE_OK(disk.Read(0, buf));
  REQUIRE(buf == zeros);

  Bytes data = RandomBytes(3 << 20, 1);
  REQUIRE_OK(disk.Write(12345, data));
  REQUIRE_OK(disk.Flush());
  Bytes back(data.size());
  REQUIRE_OK(disk.Read(12345, back));
  REQUIRE(back == data);
  REQUIRE(disk.Write((8u << 20) - 10, ByteView(data).first(11)).IsInvalidArgument());

  // Discard, unaligned: the range reads zeros, its neighbours are kept.
  REQUIRE_OK(disk.Discard(100000, 1000001));
  REQUIRE_OK(disk.Read(12345, back));
  for (size_t i = 0; i < back.size(); i++) {
    uint64_t off = 12345 + i;
    bool zero = off >= 100000 && off < 1100001;
    if (back[i] != (zero ? 0 : data[i])) FAIL("byte " << off << " wrong after discard");
  }

  // Grow: O(1), new space reads zeros; shrink refused unless allowed.
  REQUIRE_OK(disk.Resize(uint64_t{64} << 30, false));
  REQUIRE(disk.size() == uint64_t{64} << 30);
  REQUIRE_OK(disk.Read((uint64_t{64} << 30) - buf.size(), buf));
  REQUIRE(buf == zeros);
  REQUIRE(disk.Resize(1u << 20, false).IsPermissionDenied());
  REQUIRE(disk.size() == uint64_t{64} << 30);

  auto ext = disk.Allocated(0, uint64_t{64} << 30);
  REQUIRE(ext.ok());
  REQUIRE(!ext->empty());
  REQUIRE(ext->front().offset <= 12345);
  REQUIRE(ext->back().offset + ext->back().length <= 8u << 20);

  auto info = be->Info(kDisk);
  REQUIRE(info.ok());
  REQUIRE(info->size == uint64_t{64} << 30);
  REQUIRE(!info->parent);
  REQUIRE(info->attrs.mode == 0600);
  REQUIRE(info->attrs.uid == 107);
  REQUIRE(info->attrs.gid == 108);
  REQUIRE(info->location == "rbd:" + ns.spec() + "/inst1_disk");
  REQUIRE(info->owned_bytes > 0);
  REQUIRE(info->mtime_ns > 0);

  // chmod while open for writing (libvirt relabels running disks).
  REQUIRE_OK(be->SetAttrs(kDisk, {0640, 0, 0}));
  REQUIRE(be->Info(kDisk)->attrs.mode == 0640);

  d->reset();
  auto ro = be->Open(kDisk, OpenMode::kReadOnly);
  REQUIRE(ro.ok());
  REQUIRE(!(*ro)->writable());
  REQUIRE((*ro)->Write(0, ByteView(data).first(10)).code() == Code::kReadOnly);
  REQUIRE_OK((*ro)->Read(12345, back));
  REQUIRE(std::equal(back.begin(), back.begin() + (100000 - 12345), data.begin()));
}

TEST_CASE("rbd: an empty disk (size 0) has info, maps nothing, and grows", "[rbd]") {
  Namespace ns;
  auto be = Backend(ns, nullptr);
  DiskCreateOptions co;
  co.size = 0;
  REQUIRE_OK(be->Create(kDisk, co));
  auto info = be->Info(kDisk);
  INFO(info.status().ToString());
  REQUIRE(info.ok());
  REQUIRE(info->size == 0);
  REQUIRE(info->owned_bytes == 0);
  auto d = be->Open(kDisk, OpenMode::kReadWrite);
  REQUIRE(d.ok());
  REQUIRE((*d)->Allocated(0, 1 << 20)->empty());
  REQUIRE_OK((*d)->Discard(0, 4096));
  REQUIRE_OK((*d)->Resize(10u << 20, false));
  REQUIRE_OK((*d)->Write(0, Bytes(4096, 3)));
  REQUIRE_OK((*d)->Flush());
}

TEST_CASE("rbd: a second writer, remove and rename of an open disk are refused", "[rbd]") {
  Namespace ns;
  auto be = Backend(ns, nullptr);
  auto other_host = Backend(ns, nullptr);  // its own cluster connection
  DiskCreateOptions co;
  co.size = 4u << 20;
  REQUIRE_OK(be->Create(kDisk, co));
  {
    auto w = be->Open(kDisk, OpenMode::kReadWrite);
    REQUIRE(w.ok());
    auto w2 = other_host->Open(kDisk, OpenMode::kReadWrite);
    REQUIRE(w2.status().IsBusy());
    REQUIRE(w2.status().message().find("in use") != std::string::npos);
    REQUIRE(be->Open(kDisk, OpenMode::kReadWrite).status().IsBusy());
    REQUIRE(other_host->Remove(kDisk).IsBusy());
    REQUIRE(other_host->Rename(kDisk, {"inst1", "other"}).IsBusy());
    REQUIRE(other_host->Resize(kDisk, 8u << 20, false).IsBusy());
    // Readers are fine, and the writer keeps working.
    REQUIRE(other_host->Open(kDisk, OpenMode::kReadOnly).ok());
    Bytes b(4096, 7);
    REQUIRE_OK((*w)->Write(0, b));
    REQUIRE_OK((*w)->Flush());
  }
  // Closed: the other host may write now.
  auto w2 = other_host->Open(kDisk, OpenMode::kReadWrite);
  REQUIRE(w2.ok());
  Bytes b(4096);
  REQUIRE_OK((*w2)->Read(0, b));
  REQUIRE(b == Bytes(4096, 7));
  w2->reset();
  REQUIRE_OK(be->Resize(kDisk, 8u << 20, false));
  REQUIRE(be->Resize(kDisk, 4u << 20, false).IsPermissionDenied());
  REQUIRE_OK(be->Rename(kDisk, {"inst2", "disk"}));
  REQUIRE(be->Info(kDisk).status().IsNotFound());
  REQUIRE(be->Info({"inst2", "disk"})->size == 8u << 20);
  REQUIRE_OK(be->Remove({"inst2", "disk"}));
  REQUIRE(be->Remove({"inst2", "disk"}).IsNotFound());
  REQUIRE(be->Open({"inst2", "disk"}, OpenMode::kReadOnly).status().IsNotFound());
}

TEST_CASE("rbd: a writer in standby reads, is refused writes, and takes over when the holder closes",
          "[rbd]") {
  Namespace ns;
  auto be = Backend(ns, nullptr);
  auto other_host = Backend(ns, nullptr);  // its own cluster connection
  DiskCreateOptions co;
  co.size = 4u << 20;
  REQUIRE_OK(be->Create(kDisk, co));
  auto w = be->Open(kDisk, OpenMode::kReadWriteStandby);
  REQUIRE(w.ok());  // the lock was free: taken at open
  REQUIRE_OK((*w)->Write(0, Bytes(4096, 1)));
  auto s = other_host->Open(kDisk, OpenMode::kReadWriteStandby);
  REQUIRE(s.ok());
  REQUIRE((*s)->writable());
  Bytes b(4096);
  REQUIRE_OK((*s)->Read(0, b));
  REQUIRE(b == Bytes(4096, 1));
  // The holder keeps its lock: the standby's writes, discards and resizes are
  // Busy (after the hand-over wait) and change nothing; its flush is OK.
  auto t0 = std::chrono::steady_clock::now();
  Status st = (*s)->Write(0, Bytes(4096, 2));
  REQUIRE(st.IsBusy());
  REQUIRE(std::chrono::steady_clock::now() - t0 >= std::chrono::seconds(4));
  REQUIRE((*s)->Discard(0, 4096).IsBusy());
  REQUIRE((*s)->Resize(8u << 20, false).IsBusy());
  REQUIRE_OK((*s)->Flush());
  REQUIRE_OK((*w)->Read(0, b));
  REQUIRE(b == Bytes(4096, 1));
  // The holder grows the disk: the standby's size follows (header watch).
  REQUIRE_OK((*w)->Resize(8u << 20, false));
  REQUIRE_OK((*w)->Write(6u << 20, Bytes(4096, 3)));
  for (int i = 0; i < 100 && (*s)->size() != (8u << 20); i++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  REQUIRE((*s)->size() == (8u << 20));
  // The holder closes: the standby's next write takes the lock, and sees
  // every byte the holder wrote.
  w->reset();
  REQUIRE_OK((*s)->Write(4096, Bytes(4096, 4)));
  REQUIRE_OK((*s)->Flush());
  REQUIRE_OK((*s)->Read(6u << 20, b));
  REQUIRE(b == Bytes(4096, 3));
  // Now the first host is the one refused.
  auto w3 = be->Open(kDisk, OpenMode::kReadWrite);
  REQUIRE(w3.status().IsBusy());
  auto s3 = be->Open(kDisk, OpenMode::kReadWriteStandby);
  REQUIRE(s3.ok());
  REQUIRE((*s3)->Write(0, Bytes(4096, 5)).IsBusy());
  s->reset();
  REQUIRE_OK((*s3)->Read(4096, b));
  REQUIRE(b == Bytes(4096, 4));
  REQUIRE_OK((*s3)->Write(0, Bytes(4096, 5)));
  REQUIRE_OK((*s3)->Flush());
}

TEST_CASE("rbd: a read-only disk becomes writable in place, for a migration destination",
          "[rbd]") {
  Namespace ns;
  auto be = Backend(ns, nullptr);
  auto other_host = Backend(ns, nullptr);
  DiskCreateOptions co;
  co.size = 4u << 20;
  REQUIRE_OK(be->Create(kDisk, co));
  auto w = be->Open(kDisk, OpenMode::kReadWrite);
  REQUIRE(w.ok());
  REQUIRE_OK((*w)->Write(0, Bytes(4096, 1)));
  // The destination waits with its disk open read-only: no lock taken (the
  // source keeps writing), writes refused.
  auto ro = other_host->Open(kDisk, OpenMode::kReadOnly);
  REQUIRE(ro.ok());
  REQUIRE(!(*ro)->writable());
  REQUIRE((*ro)->Write(0, Bytes(4096, 9)).code() == Code::kReadOnly);
  REQUIRE_OK((*w)->Write(4096, Bytes(4096, 2)));
  // The source grows the disk: the read-only handle follows (header watch),
  // in size() and in the backend's Info, which answers from the open disk.
  REQUIRE_OK((*w)->Resize(8u << 20, false));
  for (int i = 0; i < 100 && (*ro)->size() != (8u << 20); i++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  REQUIRE((*ro)->size() == (8u << 20));
  REQUIRE(other_host->Info(kDisk)->size == (8u << 20));
  // Made writable while the source still holds the lock: in standby, the
  // write is Busy and lands nowhere.
  REQUIRE_OK((*ro)->StartWriting());
  REQUIRE((*ro)->writable());
  REQUIRE((*ro)->Write(0, Bytes(4096, 9)).IsBusy());
  // The source stops writing (qemu's inactivation): the destination's
  // write takes the lock and sees every byte the source wrote.
  REQUIRE_OK((*w)->StopWriting());
  REQUIRE_OK((*ro)->Write(8192, Bytes(4096, 3)));
  REQUIRE_OK((*ro)->Flush());
  Bytes b(4096);
  REQUIRE_OK((*ro)->Read(4096, b));
  REQUIRE(b == Bytes(4096, 2));
  // The source's handle, stopped, cannot be made writable again in place,
  // and a new writer there is refused: the destination holds the lock.
  REQUIRE((*w)->StartWriting().code() == Code::kNotSupported);
  REQUIRE((*w)->Write(0, Bytes(4096, 9)).code() == Code::kReadOnly);
  REQUIRE(be->Open(kDisk, OpenMode::kReadWrite).status().IsBusy());
  w->reset();
  // A read-only disk made writable while the lock is free takes it at once.
  ro->reset();
  auto ro2 = be->Open(kDisk, OpenMode::kReadOnly);
  REQUIRE(ro2.ok());
  REQUIRE_OK((*ro2)->StartWriting());
  REQUIRE(other_host->Open(kDisk, OpenMode::kReadWrite).status().IsBusy());
  REQUIRE_OK((*ro2)->Read(8192, b));
  REQUIRE(b == Bytes(4096, 3));
  REQUIRE_OK((*ro2)->Write(0, Bytes(4096, 4)));
  REQUIRE_OK((*ro2)->Flush());
}

TEST_CASE("rbd: instances are disk prefixes plus markers of empty ones", "[rbd]") {
  Namespace ns;
  auto be = Backend(ns, nullptr);
  auto other_host = Backend(ns, nullptr);
  REQUIRE(be->ListInstances()->empty());
  REQUIRE_OK(be->CreateInstance("empty"));
  REQUIRE(be->CreateInstance("empty").IsAlreadyExists());
  REQUIRE(be->CreateInstance("bad_name").IsInvalidArgument());
  DiskCreateOptions co;
  co.size = 1u << 20;
  REQUIRE_OK(be->Create({"i1", "disk"}, co));
  REQUIRE_OK(be->Create({"i1", "disk.eph0"}, co));
  REQUIRE_OK(be->Create({"i2", "disk_config"}, co));
  // Images that are not disks are not listed.
  Raw in(ns.opts(), ns.name());
  int order = 0;
  REQUIRE(rbd_create(in.io(), "nounderscore", 1 << 20, &order) == 0);
  REQUIRE(other_host->ListInstances().value() == std::vector<std::string>{"empty", "i1", "i2"});
  auto all = other_host->List("");
  REQUIRE(all.ok());
  REQUIRE(all->size() == 3);
  REQUIRE((*all)[0].ToString() == "i1/disk");
  REQUIRE((*all)[1].ToString() == "i1/disk.eph0");
  REQUIRE((*all)[2].ToString() == "i2/disk_config");
  REQUIRE(other_host->List("i1")->size() == 2);
  REQUIRE(be->RemoveInstance("i1").code() == Code::kNotEmpty);
  REQUIRE_OK(be->Remove({"i1", "disk"}));
  REQUIRE_OK(be->Remove({"i1", "disk.eph0"}));
  // i1 existed through its disks only: it went with the last one.
  REQUIRE(be->RemoveInstance("i1").IsNotFound());
  REQUIRE(be->List("i1").status().IsNotFound());
  // "empty" was made with CreateInstance: it stays until removed, also with
  // disks created and removed in it.
  REQUIRE_OK(be->Create({"empty", "d"}, co));
  REQUIRE_OK(be->Remove({"empty", "d"}));
  REQUIRE(be->ListInstances().value() == std::vector<std::string>{"empty", "i2"});
  REQUIRE(be->List("empty")->empty());
  REQUIRE_OK(be->RemoveInstance("empty"));
  REQUIRE(be->ListInstances().value() == std::vector<std::string>{"i2"});
}

TEST_CASE("rbd: many asynchronous requests in flight", "[rbd]") {
  Namespace ns;
  auto be = Backend(ns, nullptr);
  DiskCreateOptions co;
  co.size = 16u << 20;
  REQUIRE_OK(be->Create(kDisk, co));
  auto d = be->Open(kDisk, OpenMode::kReadWrite);
  REQUIRE(d.ok());
  constexpr size_t kReqs = 256, kBs = 64 * 1024;
  Bytes data = RandomBytes(kReqs * kBs, 9);
  std::atomic<size_t> ok{0}, done{0};
  std::mutex mu;
  std::condition_variable cv;
  auto cb = [&](Status s) {
    if (s.ok()) ok++;
    std::lock_guard l(mu);
    done++;
    cv.notify_all();
  };
  for (size_t i = 0; i < kReqs; i++) {
    (*d)->WriteAsync(i * kBs, ByteView(data).subspan(i * kBs, kBs), cb);
  }
  {
    std::unique_lock l(mu);
    cv.wait(l, [&] { return done == kReqs; });
  }
  REQUIRE(ok == kReqs);
  std::promise<Status> flushed;
  (*d)->FlushAsync([&](Status s) { flushed.set_value(s); });
  REQUIRE(flushed.get_future().get().ok());
  Bytes back(data.size());
  ok = 0;
  done = 0;
  for (size_t i = 0; i < kReqs; i++) {
    (*d)->ReadAsync(i * kBs, MutableByteView(back).subspan(i * kBs, kBs), cb);
  }
  {
    std::unique_lock l(mu);
    cv.wait(l, [&] { return done == kReqs; });
  }
  REQUIRE(ok == kReqs);
  REQUIRE(back == data);
  std::promise<Status> discarded;
  (*d)->DiscardAsync(0, 1 << 20, [&](Status s) { discarded.set_value(s); });
  REQUIRE(discarded.get_future().get().ok());
  std::promise<Status> bad;
  (*d)->ReadAsync(16u << 20, MutableByteView(back).first(1), [&](Status s) { bad.set_value(s); });
  REQUIRE(bad.get_future().get().IsInvalidArgument());
}

TEST_CASE("rbd: a disk from an image is a clone of its one publication", "[rbd]") {
  Namespace ns;
  TestImages images;
  Bytes content = ImageWithHole(3);
  ImageId id = images.Add(content);
  auto be = Backend(ns, &images);
  DiskCreateOptions co;
  co.image = id;
  co.size = 1u << 20;
  REQUIRE(be->Create(kDisk, co).IsInvalidArgument());  // smaller than the image
  co.size.reset();
  REQUIRE_OK(be->Create(kDisk, co));
  co.size = 1u << 30;
  REQUIRE_OK(be->Create({"inst2", "disk"}, co));
  DiskCreateOptions missing;
  missing.image = Hash128(ByteView(content).first(10));
  REQUIRE(be->Create({"inst3", "disk"}, missing).IsNotFound());

  const std::string base = RbdBaseName(id);
  REQUIRE(ns.raw().Images() ==
          std::vector<std::string>{"imgfs.base." + id.Hex(), "inst1_disk", "inst2_disk"});
  // Thin: the base stores only its data objects; the clones nothing yet.
  REQUIRE(ns.raw().Used(base, "base") == 8u << 20);
  REQUIRE(ns.raw().Used("inst1_disk") == 0);

  auto info = be->Info(kDisk);
  REQUIRE(info.ok());
  REQUIRE(info->parent == id);
  REQUIRE(info->size == content.size());
  REQUIRE(info->owned_bytes == 0);
  REQUIRE(be->Info({"inst2", "disk"})->size == 1u << 30);

  auto d = be->Open(kDisk, OpenMode::kReadWrite);
  REQUIRE(d.ok());
  Bytes back(content.size());
  REQUIRE_OK((*d)->Read(0, back));
  REQUIRE(back == content);
  auto ext = (*d)->Allocated(0, content.size());
  REQUIRE(ext.ok());
  REQUIRE(ext->size() == 2);  // the hole in the middle is reported as one
  REQUIRE((*ext)[0] == Extent{0, 4u << 20});
  REQUIRE((*ext)[1] == Extent{8u << 20, 4u << 20});

  // Copy-on-write: the parent and the other disk keep their bytes.
  Bytes w = RandomBytes(5000, 4);
  REQUIRE_OK((*d)->Write(4000, w));
  REQUIRE_OK((*d)->Discard(9u << 20, 4096));
  REQUIRE_OK((*d)->Flush());
  REQUIRE_OK((*d)->Read(0, back));
  Bytes expect = content;
  std::memcpy(&expect[4000], w.data(), w.size());
  std::memset(&expect[9u << 20], 0, 4096);
  REQUIRE(back == expect);
  auto d2 = be->Open({"inst2", "disk"}, OpenMode::kReadOnly);
  REQUIRE(d2.ok());
  Bytes back2(content.size());
  REQUIRE_OK((*d2)->Read(0, back2));
  REQUIRE(back2 == content);
  Bytes tail(1 << 20);
  REQUIRE_OK((*d2)->Read((1u << 30) - tail.size(), tail));
  REQUIRE(tail == Bytes(1 << 20));

  // Shrinking below the image and growing back reads zeros there.
  REQUIRE_OK((*d)->Resize(2u << 20, true));
  REQUIRE_OK((*d)->Resize(12u << 20, false));
  REQUIRE_OK((*d)->Read(0, back));
  REQUIRE(std::equal(back.begin(), back.begin() + (2u << 20), expect.begin()));
  REQUIRE(std::all_of(back.begin() + (2u << 20), back.end(), [](uint8_t c) { return c == 0; }));

  // The base is protected: it cannot be removed under its clones.
  Raw in(ns.opts(), ns.name());
  rbd_image_t img;
  REQUIRE(rbd_open(in.io(), base.c_str(), &img, nullptr) == 0);
  REQUIRE(rbd_snap_unprotect(img, "base") < 0);
  rbd_close(img);
}

TEST_CASE("rbd: a writable clone reads its parent's bytes from local images until it has them",
          "[rbd]") {
  LocalClone f(12u << 20, 21);
  auto& [ns, images, content, id, be, co, local] = f;
  REQUIRE_OK(be->Create({"inst2", "disk"}, co));

  // Read-only handles read locally too, after a check in the cluster
  // ("a read-only clone ..." below).
  auto ro = be->Open({"inst2", "disk"}, OpenMode::kReadOnly);
  REQUIRE(ro.ok());
  REQUIRE(Diff(ReadAll(**ro), local) == "same");

  auto d = be->Open(kDisk, OpenMode::kReadWrite);
  REQUIRE(d.ok());
  REQUIRE(Diff(ReadAll(**d), local) == "same");
  REQUIRE(ReadBuffersOf(**d, 100, 5000) == Bytes(local.begin() + 100, local.begin() + 5100));

  // A write or discard sends its whole RBD object (4 MiB) to the cluster,
  // where the clone reads the parent's bytes around what was written.
  Bytes w = RandomBytes(4096, 22);
  REQUIRE_OK((*d)->Write(5u << 20, w));
  REQUIRE_OK((*d)->Discard(9u << 20, 4096));
  Bytes expect = local;
  std::copy(content.begin() + (4u << 20), content.end(), expect.begin() + (4u << 20));
  std::copy(w.begin(), w.end(), expect.begin() + (5u << 20));
  std::fill_n(expect.begin() + (9u << 20), 4096, 0);
  REQUIRE(Diff(ReadAll(**d), expect) == "same");
  // A read across an object the clone has goes to the cluster whole.
  Bytes across(content.begin() + (4u << 20) - 10, content.begin() + (4u << 20) + 10);
  REQUIRE(ReadBuffersOf(**d, (4u << 20) - 10, 20) == across);

  // A shrink lowers the parent overlap: regrown bytes are zeros.
  REQUIRE_OK((*d)->Resize(4u << 20, true));
  REQUIRE_OK((*d)->Resize(12u << 20, false));
  Bytes shrunk(12u << 20, 0);
  std::copy_n(local.begin(), 4u << 20, shrunk.begin());
  REQUIRE(Diff(ReadAll(**d), shrunk) == "same");
  // Reopened, the clone's objects come from its object map.
  REQUIRE_OK((*d)->Flush());
  d->reset();
  d = be->Open(kDisk, OpenMode::kReadWrite);
  REQUIRE(d.ok());
  REQUIRE(Diff(ReadAll(**d), shrunk) == "same");
  // A shrink within an object makes librbd copy that object up: it then
  // reads from the cluster.
  REQUIRE_OK((*d)->Resize(2u << 20, true));
  REQUIRE_OK((*d)->Resize(12u << 20, false));
  std::fill(shrunk.begin(), shrunk.end(), 0);
  std::copy_n(content.begin(), 2u << 20, shrunk.begin());
  REQUIRE(Diff(ReadAll(**d), shrunk) == "same");

  // A shrink made through another client (forwarded to this lock owner by
  // librbd) lowers the overlap too.
  co.image = id;
  REQUIRE_OK(be->Create({"inst4", "disk"}, co));
  auto d4 = be->Open({"inst4", "disk"}, OpenMode::kReadWrite);
  REQUIRE(d4.ok());
  Bytes last(4u << 20);
  REQUIRE_OK((*d4)->Read(8u << 20, last));
  REQUIRE(Diff(last, Bytes(local.begin() + (8u << 20), local.end())) == "same");
  {
    rbd_image_t other;
    REQUIRE(rbd_open(ns.raw().io(), "inst4_disk", &other, nullptr) == 0);
    REQUIRE(rbd_resize(other, 8u << 20) == 0);
    REQUIRE(rbd_resize(other, 12u << 20) == 0);
    rbd_close(other);
  }
  REQUIRE_OK((*d4)->Read(8u << 20, last));
  REQUIRE(Diff(last, Bytes(last.size(), 0)) == "same");
  REQUIRE_OK((*d4)->Read(4u << 20, last));
  REQUIRE(Diff(last, Bytes(local.begin() + (4u << 20), local.begin() + (8u << 20))) == "same");

  // Images that are not local are never read in place of the cluster.
  TestImages remote;
  ImageId rid = remote.Add(content);
  auto rbe = Backend(ns, &remote);
  co.image = rid;
  REQUIRE_OK(rbe->Create({"inst3", "disk"}, co));
  remote.Substitute(rid, local);
  auto rd = rbe->Open({"inst3", "disk"}, OpenMode::kReadWrite);
  REQUIRE(rd.ok());
  REQUIRE(Diff(ReadAll(**rd), content) == "same");
  auto rro = rbe->Open({"inst3", "disk"}, OpenMode::kReadOnly);
  REQUIRE(rro.ok());
  REQUIRE(Diff(ReadAll(**rro), content) == "same");
}

TEST_CASE("rbd: a read-only clone reads its parent's bytes locally where the cluster says it "
          "has no object",
          "[rbd]") {
  LocalClone f(12u << 20, 31);
  auto& [ns, images, content, id, be, co, local] = f;
  auto slice = [](const Bytes& b, uint64_t off, size_t len) {
    return Bytes(b.begin() + off, b.begin() + off + len);
  };
  // Another client: librbd straight on the image (it takes the lock).
  auto other = [&](const std::function<void(rbd_image_t)>& f) {
    rbd_image_t img;
    REQUIRE(rbd_open(ns.raw().io(), "inst1_disk", &img, nullptr) == 0);
    f(img);
    REQUIRE(rbd_close(img) == 0);
  };
  constexpr uint64_t kObj = 4u << 20;

  auto ro = be->Open(kDisk, OpenMode::kReadOnly);
  REQUIRE(ro.ok());
  Disk& d = **ro;
  auto counter = std::make_shared<std::atomic<uint64_t>>(0);
  d.SetLocalReadCounter(counter);
  REQUIRE(Diff(ReadAll(d), local) == "same");
  REQUIRE(*counter == 12u << 20);
  REQUIRE(ReadBuffersOf(d, 100, 5000) == slice(local, 100, 5000));
  REQUIRE(ReadBuffersOf(d, kObj - 10, 20) == slice(local, kObj - 10, 20));  // two objects
  REQUIRE(*counter == (12u << 20) + 5020);
  // Many reads at once (they share the header reads): each is right.
  auto many = [&d, &slice](const Bytes& want) {
    constexpr uint64_t kStep = 196608;  // 64 reads over the 12 MiB
    std::vector<std::promise<Result<ReadBuffers>>> ps(64);
    for (size_t i = 0; i < ps.size(); i++) {
      d.ReadBuffersAsync(i * kStep, 4096,
                         [&ps, i](Result<ReadBuffers> r) { ps[i].set_value(std::move(r)); });
    }
    for (size_t i = 0; i < ps.size(); i++) {
      Result<ReadBuffers> r = ps[i].get_future().get();
      REQUIRE(r.ok());
      Bytes b(4096);
      r->CopyTo(b);
      REQUIRE(b == slice(want, i * kStep, 4096));
    }
  };
  many(local);
  REQUIRE(*counter == (12u << 20) + 5020 + 64 * 4096);

  // Another client writes object 1 and discards all of object 2: both read
  // from the cluster from then on (the parent's bytes around the write).
  Bytes w = RandomBytes(4096, 32);
  other([&](rbd_image_t img) {
    REQUIRE(rbd_write(img, 5u << 20, w.size(), reinterpret_cast<const char*>(w.data())) ==
            static_cast<ssize_t>(w.size()));
    REQUIRE(rbd_discard(img, 2 * kObj, kObj) == static_cast<int>(kObj));
  });
  Bytes expect = local;
  std::copy_n(content.begin() + kObj, kObj, expect.begin() + kObj);
  std::copy(w.begin(), w.end(), expect.begin() + (5u << 20));
  std::fill_n(expect.begin() + 2 * kObj, kObj, 0);
  uint64_t before = *counter;
  REQUIRE(Diff(ReadAll(d), expect) == "same");
  REQUIRE(*counter == before + kObj);  // object 0 only
  REQUIRE(ReadBuffersOf(d, 5u << 20, 4096) == w);
  many(expect);
  // A read across an object the clone has goes to the cluster whole.
  REQUIRE(ReadBuffersOf(d, kObj - 10, 20) == slice(content, kObj - 10, 20));
  REQUIRE(*counter == before + kObj + 22 * 4096);  // many's reads of object 0

  // A shrink and regrowth by another client lowers the overlap: object 1
  // and 2 read zeros, and object 0 still locally.
  other([&](rbd_image_t img) {
    REQUIRE(rbd_resize(img, kObj) == 0);
    REQUIRE(rbd_resize(img, 12u << 20) == 0);
  });
  Bytes shrunk(12u << 20, 0);
  std::copy_n(local.begin(), kObj, shrunk.begin());
  for (int i = 0; i < 100 && d.size() != 12u << 20; i++) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  before = *counter;
  REQUIRE(Diff(ReadAll(d), shrunk) == "same");
  REQUIRE(*counter == before + kObj);
  // Within object 0: a read-only handle never notices (no header watch
  // needed): the regrown bytes past 2 MiB read zeros.
  other([&](rbd_image_t img) {
    REQUIRE(rbd_resize(img, 2u << 20) == 0);
    REQUIRE(rbd_resize(img, 12u << 20) == 0);
  });
  REQUIRE(ReadBuffersOf(d, (2u << 20) - 4096, 8192) ==
          [&] {
            Bytes b(8192, 0);
            std::copy_n(content.begin() + (2u << 20) - 4096, 4096, b.begin());
            return b;
          }());

  // A read-only handle opened after a flatten reads the cluster only; the
  // open one too (its objects now exist).
  other([&](rbd_image_t img) { REQUIRE(rbd_flatten(img) == 0); });
  before = *counter;
  Bytes flat(12u << 20, 0);
  std::copy_n(content.begin(), 2u << 20, flat.begin());
  REQUIRE(Diff(ReadAll(d), flat) == "same");
  REQUIRE(*counter == before);
  auto ro2 = be->Open(kDisk, OpenMode::kReadOnly);
  REQUIRE(ro2.ok());
  REQUIRE(Diff(ReadAll(**ro2), flat) == "same");
}

TEST_CASE("rbd: a read-only clone's local reads stop when its client is cut off", "[rbd]") {
  LocalClone f(8u << 20, 41);
  auto& [ns, images, content, id, be, co, local] = f;
  auto ro = be->Open(kDisk, OpenMode::kReadOnly);
  REQUIRE(ro.ok());
  auto counter = std::make_shared<std::atomic<uint64_t>>(0);
  (*ro)->SetLocalReadCounter(counter);
  Bytes b(4096);
  REQUIRE_OK((*ro)->Read(0, b));
  REQUIRE(*counter == 4096);
  REQUIRE(b == Bytes(local.begin(), local.begin() + 4096));
  // The backend's client, found by its watch of the header (the read-only
  // disk has a writable librbd handle, which watches), is blocklisted.
  std::string addr;
  {
    rbd_image_t img;
    REQUIRE(rbd_open_read_only(ns.raw().io(), "inst1_disk", &img, nullptr) == 0);
    rbd_image_watcher_t w[8];
    size_t n = 8;
    REQUIRE(rbd_watchers_list(img, w, &n) == 0);
    REQUIRE(n == 1);
    addr = w[0].addr;
    rbd_watchers_list_cleanup(w, n);
    rbd_close(img);
  }
  rados_t admin;
  REQUIRE(rados_create(&admin, Env("IMGFS_CEPH_ID").empty() ? "admin"
                                                             : Env("IMGFS_CEPH_ID").c_str()) == 0);
  REQUIRE(rados_conf_read_file(admin, Env("IMGFS_CEPH_CONF").c_str()) == 0);
  if (!Env("IMGFS_CEPH_KEYRING").empty()) {
    REQUIRE(rados_conf_set(admin, "keyring", Env("IMGFS_CEPH_KEYRING").c_str()) == 0);
  }
  REQUIRE(rados_connect(admin) == 0);
  auto blocklist = [&](const char* op) {
    std::string cmd = std::string(R"({"prefix": "osd blocklist", "blocklistop": ")") + op +
                      R"(", "addr": ")" + addr + R"("})";
    const char* cmds[] = {cmd.c_str()};
    char *outbuf = nullptr, *outs = nullptr;
    size_t outbuf_len = 0, outs_len = 0;
    int r = rados_mon_command(admin, cmds, 1, "", 0, &outbuf, &outbuf_len, &outs, &outs_len);
    INFO(cmd << ": " << std::string(outs ? outs : "", outs_len));
    rados_buffer_free(outbuf);
    rados_buffer_free(outs);
    REQUIRE(r == 0);
  };
  blocklist("add");
  // Every read checks the cluster: the next one fails (or, if the stat
  // raced the blocklist, still never answers from the local store after).
  bool failed = false;
  for (int i = 0; i < 50 && !failed; i++) {
    Status st = (*ro)->Read(0, b);
    failed = !st.ok();
    if (!failed) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  uint64_t after = *counter;
  blocklist("rm");
  rados_shutdown(admin);
  REQUIRE(failed);
  Status st = (*ro)->Read(0, b);
  if (st.ok()) REQUIRE(b == Bytes(content.begin(), content.begin() + 4096));
  REQUIRE(*counter == after);
}

TEST_CASE("rbd: two hosts publishing the same image at once end with one base", "[rbd]") {
  Namespace ns;
  TestImages images;
  Bytes content = RandomBytes(24u << 20, 5);
  ImageId id = images.Add(content);
  constexpr int kHosts = 3;
  std::vector<std::unique_ptr<DiskBackend>> hosts;
  for (int i = 0; i < kHosts; i++) hosts.push_back(Backend(ns, &images));
  std::vector<std::future<Status>> results;
  for (int i = 0; i < kHosts; i++) {
    results.push_back(std::async(std::launch::async, [&, i] {
      DiskCreateOptions co;
      co.image = id;
      return hosts[i]->Create({"host" + std::to_string(i), "disk"}, co);
    }));
  }
  for (auto& r : results) {
    Status s = r.get();
    INFO(s.ToString());
    REQUIRE(s.ok());
  }
  auto names = ns.raw().Images();
  REQUIRE(names ==
          std::vector<std::string>{"host0_disk", "host1_disk", "host2_disk", RbdBaseName(id)});
  for (int i = 0; i < kHosts; i++) {
    auto d =
        hosts[(i + 1) % kHosts]->Open({"host" + std::to_string(i), "disk"}, OpenMode::kReadOnly);
    REQUIRE(d.ok());
    Bytes back(content.size());
    REQUIRE_OK((*d)->Read(0, back));
    REQUIRE(back == content);
  }
}

TEST_CASE("rbd: a publication killed midway is never a parent and is redone", "[rbd]") {
  Namespace ns;
  TestImages images;
  Bytes content = RandomBytes(8u << 20, 6);
  ImageId id = images.Add(content);
  // What a publisher killed while writing leaves: a temporary image with part
  // of the data, nobody watching it, no published mark.
  const std::string dead = "imgfs.tmp." + id.Hex() + ".deadbeefdeadbeef";
  Raw in(ns.opts(), ns.name());
  int order = 0;
  REQUIRE(rbd_create(in.io(), dead.c_str(), content.size(), &order) == 0);
  {
    rbd_image_t img;
    REQUIRE(rbd_open(in.io(), dead.c_str(), &img, nullptr) == 0);
    Bytes junk(1 << 20, 0x55);
    REQUIRE(rbd_write(img, 0, junk.size(), reinterpret_cast<const char*>(junk.data())) ==
            static_cast<ssize_t>(junk.size()));
    rbd_close(img);
  }
  // ... and its publication lock, which runs out (here after 2 s).
  const std::string lock_oid = "imgfs.publish." + id.Hex();
  timeval dur{2, 0};
  REQUIRE(rados_lock_exclusive(in.io(), lock_oid.c_str(), "publish", "dead-publisher", "", &dur,
                               0) == 0);
  auto be = Backend(ns, &images);
  DiskCreateOptions co;
  co.image = id;
  REQUIRE_OK(be->Create(kDisk, co));
  REQUIRE(be->Info(kDisk)->parent == id);
  REQUIRE(ns.raw().Images() == std::vector<std::string>{RbdBaseName(id), "inst1_disk"});
  auto d = be->Open(kDisk, OpenMode::kReadOnly);
  REQUIRE(d.ok());
  Bytes back(content.size());
  REQUIRE_OK((*d)->Read(0, back));
  REQUIRE(back == content);

  // A base without the completion mark (not made by a finished publisher)
  // is refused as a parent, clearly.
  Bytes other = RandomBytes(1u << 20, 7);
  ImageId id2 = images.Add(other);
  REQUIRE(rbd_create(in.io(), RbdBaseName(id2).c_str(), other.size(), &order) == 0);
  {
    rbd_image_t img;
    REQUIRE(rbd_open(in.io(), RbdBaseName(id2).c_str(), &img, nullptr) == 0);
    REQUIRE(rbd_snap_create(img, "base") == 0);
    rbd_close(img);
  }
  co.image = id2;
  Status s = be->Create({"inst2", "disk"}, co);
  REQUIRE(s.IsCorruption());
  REQUIRE(s.message().find("not a complete imgfs publication") != std::string::npos);
  REQUIRE(be->Info({"inst2", "disk"}).status().IsNotFound());
}

TEST_CASE("rbd: bad pool, namespace, key and a dead cluster are clear errors", "[rbd]") {
  CephOptions o = ClusterOptions();
  auto r = CreateRbdDiskBackend("no-such-pool-" + RandomHex(6), nullptr, &o);
  REQUIRE(r.status().IsNotFound());
  REQUIRE(r.status().message().find("does not exist") != std::string::npos);
  r = CreateRbdDiskBackend(Env("IMGFS_CEPH_POOL") + "/no-such-ns", nullptr, &o);
  REQUIRE(r.status().IsNotFound());
  REQUIRE(CreateRbdDiskBackend("", nullptr, &o).status().IsInvalidArgument());
  REQUIRE(CreateRbdDiskBackend("a/b/c", nullptr, &o).status().IsInvalidArgument());

  // A key the cluster does not know.
  char tmpl[] = "/tmp/imgfs-rbd-test.XXXXXX";
  REQUIRE(mkdtemp(tmpl) != nullptr);
  std::string dir = tmpl;
  {
    std::ofstream k(dir + "/bad.keyring");
    k << "[client.admin]\n\tkey = AQBJ0kBmAAAAABAAo2M1s0A3D8KZ0ZfXkDGgQA==\n";
  }
  CephOptions bad = o;
  bad.keyring = dir + "/bad.keyring";
  r = CreateRbdDiskBackend(Env("IMGFS_CEPH_POOL"), nullptr, &bad);
  REQUIRE(r.status().IsPermissionDenied());
  REQUIRE(r.status().message().find("bad.keyring") != std::string::npos);

  // A cluster that is down: no monitor answers; the error comes within the
  // configured client timeout.
  {
    std::ifstream in(o.conf_file);
    std::ofstream out(dir + "/dead.conf");
    std::string line;
    while (std::getline(in, line)) {
      if (line.starts_with("mon host")) line = "mon host = [v2:127.0.0.1:9]";
      out << line << "\n";
    }
  }
  CephOptions dead = o;
  dead.conf_file = dir + "/dead.conf";
  dead.timeout_seconds = 3;
  r = CreateRbdDiskBackend(Env("IMGFS_CEPH_POOL"), nullptr, &dead);
  REQUIRE(!r.ok());
  REQUIRE(r.status().IsRetryable());
  REQUIRE(r.status().message().find("connecting to the cluster") != std::string::npos);
  std::remove((dir + "/bad.keyring").c_str());
  std::remove((dir + "/dead.conf").c_str());
  rmdir(dir.c_str());
}

// The child of the crash test (run by it through /proc/self/exe): writes and
// flushes pattern 0x5a over the first 4 MiB, writes 0xa5 after it without a
// flush, reports on fd IMGFS_RBD_CHILD_FD, and waits to be killed.
TEST_CASE("rbd crash test child", "[.rbd-crash-child]") {
  CephOptions o = ClusterOptions();
  auto be = CreateRbdDiskBackend(Env("IMGFS_RBD_CHILD_SPEC"), nullptr, &o);
  REQUIRE(be.ok());
  auto d = (*be)->Open(kDisk, OpenMode::kReadWrite);
  REQUIRE(d.ok());
  REQUIRE_OK((*d)->Write(0, Bytes(4u << 20, 0x5a)));
  REQUIRE_OK((*d)->Flush());
  REQUIRE_OK((*d)->Write(4u << 20, Bytes(4u << 20, 0xa5)));
  int fd = std::atoi(Env("IMGFS_RBD_CHILD_FD").c_str());
  char c = 1;
  REQUIRE(::write(fd, &c, 1) == 1);
  for (;;) ::pause();
}

TEST_CASE("rbd: flushed writes survive a SIGKILL of the writer, whose lock is broken",
          "[rbd][crash]") {
  Namespace ns;
  auto be = Backend(ns, nullptr);
  DiskCreateOptions co;
  co.size = 16u << 20;
  REQUIRE_OK(be->Create(kDisk, co));
  int p[2];
  REQUIRE(::pipe(p) == 0);
  pid_t pid = ::fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    ::close(p[0]);
    ::setenv("IMGFS_RBD_CHILD_SPEC", ns.spec().c_str(), 1);
    ::setenv("IMGFS_RBD_CHILD_FD", std::to_string(p[1]).c_str(), 1);
    ::execl("/proc/self/exe", "rbd_crash_child", "rbd crash test child", "-o", "/dev/null",
            nullptr);
    ::_exit(127);
  }
  ::close(p[1]);
  char c = 0;
  ssize_t n = ::read(p[0], &c, 1);
  ::close(p[0]);
  if (n != 1) {
    ::kill(pid, SIGKILL);
    ::waitpid(pid, nullptr, 0);
    FAIL("the child did not get to write");
  }
  REQUIRE(be->Open(kDisk, OpenMode::kReadWrite).status().IsBusy());
  ::kill(pid, SIGKILL);
  ::waitpid(pid, nullptr, 0);
  // The dead writer's lock is broken once its watch expires (~30 s).
  auto d = be->Open(kDisk, OpenMode::kReadWrite);
  INFO(d.status().ToString());
  REQUIRE(d.ok());
  Bytes back(4u << 20);
  REQUIRE_OK((*d)->Read(0, back));
  REQUIRE(back == Bytes(4u << 20, 0x5a));
  REQUIRE_OK((*d)->Write(0, Bytes(4096, 1)));
  REQUIRE_OK((*d)->Flush());
}
