// Simulated power cuts (docs/architecture.md, "Power-cut tests"): a store
// driven through FaultInjectionFileIO, cut at every sync and at random calls,
// then opened again and checked: what was acknowledged as durable is there
// with the right bytes, nothing half-made is visible, fsck is clean.
//
// Reproduce a failure with IMGFS_TEST_SEED=<the printed seed>;
// IMGFS_POWER_CUTS=<n> changes how many random cuts each case makes.
#include <spdlog/spdlog.h>
#include <sys/mman.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <random>

#include "blockstore/fault_file_io.h"
#include "blockstore/file_util.h"
#include "blockstore/units.h"
#include "cache/fsck.h"
#include "cache/gc.h"
#include "cache/import.h"
#include "cache/store.h"
#include "cache/verify.h"
#include "tests/blockstore/disk_test_util.h"
#include "tests/cache/import_test_util.h"

using namespace imgfs;
using namespace imgfs::testing;
namespace fs = std::filesystem;
using Tear = FaultInjectionFileIO::Tear;

namespace {

constexpr uint64_t KiB = 1024;
constexpr size_t kSector = 512;
constexpr uint32_t kChunk = 4096;

// Quiet logs: every cut makes the code under test log its failed syncs.
struct QuietLogs {
  QuietLogs() : level(spdlog::get_level()) { spdlog::set_level(spdlog::level::off); }
  ~QuietLogs() { spdlog::set_level(level); }
  spdlog::level::level_enum level;
};

Bytes Pattern(uint64_t seed, size_t n, int zero_every = 0) {
  std::mt19937_64 rng(seed);
  Bytes b = RandomBytes(rng, n);
  if (zero_every > 0) {
    for (size_t c = 0; c < n / kChunk; c += zero_every) {
      std::fill(b.begin() + c * kChunk, b.begin() + (c + 1) * kChunk, 0);
    }
  }
  return b;
}


std::string ImageBytesProblem(Store& store, const ImageId& id, const Bytes& want) {
  auto reader = store.OpenImage(id);
  if (!reader.ok()) return "open: " + reader.status().ToString();
  if ((*reader)->size() != want.size()) return "size " + std::to_string((*reader)->size());
  Bytes got(want.size());
  Status s = (*reader)->Read(0, MutableByteView(got));
  if (!s.ok()) return "read: " + s.ToString();
  return Diff(got, want);
}

// fsck after a cut: damage is a failure; orphans (chunks or manifests of an
// import or a gc the cut stopped) are allowed: gc removes them.
void CheckFsck(Store& store) {
  auto report = CheckStore(store);
  REQUIRE(report.ok());
  for (const auto& p : report->problems) UNSCOPED_INFO("fsck: " << p);
  CHECK(report->problems.empty());
}

// A template store made once per case; each cut starts from a copy of it.
struct Template {
  TempDir dir;
  std::string store_path() const { return dir.path() + "/s"; }
  void CopyTo(const std::string& to) const {
    std::error_code ec;
    fs::remove_all(to, ec);
    fs::copy(store_path(), to, fs::copy_options::recursive);
  }
};

std::unique_ptr<Store> OpenStore(const std::string& path) {
  auto s = Store::Open(path);
  INFO(s.status().ToString());
  REQUIRE(s.ok());
  return std::move(s).value();
}

// The cut points of a run of `total` calls whose syncs are `syncs`: before
// and after every sync, and `randoms` random calls.
std::vector<uint64_t> CutPoints(uint64_t total, const std::vector<uint64_t>& syncs, int randoms,
                                std::mt19937_64& rng) {
  std::vector<uint64_t> out;
  for (uint64_t s : syncs) {
    out.push_back(s);
    out.push_back(s + 1);
  }
  for (int i = 0; i < randoms && total > 0; ++i) out.push_back(1 + rng() % (total + 1));
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

Tear PickTear(std::mt19937_64& rng) {
  switch (rng() % 4) {
    case 0:
      return Tear::kDropAll;
    case 1:
      return Tear::kKeepAll;
    default:
      return Tear::kRandom;
  }
}

// Runs `workload` (which opens the store at `path` itself: a cut may come
// while it opens) once without a cut, to count its calls and find its syncs,
// then once per cut point on a fresh copy of `tpl`, and checks with `check`
// what each cut leaves. Returns how many cuts it made.
template <typename Run>
int CutEverywhere(const Template& tpl, const std::string& path, uint64_t seed, int workloads,
                  const std::function<Run()>& fresh,
                  const std::function<void(uint64_t wseed, Run* run)>& workload,
                  const std::function<void(Store&, const Run&)>& check) {
  std::mt19937_64 rng(seed);
  const int per_run = EnvInt("IMGFS_POWER_CUTS", 6);
  int cuts = 0;
  for (int w = 0; w < workloads; ++w) {
    uint64_t wseed = rng();
    tpl.CopyTo(path);
    uint64_t total;
    std::vector<uint64_t> syncs;
    {
      FaultInjectionFileIO io(path);
      ScopedFileIO scope(&io);
      Run run = fresh();
      workload(wseed, &run);
      total = io.calls();
      syncs = io.sync_calls();
    }
    for (uint64_t at : CutPoints(total, syncs, per_run, rng)) {
      Tear tear = PickTear(rng);
      uint64_t cut_seed = rng();
      INFO("seed " << seed << ", workload " << w << ", cut before call " << at << " of " << total
                   << ", tear " << static_cast<int>(tear));
      tpl.CopyTo(path);
      FaultInjectionFileIO io(path);
      ScopedFileIO scope(&io);
      io.CutBeforeCall(at, tear, cut_seed);
      Run run = fresh();
      workload(wseed, &run);
      io.CutNow(tear, cut_seed);
      REQUIRE(io.Restore().ok());
      check(*OpenStore(path), run);
      ++cuts;
    }
  }
  return cuts;
}

// ---------------------------------------------------------------------------
// Disks: writes, copy-ups, discards, grows, renames, reopens.

constexpr uint64_t kImageBytes = 256 * KiB;

// The disk workload. `cur` and `candidates` follow it: `cur` the disk as
// the code under test was told it is; `acked` what a flush made durable;
// `candidates` every state since (any sector may show any of them after a
// cut); `name` and `maybe_name` where the disk is.
struct DiskRun {
  Bytes cur;
  std::vector<Bytes> candidates;
  std::string name = "d0";
  std::string maybe_name;
  uint64_t acked_size = 0;
};

void DiskWorkload(Store& store, uint64_t seed, DiskRun* run) {
  std::mt19937_64 rng(seed);
  DiskBackend& disks = store.disks();
  auto open = [&]() -> std::unique_ptr<Disk> {
    auto d = disks.Open(DiskRef{"vm", run->name}, OpenMode::kReadWrite);
    if (!d.ok()) return nullptr;
    return std::move(d).value();
  };
  std::unique_ptr<Disk> disk = open();
  if (!disk) return;
  for (int step = 0; step < 14; ++step) {
    int op = static_cast<int>(rng() % 10);
    uint64_t size = run->cur.size();
    if (op <= 3) {  // write: sector-aligned or not, within one chunk or across several
      uint64_t len = 1 + rng() % (3 * kChunk);
      if (rng() % 2) len = (len + kSector - 1) / kSector * kSector;
      uint64_t off = rng() % (size - len);
      if (rng() % 2) off = off / kSector * kSector;
      Bytes data = RandomBytes(rng, len);
      Bytes next = run->cur;
      std::copy(data.begin(), data.end(), next.begin() + off);
      run->candidates.push_back(next);
      if (!disk->Write(off, ByteView(data)).ok()) return;
      run->cur = std::move(next);
    } else if (op == 4) {  // discard
      uint64_t len = 1 + rng() % (2 * kChunk);
      uint64_t off = rng() % (size - len);
      Bytes next = run->cur;
      std::fill(next.begin() + off, next.begin() + off + len, 0);
      run->candidates.push_back(next);
      if (!disk->Discard(off, len).ok()) return;
      run->cur = std::move(next);
    } else if (op <= 6) {  // flush: acknowledges everything before it
      if (!disk->Flush().ok()) return;
      run->candidates = {run->cur};
      run->acked_size = run->cur.size();
    } else if (op == 7) {  // grow (durable when it returns)
      Bytes next = run->cur;
      next.resize(size + (1 + rng() % 3) * kChunk + (rng() % 2) * kSector, 0);
      run->candidates.push_back(next);
      if (!disk->Resize(next.size(), false).ok()) return;
      run->cur = std::move(next);
      for (auto& c : run->candidates) c.resize(run->cur.size(), 0);
      run->acked_size = run->cur.size();
    } else if (op == 8) {  // rename (closed first: the backend refuses an open disk)
      if (!disk->Flush().ok()) return;
      run->candidates = {run->cur};
      run->acked_size = run->cur.size();
      disk.reset();
      std::string to = run->name == "d0" ? "d1" : "d0";
      run->maybe_name = to;
      if (!disks.Rename(DiskRef{"vm", run->name}, DiskRef{"vm", to}).ok()) return;
      run->name = to;
      run->maybe_name.clear();
      if (!(disk = open())) return;
    } else {         // close without a flush, and open again
      disk.reset();  // closing flushes
      if (!(disk = open())) return;
    }
  }
  if (disk->Flush().ok()) {
    run->candidates = {run->cur};
    run->acked_size = run->cur.size();
  }
}

void CheckDisk(Store& store, const DiskRun& run) {
  auto d = store.disks().Open(DiskRef{"vm", run.name}, OpenMode::kReadWrite);
  if (!d.ok() && d.status().IsNotFound() && !run.maybe_name.empty()) {
    d = store.disks().Open(DiskRef{"vm", run.maybe_name}, OpenMode::kReadWrite);
  }
  INFO("open after the cut: " << d.status().ToString());
  REQUIRE(d.ok());
  Disk& disk = **d;
  uint64_t size = disk.size();
  CHECK(size >= run.acked_size);
  bool size_known = false;
  for (const auto& c : run.candidates) size_known |= c.size() == size;
  CHECK(size_known);
  Bytes got(size);
  Status s = disk.Read(0, MutableByteView(got));
  INFO("read after the cut: " << s.ToString());
  REQUIRE(s.ok());
  for (uint64_t off = 0; off < size; off += kSector) {
    uint64_t len = std::min<uint64_t>(kSector, size - off);
    bool match = false;
    for (const auto& c : run.candidates) {
      Bytes want(len, 0);
      if (off < c.size()) {
        std::copy(c.begin() + off, c.begin() + std::min<uint64_t>(c.size(), off + len),
                  want.begin());
      }
      if (std::equal(want.begin(), want.end(), got.begin() + off)) {
        match = true;
        break;
      }
    }
    INFO("sector at " << off << " matches no acknowledged or later state");
    REQUIRE(match);
  }
  // Written again and flushed, it must read back (the cut left it usable).
  Bytes one(kSector, 0x5a);
  REQUIRE(disk.Write(0, ByteView(one)).ok());
  REQUIRE(disk.Flush().ok());
}

// Fills `tpl` for the disk cases: `image` imported as "base", and disk vm/d0
// made from it, of `size` (the image's when unset); `more` then runs on the
// store.
void MakeDiskTemplate(const Template& tpl, const Bytes& image, std::optional<uint64_t> size,
                      const std::function<void(Store&)>& more = nullptr) {
  StoreConfig c;
  c.chunk_size = kChunk;
  REQUIRE(Store::Init(tpl.store_path(), c).ok());
  auto store = OpenStore(tpl.store_path());
  auto r = ImportBytes(*store, image, {"base"});
  REQUIRE(r.ok());
  DiskCreateOptions o;
  o.image = r->id;
  o.size = size;
  REQUIRE(store->CreateDisk(DiskRef{"vm", "d0"}, o).ok());
  if (more) more(*store);
}

// DiskWorkload under power cuts on copies of `tpl`, whose disk vm/d0 reads
// `start`; after each cut CheckDisk, fsck and `more` (given the store's path).
int CutDiskWorkloads(const Template& tpl, const Bytes& start, uint64_t seed, int workloads,
                     const std::function<void(const std::string&, const DiskRun&)>& more =
                         nullptr) {
  TempDir work;
  const std::string path = work.path() + "/s";
  return CutEverywhere<DiskRun>(
      tpl, path, seed, workloads,
      [&] {
        DiskRun run;
        run.cur = start;
        run.candidates = {start};
        run.acked_size = start.size();
        return run;
      },
      [&](uint64_t wseed, DiskRun* run) {
        auto store = Store::Open(path);
        if (store.ok()) DiskWorkload(**store, wseed, run);
      },
      [&](Store& store, const DiskRun& run) {
        CheckDisk(store, run);
        CheckFsck(store);
        if (more) more(path, run);
      });
}

}  // namespace

TEST_CASE(
    "power cuts during disk writes, copy-ups, discards, grows and renames keep what was "
    "flushed",
    "[power_cut]") {
  QuietLogs quiet;
  const uint64_t seed = TestSeed();
  Template tpl;
  Bytes image = Pattern(seed ^ 1, kImageBytes, 5);
  MakeDiskTemplate(tpl, image, std::nullopt);
  int cuts = CutDiskWorkloads(tpl, image, seed, 6);
  WARN("disk workloads: " << cuts << " power cuts, seed " << seed);
  CHECK(cuts >= 60);
}

// The allocation map: a version 1 map upgraded at the first writable open
// (a new file, synced, renamed over the old one), then copy-ups spread over
// two of its checksummed 512-byte pages, so that a torn write of a 4 KiB
// block of the map keeps some pages old and some new.
TEST_CASE("power cuts during an allocation map's upgrade and its page writes keep what was "
          "flushed",
          "[power_cut]") {
  QuietLogs quiet;
  const uint64_t seed = TestSeed();
  Template tpl;
  Bytes image = Pattern(seed ^ 3, kImageBytes, 5);
  // 4160 chunks of 4 KiB: pages 0 and 1 of the map (4032 chunks a page).
  const uint64_t size = 16640 * KiB;
  const uint64_t owned[] = {3, 4100};
  Bytes start = image;
  start.resize(size, 0);
  MakeDiskTemplate(tpl, image, size, [&](Store& store) {
    auto d = store.disks().Open(DiskRef{"vm", "d0"}, OpenMode::kReadWrite);
    REQUIRE(d.ok());
    Bytes x(kChunk, 0x77);
    for (uint64_t c : owned) {
      REQUIRE((*d)->Write(c * kChunk, ByteView(x)).ok());
      std::fill_n(start.begin() + c * kChunk, kChunk, 0x77);
    }
  });
  {
    // Make the map version 1: the same bits laid out without checksums.
    std::string map_path = tpl.store_path() + "/disks/vm/d0/bitmap";
    auto map = ReadFile(map_path);
    REQUIRE(map.ok());
    std::string v1 = map->substr(0, 4096);
    v1[8] = 1;
    std::string bits(4096, '\0');
    for (uint64_t c : owned) bits[c / 8] = static_cast<char>(bits[c / 8] | 1 << (c % 8));
    REQUIRE(WriteFileAtomic(map_path, v1 + bits).ok());
  }
  int cuts = CutDiskWorkloads(tpl, start, seed, 2, [](const std::string& path, const DiskRun& run) {
    auto map = ReadFile(path + "/disks/vm/" + run.name + "/bitmap");
    if (!map.ok() && !run.maybe_name.empty()) {
      map = ReadFile(path + "/disks/vm/" + run.maybe_name + "/bitmap");
    }
    REQUIRE(map.ok());
    CHECK((*map)[8] == 2);  // CheckDisk opened it for writing: upgraded
  });
  WARN("allocation map workloads: " << cuts << " power cuts, seed " << seed);
  CHECK(cuts >= 20);
}

// ---------------------------------------------------------------------------
// Images: imports (with dedup against earlier ones), names, removals and gc.

namespace {

struct ImageRun {
  // Image contents by seed; acked: imports that returned; removed: images
  // whose removal returned; maybe: the one in flight at the cut.
  std::map<uint64_t, ImageId> acked;
  std::map<uint64_t, ImageId> removed;
  std::map<uint64_t, ImageId> removed_acked;
  std::optional<uint64_t> maybe;
};

Bytes ImageData(uint64_t seed) {
  // Half of each image is shared with the image of seed - 1 (dedup hits).
  Bytes a = Pattern(seed, 32 * KiB, 3);
  Bytes b = Pattern(seed + 1000, 32 * KiB);
  if (seed > 0) b = Pattern(seed - 1, 32 * KiB, 3);
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

void ImageWorkload(Store& store, uint64_t seed, int64_t* now, ImageRun* run) {
  std::mt19937_64 rng(seed);
  for (uint64_t i = 1; i <= 6; ++i) {
    int op = static_cast<int>(rng() % 4);
    if (op <= 1 || run->acked.empty()) {
      run->maybe = i;
      auto r = ImportBytes(store, ImageData(i), {"img" + std::to_string(i)});
      if (!r.ok()) return;
      run->acked[i] = r->id;
      run->maybe.reset();
    } else if (op == 2) {
      auto it = run->acked.begin();
      std::advance(it, rng() % run->acked.size());
      uint64_t k = it->first;
      ImageId id = it->second;
      run->acked.erase(it);
      run->removed[k] = id;  // maybe removed from here on
      if (!store.RemoveImage(id).ok()) return;
      run->removed_acked[k] = id;
    } else {
      *now += 7200;
      GcOptions o;
      o.min_age_seconds = 3600;
      o.keep_named = rng() % 2;
      // Until gc returns, any image may be gone.
      std::map<uint64_t, ImageId> at_risk;
      at_risk.swap(run->acked);
      run->removed.insert(at_risk.begin(), at_risk.end());
      auto r = CollectGarbage(store, o);
      if (!r.ok()) return;
      for (const auto& [k, id] : at_risk) {
        bool gone = false;
        for (const auto& img : r->images_removed) gone |= img.id == id;
        if (gone) {
          run->removed_acked[k] = id;
        } else {
          run->removed.erase(k);
          run->acked[k] = id;
        }
      }
    }
  }
}

}  // namespace

TEST_CASE("power cuts during imports, image removals and gc never show half an image",
          "[power_cut]") {
  QuietLogs quiet;
  const uint64_t seed = TestSeed();
  Template tpl;
  {
    StoreConfig c;
    c.chunk_size = kChunk;
    REQUIRE(Store::Init(tpl.store_path(), c).ok());
  }
  TempDir work;
  const std::string path = work.path() + "/s";
  int cuts = CutEverywhere<ImageRun>(
      tpl, path, seed, 4, [] { return ImageRun{}; },
      [&](uint64_t wseed, ImageRun* run) {
        int64_t now = 1'000'000;
        auto s = Store::Open(path, [&now] { return now; });
        if (s.ok()) ImageWorkload(**s, wseed, &now, run);
      },
      [&](Store& store, const ImageRun& run) {
        for (const auto& [k, id] : run.acked) {
          INFO("image " << k << ", acknowledged");
          auto rec = store.GetImage(id);
          INFO(rec.status().ToString());
          REQUIRE(rec.ok());
          CHECK(ImageBytesProblem(store, id, ImageData(k)) == "");
        }
        for (const auto& [k, id] : run.removed) {
          // Removed or not (the cut may have come first), never half there.
          if (store.GetImage(id).ok()) {
            INFO("image " << k << ", removal in flight");
            CHECK(ImageBytesProblem(store, id, ImageData(k)) == "");
          }
        }
        auto all = store.ListImages();
        INFO(all.status().ToString());
        REQUIRE(all.ok());
        for (const auto& rec : *all) {
          auto v = VerifyImage(store, rec.id);
          REQUIRE(v.ok());
          INFO("visible image " << rec.id.Hex());
          CHECK(v->problems.empty());
        }
        for (const auto& [k, id] : run.removed_acked) {
          INFO("image " << k << ", removal acknowledged");
          CHECK(store.GetImage(id).status().IsNotFound());
        }
        if (run.maybe) {
          auto id = store.ResolveImage("img" + std::to_string(*run.maybe));
          if (id.ok()) CHECK(ImageBytesProblem(store, *id, ImageData(*run.maybe)) == "");
        }
        CheckFsck(store);
        // The store takes the same imports again after the cut.
        for (uint64_t k = 1; k <= 2; ++k) {
          auto r = ImportBytes(store, ImageData(k));
          INFO("import after the cut: " << r.status().ToString());
          CHECK(r.ok());
        }
      });
  WARN("image workloads: " << cuts << " power cuts, seed " << seed);
  CHECK(cuts >= 40);
}
