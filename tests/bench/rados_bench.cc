// Chunk store throughput over one backend, run by tools/bench-rados.sh, which
// runs it for rados and dir and puts `rados bench` beside it.
//
//   rados_bench SPEC CHUNK_SIZE MIB [WINDOW]
//
// SPEC is dir:PATH or rados:POOL[/NS] (Ceph options from IMGFS_CEPH_CONF,
// IMGFS_CEPH_ID, IMGFS_CEPH_KEYRING). On MIB of random data it measures:
//   import-sync   ChunkStore::Put of one chunk after another, then Sync
//   import-async  ChunkStore::PutAsync with WINDOW chunks in flight, then Sync
//   reimport      the same bytes again with PutAsync (every chunk a dedup hit)
//   read          ImageReader::Read in 1 MiB requests, one after another (as
//                 the mount reads _base/<id>), with the chunk cache off
// and prints one "name MB/s" line each (MB = 10^6 bytes, as rados bench).
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <random>
#include <string>

#include "blockstore/chunk_store.h"
#include "blockstore/image.h"
#include "blockstore/manifest.h"

using namespace imgfs;
using Clock = std::chrono::steady_clock;

namespace {

void Die(const std::string& what) {
  std::fprintf(stderr, "rados_bench: %s\n", what.c_str());
  std::exit(1);
}

double Seconds(Clock::time_point since) {
  return std::chrono::duration<double>(Clock::now() - since).count();
}

Bytes Random(size_t n, uint64_t seed) {
  Bytes b(n);
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i + 8 <= n; i += 8) {
    uint64_t v = rng();
    std::memcpy(b.data() + i, &v, 8);
  }
  return b;
}

std::string Env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

void Report(const char* name, size_t bytes, double secs) {
  std::printf("%-13s %9.1f MB/s\n", name, static_cast<double>(bytes) / 1e6 / secs);
  std::fflush(stdout);
}

// Puts every chunk of `data` with at most `window` in flight; fills `m`.
void PutAll(ChunkStore& store, const Bytes& data, uint32_t cs, size_t window, Manifest* m) {
  size_t n = (data.size() + cs - 1) / cs;
  m->size = data.size();
  m->chunk_size = cs;
  m->chunks.assign(n, ChunkId{});
  std::mutex mu;
  std::condition_variable cv;
  size_t in_flight = 0;
  std::string error;
  for (size_t i = 0; i < n; ++i) {
    {
      std::unique_lock lock(mu);
      cv.wait(lock, [&] { return in_flight < window; });
      if (!error.empty()) Die(error);
      ++in_flight;
    }
    ByteView piece(data.data() + i * cs, std::min<size_t>(cs, data.size() - i * cs));
    store.PutAsync(piece, [&, i](Result<ChunkStore::PutResult> r) {
      std::lock_guard lock(mu);
      if (r.ok()) {
        m->chunks[i] = r->id;
      } else if (error.empty()) {
        error = r.status().ToString();
      }
      --in_flight;
      cv.notify_all();
    });
  }
  std::unique_lock lock(mu);
  cv.wait(lock, [&] { return in_flight == 0; });
  if (!error.empty()) Die(error);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 4) Die("usage: rados_bench SPEC CHUNK_SIZE MIB [WINDOW]");
  std::string spec = argv[1];
  uint32_t cs = static_cast<uint32_t>(std::strtoul(argv[2], nullptr, 10));
  size_t bytes = std::strtoull(argv[3], nullptr, 10) << 20;
  size_t window = argc > 4 ? std::strtoul(argv[4], nullptr, 10) : 16;
  CephOptions ceph;
  ceph.conf_file = Env("IMGFS_CEPH_CONF");
  ceph.client_id = Env("IMGFS_CEPH_ID");
  ceph.keyring = Env("IMGFS_CEPH_KEYRING");
  auto backend = CreateChunkBackend(spec, &ceph);
  if (!backend.ok()) Die(backend.status().ToString());
  auto store = std::make_shared<ChunkStore>(*backend, cs, /*cache_bytes=*/0);

  Bytes sync_data = Random(bytes, 1);
  auto t0 = Clock::now();
  for (size_t off = 0; off < bytes; off += cs) {
    auto r = store->Put(ByteView(sync_data.data() + off, std::min<size_t>(cs, bytes - off)));
    if (!r.ok()) Die(r.status().ToString());
  }
  if (Status s = store->Sync(); !s.ok()) Die(s.ToString());
  Report("import-sync", bytes, Seconds(t0));
  sync_data = Bytes();

  Bytes data = Random(bytes, 2);
  Manifest m;
  t0 = Clock::now();
  PutAll(*store, data, cs, window, &m);
  if (Status s = store->Sync(); !s.ok()) Die(s.ToString());
  Report("import-async", bytes, Seconds(t0));

  Manifest again;
  t0 = Clock::now();
  PutAll(*store, data, cs, window, &again);
  Report("reimport", bytes, Seconds(t0));
  if (again.Id() != m.Id()) Die("re-import gave another image");

  ImageReader reader(store, m.Id(), m);
  Bytes buf(1 << 20);
  t0 = Clock::now();
  for (size_t off = 0; off < bytes; off += buf.size()) {
    if (Status s = reader.Read(off, buf); !s.ok()) Die(s.ToString());
    if (std::memcmp(buf.data(), data.data() + off, std::min(buf.size(), bytes - off)) != 0) {
      Die("read back other bytes");
    }
  }
  Report("read", bytes, Seconds(t0));
  return 0;
}
