#include "cache/gc.h"

#include <dirent.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <unordered_map>
#include <unordered_set>

#include "blockstore/manifest.h"
#include "blockstore/mutex.h"
#include "blockstore/read_ahead.h"

namespace imgfs {
namespace {

void Progress(const GcOptions& o, const std::string& phase, uint64_t done, uint64_t total) {
  if (o.progress) o.progress(phase, done, total);
}

// Conversion files left in tmp/ by imports that died. Only called under the
// exclusive GC lock, when no import is running.
Status SweepTemp(Store& store, bool dry_run, GcReport* report) {
  std::string dir = store.tmp_dir();
  DIR* d = ::opendir(dir.c_str());
  if (!d) return Status::OK();
  std::vector<std::string> victims;
  while (dirent* e = ::readdir(d)) {
    std::string name = e->d_name;
    if (name == "." || name == "..") continue;
    victims.push_back(dir + "/" + name);
  }
  ::closedir(d);
  for (const auto& v : victims) {
    struct stat st;
    if (::stat(v.c_str(), &st) == 0)
      report->bytes_freed += static_cast<uint64_t>(st.st_blocks) * 512;
    if (!dry_run && ::unlink(v.c_str()) != 0 && errno != ENOENT) {
      return Status::FromErrno(errno, "remove " + v);
    }
    ++report->temp_files_removed;
  }
  return Status::OK();
}

// Removals in flight during a sweep: at most kSweepWindow, so a remote
// backend's round trips overlap (ChunkBackend::RemoveAsync).
constexpr size_t kSweepWindow = 32;
// Manifest reads in flight during the mark (ChunkStore::ForEachManifest).
constexpr size_t kReadWindow = 16;

class Removals {
 public:
  void Start() EXCLUDES(mu_) {
    MutexLock lock(mu_);
    while (in_flight_ >= kSweepWindow) cv_.Wait(mu_);
    ++in_flight_;
  }
  // An object already gone (removed by hand, or by another gc) frees nothing.
  void Done(const Result<uint64_t>& r) EXCLUDES(mu_) {
    MutexLock lock(mu_);
    if (r.ok()) {
      bytes_ += *r;
    } else if (!r.status().IsNotFound() && status_.ok()) {
      status_ = r.status();
    }
    ++done_;
    --in_flight_;
    cv_.NotifyAll();
  }
  void Wait() EXCLUDES(mu_) {
    MutexLock lock(mu_);
    while (in_flight_ != 0) cv_.Wait(mu_);
  }
  Status status() EXCLUDES(mu_) {
    MutexLock lock(mu_);
    return status_;
  }
  uint64_t done() EXCLUDES(mu_) {
    MutexLock lock(mu_);
    return done_;
  }
  uint64_t bytes() EXCLUDES(mu_) {
    MutexLock lock(mu_);
    return bytes_;
  }

 private:
  Mutex mu_;
  CondVar cv_;
  size_t in_flight_ GUARDED_BY(mu_) = 0;
  uint64_t done_ GUARDED_BY(mu_) = 0;
  uint64_t bytes_ GUARDED_BY(mu_) = 0;
  Status status_ GUARDED_BY(mu_);
};

// Removes the objects `ids` of `kind` through the chunk store (a dry run
// only takes their sizes), adding the bytes they held to the report. Checks
// that the GC lock is still held before each removal; on the first error
// stops sending more, waits for those in flight and returns it.
Status Sweep(Store& store, const GcOptions& o, const Store::GcLock& lock, ObjectKind kind,
             const std::vector<Id128>& ids, GcReport* report) {
  const std::string phase = kind == ObjectKind::kChunk ? "sweep" : "sweep manifests";
  if (o.dry_run) {
    // Only the sizes, kReadWindow stats in flight.
    return ReadAhead<Result<uint64_t>>(
        ids.size(), kReadWindow, [&](size_t i) { return store.chunks().StoredSize(kind, ids[i]); },
        [&](size_t i, Result<uint64_t> size) -> Status {
          if (size.ok()) {
            report->bytes_freed += *size;
          } else if (!size.status().IsNotFound()) {
            return size.status();
          }
          if (kind == ObjectKind::kChunk) Progress(o, phase, i + 1, ids.size());
          return Status::OK();
        });
  }
  Removals removals;
  Status status;
  for (const auto& id : ids) {
    status = removals.status();
    if (status.ok()) status = lock.Check().WithContext("gc stopped");
    if (!status.ok()) break;
    removals.Start();
    store.chunks().RemoveAsync(kind, id, [&removals](Result<uint64_t> r) { removals.Done(r); });
    if (kind == ObjectKind::kChunk) Progress(o, phase, removals.done(), ids.size());
  }
  removals.Wait();
  if (status.ok()) status = removals.status();
  report->bytes_freed += removals.bytes();
  if (kind == ObjectKind::kChunk) Progress(o, phase, removals.done(), ids.size());
  return status;
}

}  // namespace

Result<GcReport> CollectGarbage(Store& store, const GcOptions& o) {
  GcReport report;
  ASSIGN_OR_RETURN(auto lock, store.LockExclusive(o.waiting));
  const auto locked_at = std::chrono::steady_clock::now();
  // Every step that removes something first checks that the lock is still
  // held (a RADOS lease that could not be renewed stops gc).
  auto held = [&] { return lock->Check().WithContext("gc stopped"); };
  const int64_t now = store.Now();

  // 1. Images: unused for at least min_age, and not used by any disk.
  // Parents of every disk, read once; no disk can be created while we hold
  // the lock exclusively.
  std::unordered_set<ImageId> in_use;
  ASSIGN_OR_RETURN(auto disks, store.disks().List(""));
  auto infos = store.disks().InfoMany(disks);
  for (const auto& info : infos) {
    if (!info.ok()) {
      if (info.status().IsNotFound()) continue;
      return info.status();
    }
    if (info->parent) in_use.insert(*info->parent);
  }
  // Disks of other hosts sharing the chunk backend, from their use records
  // (this store's own records are brought in line with its disks first).
  RETURN_IF_ERROR(store.ReconcileUses(o.dry_run));
  ASSIGN_OR_RETURN(auto others, store.UsesByOtherStores());
  for (const auto& [id, users] : others) in_use.insert(id);

  // Publications in the disk backend (rbd bases); one with clones is a use.
  ASSIGN_OR_RETURN(auto published, store.disks().ListPublished());
  std::unordered_map<ImageId, const PublishedImage*> base_of;
  for (const auto& p : published) {
    if (p.in_progress) continue;  // a half-done publication is never a parent
    base_of[p.image] = &p;
    if (!p.clones.empty()) in_use.insert(p.image);
  }
  auto unpublished = [&](const ImageId& id) {
    auto it = base_of.find(id);
    if (it == base_of.end()) return;
    report.publications_removed.push_back({it->second->location, it->second->used_bytes});
    report.publication_bytes_freed += it->second->used_bytes;
  };

  ASSIGN_OR_RETURN(auto images, store.ListImages());
  std::vector<ImageId> live_images;
  for (const auto& r : images) {
    bool old_enough = now - r.last_used >= o.min_age_seconds;
    bool keep = in_use.count(r.id) || !old_enough || (o.keep_named && !r.names.empty());
    if (!keep && !o.dry_run) {
      RETURN_IF_ERROR(held());
      // Its uses were all found above, once for every image (under the
      // exclusive lock, no disk or use record can appear here meanwhile).
      Status s = store.RemoveUnusedImage(r);
      if (s.IsBusy()) {
        // A disk or clone appeared that the lists above did not show (e.g.
        // made by another host sharing the rbd pool): it is in use.
        spdlog::info("gc: keeping image {}: {}", r.id.Hex(), s.message());
        keep = true;
      } else {
        RETURN_IF_ERROR(s);
      }
    }
    if (keep) {
      live_images.push_back(r.id);
      continue;
    }
    report.images_removed.push_back(r);
    unpublished(r.id);
  }

  // Orphaned bases: published, but their image is gone from the store.
  {
    std::unordered_set<ImageId> known;
    for (const auto& r : images) known.insert(r.id);
    for (const auto& [id, p] : base_of) {
      if (known.count(id) || !p->clones.empty()) continue;
      if (!o.dry_run) {
        RETURN_IF_ERROR(held());
        Status s = store.disks().Unpublish(id);
        if (s.IsBusy()) {
          spdlog::info("gc: keeping {}: {}", p->location, s.message());
          continue;
        }
        if (!s.ok() && !s.IsNotFound()) return s;
      }
      unpublished(id);
    }
  }
  // Half-done publications whose publisher is gone.
  {
    ASSIGN_OR_RETURN(auto abandoned, store.disks().RemoveAbandonedPublications(o.dry_run));
    for (const auto& loc : abandoned) {
      uint64_t bytes = 0;
      for (const auto& p : published) {
        if (p.location == loc) bytes = p.used_bytes;
      }
      report.publications_removed.push_back({loc, bytes});
      report.publication_bytes_freed += bytes;
    }
  }

  // 2. Mark: every chunk of every live image. Stop before sweeping anything
  // if a live manifest cannot be read.
  std::unordered_set<ImageId> live_manifests(live_images.begin(), live_images.end());
  std::unordered_set<ChunkId> live_chunks;
  // The reads overlap (kReadWindow in flight: on rados their round trips,
  // on a directory the hashing of each manifest), used in order.
  RETURN_IF_ERROR(store.chunks().ForEachManifest(
      live_images, kReadWindow, [&](size_t i, Result<Manifest> m) -> Status {
        if (!m.ok()) {
          return m.status().WithContext(
              "gc stopped before sweeping: cannot read the manifest of "
              "live image " +
              live_images[i].Hex());
        }
        for (const auto& c : m->chunks) {
          if (!c.IsHole()) live_chunks.insert(c);
        }
        Progress(o, "mark", i + 1, live_images.size());
        return Status::OK();
      }));

  // 3. Sweep manifests and chunks nothing live references; their sizes come
  // from the backend's stat, not from reading them.
  std::vector<Id128> dead_manifests;
  RETURN_IF_ERROR(store.chunks().ListManifests([&](const ImageId& id) {
    if (!live_manifests.count(id)) dead_manifests.push_back(id);
    return Status::OK();
  }));
  std::vector<Id128> dead_chunks;
  RETURN_IF_ERROR(store.chunks().ListIds([&](const ChunkId& id) {
    if (!live_chunks.count(id)) dead_chunks.push_back(id);
    return Status::OK();
  }));
  RETURN_IF_ERROR(Sweep(store, o, *lock, ObjectKind::kManifest, dead_manifests, &report));
  report.manifests_removed += dead_manifests.size();
  RETURN_IF_ERROR(Sweep(store, o, *lock, ObjectKind::kChunk, dead_chunks, &report));
  report.chunks_removed += dead_chunks.size();

  // 4. Leftovers of interrupted imports in the temp area.
  RETURN_IF_ERROR(SweepTemp(store, o.dry_run, &report));
  spdlog::info("gc: held the GC lock for {:.3f} s",
               std::chrono::duration<double>(std::chrono::steady_clock::now() - locked_at).count());
  spdlog::info("gc: {} images, {} manifests, {} chunks, {} temp files, {} publications{}",
               report.images_removed.size(), report.manifests_removed, report.chunks_removed,
               report.temp_files_removed, report.publications_removed.size(),
               o.dry_run ? " (dry run)" : "");
  return report;
}

}  // namespace imgfs
