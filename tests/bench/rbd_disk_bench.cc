// rbd disk backend benchmark, run by tools/bench-rbd.sh against a cluster
// named by IMGFS_CEPH_CONF / _ID / _KEYRING / _POOL. Works in a fresh RBD
// namespace that it removes. Prints one line per figure: "name value unit".
//
//   rbd_disk_bench publish MIB
//       publication of a MIB image of random data (64 KiB chunks, a quarter
//       of them holes) and, as the baseline, the same bytes written with 16
//       rbd_aio_write2 of 4 MiB in flight into a plain image
//   rbd_disk_bench io MIB read|write|randread|randwrite BS DEPTH SECONDS
//       the backend's async I/O on a disk cloned from a MIB image of random
//       data, DEPTH requests in flight, for SECONDS (or one pass of the disk
//       for sequential jobs)
#include <rados/librados.h>
#include <rbd/librbd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <random>
#include <string>

#include "blockstore/chunk_store.h"
#include "blockstore/disk.h"
#include "blockstore/image.h"
#include "blockstore/manifest.h"
#include "blockstore/rbd_disk.h"

using namespace imgfs;
using Clock = std::chrono::steady_clock;

namespace {

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "rbd_disk_bench: %s\n", what.c_str());
  std::exit(1);
}

void Check(const Status& s, const char* what) {
  if (!s.ok()) Die(std::string(what) + ": " + s.ToString());
}

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  if (!v || !*v) Die(std::string(name) + " is not set (start tools/ceph-cluster.sh)");
  return v;
}

class Images : public ImageSource {
 public:
  Images() : chunks_(std::make_shared<ChunkStore>(*CreateChunkBackend("mem:"), 64 * 1024)) {}
  ImageId Add(const Bytes& data) {
    Manifest m;
    m.size = data.size();
    m.chunk_size = chunks_->chunk_size();
    for (size_t off = 0; off < data.size(); off += m.chunk_size) {
      auto put = chunks_->Put(
          ByteView(data).subspan(off, std::min<size_t>(m.chunk_size, data.size() - off)));
      Check(put.status(), "chunk put");
      m.chunks.push_back(put->id);
    }
    ImageId id = m.Id();
    manifests_[id] = m;
    return id;
  }
  Result<std::shared_ptr<ImageReader>> OpenImage(const ImageId& id) override {
    return std::make_shared<ImageReader>(chunks_, id, manifests_.at(id));
  }

 private:
  std::shared_ptr<ChunkStore> chunks_;
  std::map<ImageId, Manifest> manifests_;
};

Bytes RandomImage(size_t n, bool holes) {
  std::mt19937_64 rng(42);
  Bytes b(n);
  for (size_t i = 0; i + 8 <= n; i += 8) {
    uint64_t v = rng();
    std::memcpy(&b[i], &v, 8);
  }
  if (holes) {
    for (size_t off = 0; off < n; off += 4 * 64 * 1024) std::memset(&b[off], 0, 64 * 1024);
  }
  return b;
}

// A fresh RBD namespace, removed (with everything in it) at exit.
struct Namespace {
  rados_t cluster = nullptr;
  rados_ioctx_t io = nullptr;   // default namespace
  rados_ioctx_t nio = nullptr;  // ours
  std::string name;
  CephOptions opts;

  Namespace() {
    opts.conf_file = Env("IMGFS_CEPH_CONF");
    opts.client_id = Env("IMGFS_CEPH_ID");
    opts.keyring = Env("IMGFS_CEPH_KEYRING");
    if (rados_create(&cluster, opts.client_id.c_str()) < 0 ||
        rados_conf_read_file(cluster, opts.conf_file.c_str()) < 0 ||
        rados_conf_set(cluster, "keyring", opts.keyring.c_str()) < 0 ||
        rados_connect(cluster) < 0 ||
        rados_ioctx_create(cluster, Env("IMGFS_CEPH_POOL").c_str(), &io) < 0 ||
        rados_ioctx_create(cluster, Env("IMGFS_CEPH_POOL").c_str(), &nio) < 0) {
      Die("cannot connect to the cluster");
    }
    name = "bench" + std::to_string(std::random_device{}() % 1000000);
    if (rbd_namespace_create(io, name.c_str()) < 0) Die("rbd namespace create failed");
    rados_ioctx_set_namespace(nio, name.c_str());
  }
  ~Namespace() {
    for (int pass = 0; pass < 2; pass++) {
      std::vector<rbd_image_spec_t> specs(64);
      size_t n = specs.size();
      if (rbd_list2(nio, specs.data(), &n) < 0) break;
      for (size_t i = 0; i < n; i++) {
        std::string img_name = specs[i].name;
        bool base = img_name.starts_with("imgfs.");
        if ((pass == 0) == base) continue;
        rbd_image_t img;
        if (rbd_open(nio, img_name.c_str(), &img, nullptr) == 0) {
          rbd_snap_unprotect(img, "base");
          rbd_snap_remove(img, "base");
          rbd_close(img);
        }
        rbd_remove(nio, img_name.c_str());
      }
      rbd_image_spec_list_cleanup(specs.data(), n);
    }
    rados_list_ctx_t list;
    std::vector<std::string> objs;
    if (rados_nobjects_list_open(nio, &list) == 0) {
      const char* oid;
      while (rados_nobjects_list_next(list, &oid, nullptr, nullptr) == 0) objs.emplace_back(oid);
      rados_nobjects_list_close(list);
    }
    for (const auto& o : objs) {
      if (o.starts_with("imgfs.")) rados_remove(nio, o.c_str());
    }
    rbd_namespace_remove(io, name.c_str());
    rados_ioctx_destroy(nio);
    rados_ioctx_destroy(io);
    rados_shutdown(cluster);
  }
  std::string spec() const { return Env("IMGFS_CEPH_POOL") + "/" + name; }
};

void Publish(uint64_t mib) {
  Namespace ns;
  Images images;
  Bytes data = RandomImage(mib << 20, true);
  ImageId id = images.Add(data);
  auto be = CreateRbdDiskBackend(ns.spec(), &images, &ns.opts);
  Check(be.status(), "backend");

  // Baseline: the same non-hole bytes, 4 MiB aio writes, 16 in flight.
  int order = 22;
  if (rbd_create(ns.nio, "plain", data.size(), &order) < 0) Die("rbd create");
  rbd_image_t img;
  if (rbd_open(ns.nio, "plain", &img, nullptr) < 0) Die("rbd open");
  auto t0 = Clock::now();
  std::vector<rbd_completion_t> inflight;
  for (size_t off = 0; off < data.size(); off += 4u << 20) {
    size_t n = std::min<size_t>(4u << 20, data.size() - off);
    rbd_completion_t c;
    rbd_aio_create_completion(
        nullptr, [](rbd_completion_t, void*) {}, &c);
    rbd_aio_write2(img, off, n, reinterpret_cast<const char*>(&data[off]), c, 0);
    inflight.push_back(c);
    if (inflight.size() >= 16) {
      rbd_aio_wait_for_complete(inflight.front());
      if (rbd_aio_get_return_value(inflight.front()) < 0) Die("baseline write failed");
      rbd_aio_release(inflight.front());
      inflight.erase(inflight.begin());
    }
  }
  for (auto c : inflight) {
    rbd_aio_wait_for_complete(c);
    rbd_aio_release(c);
  }
  rbd_flush(img);
  rbd_close(img);
  double base_s = Seconds(t0);

  t0 = Clock::now();
  {
    auto reader = images.OpenImage(id);
    Bytes buf(4u << 20);
    for (uint64_t off = 0; off < data.size(); off += buf.size()) {
      Check((*reader)->Read(
                off, MutableByteView(buf).first(std::min<uint64_t>(buf.size(), data.size() - off))),
            "read");
    }
  }
  double read_s = Seconds(t0);
  t0 = Clock::now();
  DiskCreateOptions co;
  co.image = id;
  Check((*be)->Create({"bench", "disk"}, co), "create (publish)");
  double pub_s = Seconds(t0);
  t0 = Clock::now();
  Check((*be)->Create({"bench", "disk2"}, co), "create (reuse)");
  double reuse_s = Seconds(t0);
  double mb = static_cast<double>(data.size()) / 1e6;
  std::printf("publish_MBps %.1f MB/s\n", mb / pub_s);
  std::printf("baseline_aio_write_MBps %.1f MB/s\n", mb / base_s);
  std::printf("publish_ratio %.2f x\n", base_s / pub_s);
  std::printf("image_read_MBps %.1f MB/s (reading the chunks alone)\n", mb / read_s);
  std::printf("create_from_published_ms %.1f ms\n", reuse_s * 1000);
}

void Io(uint64_t mib, const std::string& rw, uint64_t bs, int depth, double seconds) {
  Namespace ns;
  Images images;
  Bytes data = RandomImage(mib << 20, false);
  ImageId id = images.Add(data);
  data.clear();
  auto be = CreateRbdDiskBackend(ns.spec(), &images, &ns.opts);
  Check(be.status(), "backend");
  DiskCreateOptions co;
  co.image = id;
  Check((*be)->Create({"bench", "disk"}, co), "create");
  Check((*be)->Create({"bench", "ref"}, co), "create");
  auto d = (*be)->Open({"bench", "disk"}, OpenMode::kReadWrite);
  Check(d.status(), "open");
  Disk& disk = **d;
  const uint64_t size = mib << 20, blocks = size / bs;
  const bool write = rw == "write" || rw == "randwrite";
  const bool seq = rw == "read" || rw == "write";
  std::vector<Bytes> bufs(depth, RandomImage(bs, false));
  std::vector<int> free_slots;
  for (int i = 0; i < depth; i++) free_slots.push_back(i);
  std::mutex mu;
  std::condition_variable cv;
  int inflight = 0;
  uint64_t next = 0, done = 0;
  bool failed = false;
  std::mt19937_64 rng(7);
  auto t0 = Clock::now();
  auto more = [&] { return seq ? next < blocks : Seconds(t0) < seconds; };
  std::unique_lock lock(mu);
  while (more() && !failed) {
    cv.wait(lock, [&] { return inflight < depth || failed; });
    if (failed) break;
    int slot = free_slots.back();
    free_slots.pop_back();
    uint64_t blk = seq ? next : rng() % blocks;
    next++;
    inflight++;
    lock.unlock();
    auto cb = [&, slot](Status s) {
      std::lock_guard l(mu);
      inflight--;
      done++;
      free_slots.push_back(slot);
      if (!s.ok()) failed = true;
      cv.notify_all();
    };
    if (write) {
      disk.WriteAsync(blk * bs, bufs[slot], cb);
    } else {
      disk.ReadAsync(blk * bs, bufs[slot], cb);
    }
    lock.lock();
  }
  cv.wait(lock, [&] { return inflight == 0; });
  lock.unlock();
  if (write) Check(disk.Flush(), "flush");
  double secs = Seconds(t0);
  if (failed) Die("an I/O failed");
  double iops = done / secs;
  d->reset();

  // The baseline: rbd bench on a twin clone of the same base, same job.
  std::string cmd = "rbd -c '" + ns.opts.conf_file + "' --id '" + ns.opts.client_id +
                    "' --keyring '" + ns.opts.keyring + "' bench --io-type " +
                    (write ? "write" : "read") + " --io-size " + std::to_string(bs) +
                    " --io-threads " + std::to_string(depth) + " --io-pattern " +
                    (seq ? "seq" : "rand") + " --io-total " +
                    std::to_string(seq ? size : std::min<uint64_t>(size, done * bs)) + " " +
                    ns.spec() + "/bench_ref 2>&1 | tail -1";
  FILE* f = popen(cmd.c_str(), "r");
  char line[512] = {0};
  if (!f || !std::fgets(line, sizeof line, f)) Die("rbd bench failed: " + cmd);
  pclose(f);
  const char* p = std::strstr(line, "ops/sec:");
  if (!p) Die(std::string("rbd bench said: ") + line);
  double base = std::atof(p + 8);
  std::printf("%-9s bs=%-7lu depth=%d  backend %8.0f IOPS  rbd bench %8.0f IOPS  ratio %.2f\n",
              rw.c_str(), static_cast<unsigned long>(bs), depth, iops, base, iops / base);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 3 && std::string(argv[1]) == "publish") {
    Publish(std::strtoull(argv[2], nullptr, 0));
    return 0;
  }
  if (argc >= 7 && std::string(argv[1]) == "io") {
    Io(std::strtoull(argv[2], nullptr, 0), argv[3], std::strtoull(argv[4], nullptr, 0),
       std::atoi(argv[5]), std::atof(argv[6]));
    return 0;
  }
  std::fprintf(stderr,
               "usage: rbd_disk_bench publish MIB | io MIB read|write|randread|randwrite BS "
               "DEPTH SECONDS\n");
  return 2;
}
