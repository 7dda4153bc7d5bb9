// imgfs init | stats | fsck | gc
#include <climits>
#include <cstdlib>
#include <iostream>

#include "blockstore/units.h"
#include "cache/fsck.h"
#include "cache/gc.h"
#include "tools/cli.h"
#include "tools/metrics_export.h"
#include "tools/supervisor.h"

namespace imgfs::cli {

Result<std::unique_ptr<Store>> OpenStore(const GlobalOptions& g) {
  return Store::Open(StorePath(g));
}

namespace {

struct InitArgs {
  std::string chunk_size = "64K";
  std::string chunks = "dir";
  std::string disks = "local";
  std::string ceph_conf, ceph_id, keyring;
  int ceph_timeout = 20;
};

Outcome RunInit(const GlobalOptions& g, const InitArgs& a) {
  StoreConfig c;
  auto cs = ParseSize(a.chunk_size);
  if (!cs.ok()) return {cs.status()};
  if (*cs > kMaxChunkSize || *cs < kMinChunkSize) {
    return {Status::InvalidArgument("chunk size " + a.chunk_size +
                                    " is out of range: use a power of two from 4K to 4M")};
  }
  c.chunk_size = static_cast<uint32_t>(*cs);
  c.chunks = a.chunks;
  c.disks = a.disks;
  c.ceph.conf_file = a.ceph_conf;
  c.ceph.client_id = a.ceph_id;
  c.ceph.keyring = a.keyring;
  if (a.ceph_timeout <= 0) {
    return {Status::InvalidArgument("--ceph-timeout must be a positive number of seconds")};
  }
  c.ceph.timeout_seconds = a.ceph_timeout;
  std::string path = StorePath(g);
  // Nothing is created unless the backends' targets work (rbd: the cluster,
  // the key and the pool).
  Status s = Store::Init(path, c);
  if (!s.ok()) return {s};
  if (g.json) {
    PrintJson(
        {{"store", path}, {"chunk_size", c.chunk_size}, {"chunks", c.chunks}, {"disks", c.disks}});
  } else if (!g.quiet) {
    std::cout << "store " << path << " ready (chunk size " << FormatSize(c.chunk_size)
              << ", chunks " << c.chunks << ", disks " << c.disks << ")\n";
  }
  return {};
}

// The store's figures: what its images hold and what that costs.
Outcome RunStoreStats(const GlobalOptions& g) {
  auto store = OpenStore(g);
  if (!store.ok()) return {store.status()};
  Store& st = **store;
  auto images = st.ListImages();
  if (!images.ok()) return {images.status()};
  uint64_t logical = 0, data = 0;
  for (const auto& r : *images) {
    logical += r.size;
    data += r.data_bytes;
  }
  uint64_t chunks = 0;
  Status s = st.chunks().ListIds([&](const ChunkId&) {
    ++chunks;
    return Status::OK();
  });
  if (!s.ok()) return {s};
  // An upper bound: the last chunk of an image may be short.
  uint64_t chunk_bytes = chunks * st.config().chunk_size;
  auto disks = st.disks().List("");
  if (!disks.ok()) return {disks.status()};
  uint64_t disk_bytes = 0, disk_owned = 0;
  for (const DiskRef& ref : *disks) {
    auto info = st.disks().Info(ref);
    if (!info.ok()) continue;  // removed meanwhile
    disk_bytes += info->size;
    disk_owned += info->owned_bytes;
  }
  double dedup = chunk_bytes > 0 ? static_cast<double>(data) / static_cast<double>(chunk_bytes) : 0;
  auto chunk_space = st.backend().Space();
  auto disk_space = st.disks().Space();
  auto space_json = [](const Result<SpaceInfo>& sp) {
    if (!sp.ok()) return nlohmann::json(nullptr);
    return nlohmann::json{{"capacity_bytes", sp->capacity_bytes},
                          {"available_bytes", sp->available_bytes}};
  };
  // The limit of a disk made from an image (blank disks' may be higher).
  auto limit = st.disks().MaxDiskSize(st.config().chunk_size);
  if (g.json) {
    nlohmann::json j = {{"store", st.path()},
                        {"chunk_size", st.config().chunk_size},
                        {"images", images->size()},
                        {"image_bytes", logical},
                        {"image_data_bytes", data},
                        {"chunks", chunks},
                        {"chunk_bytes_max", chunk_bytes},
                        {"dedup_ratio", dedup},
                        {"disks", disks->size()},
                        {"disk_bytes", disk_bytes},
                        {"disk_owned_bytes", disk_owned},
                        {"chunk_backend", {{"kind", st.config().chunks}}},
                        {"disk_backend", {{"kind", st.config().disks}}}};
    j["chunk_backend"]["space"] = space_json(chunk_space);
    j["disk_backend"]["space"] = space_json(disk_space);
    if (chunk_space.ok()) {  // the keys of earlier versions
      j["capacity_bytes"] = chunk_space->capacity_bytes;
      j["available_bytes"] = chunk_space->available_bytes;
    }
    if (limit.ok()) j["max_disk_bytes"] = limit->max_bytes;
    PrintJson(j);
    return {};
  }
  std::cout << "store:         " << st.path() << " (chunk size "
            << FormatSize(st.config().chunk_size) << ")\n"
            << "images:        " << images->size() << " (" << FormatSizeHuman(logical)
            << " virtual, " << FormatSizeHuman(data) << " of data)\n"
            << "chunks:        " << chunks << " (at most " << FormatSizeHuman(chunk_bytes) << ")\n";
  if (chunk_bytes > 0) {
    std::printf("dedup ratio:   %.2f (image data / stored chunks, at least)\n", dedup);
  }
  std::cout << "disks:         " << disks->size() << " (" << FormatSizeHuman(disk_bytes)
            << " virtual, " << FormatSizeHuman(disk_owned) << " written by the disks)\n";
  auto space_line = [](const std::string& what, const std::string& kind,
                       const Result<SpaceInfo>& sp) {
    std::cout << what << kind;
    if (sp.ok()) {
      std::cout << ": " << FormatSizeHuman(sp->available_bytes) << " free of "
                << FormatSizeHuman(sp->capacity_bytes);
    }
    std::cout << "\n";
  };
  space_line("chunk backend: ", st.config().chunks, chunk_space);
  space_line("disk backend:  ", st.config().disks, disk_space);
  if (limit.ok()) {
    std::cout << "largest disk:  " << FormatSizeExact(limit->max_bytes) << " (" << limit->reason
              << ")\n";
  }
  return {};
}

// A running mount's counters: the supervisor's, then its server's.
Outcome RunMountStats(const GlobalOptions& g, const std::string& mount) {
  char buf[PATH_MAX];
  if (!realpath(mount.c_str(), buf)) return {Status::FromErrno(errno, "mount point " + mount)};
  std::string mountpoint = buf;
  auto answer = AskSupervisor(mountpoint, "status");
  if (!answer.ok()) return {answer.status()};
  if (!answer->starts_with("ok ")) {
    return {Status::IOError("the supervisor of " + mountpoint + " answered: " + *answer)};
  }
  auto sup = nlohmann::json::parse(answer->substr(3), nullptr, false);
  if (sup.is_discarded()) return {Status::IOError("the supervisor's answer is not JSON")};
  pid_t server = sup.value("server_pid", 0);
  if (server <= 0 || sup.value("state", "") != "serving") {
    return {Status::Unavailable("no server serves " + mountpoint + " (state " +
                                sup.value("state", "?") + ")")};
  }
  auto text = AskServer(server, "json");
  if (!text.ok()) return {text.status()};
  auto j = nlohmann::json::parse(*text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return {Status::IOError("server pid " + std::to_string(server) + " answered no JSON")};
  }
  // The supervisor's figures are current; the server's copy is from its start.
  for (const char* k : {"supervisor_pid", "server_pid", "restarts", "upgrades", "state"}) {
    if (sup.contains(k)) j[k] = sup[k];
  }
  if (g.json) {
    PrintJson(j);
    return {};
  }
  std::cout << "mount:       " << mountpoint << " (" << j.value("state", "") << ", server pid "
            << j.value("server_pid", 0) << ", supervisor pid " << j.value("supervisor_pid", 0)
            << ")\n"
            << "restarts:    " << j.value("restarts", 0) << "\n"
            << "upgrades:    " << j.value("upgrades", 0) << "\n";
  if (j.contains("cache")) {
    const auto& c = j["cache"];
    std::cout << "chunk cache: " << FormatSizeHuman(c.value("used_bytes", uint64_t{0})) << " of "
              << FormatSizeHuman(c.value("capacity_bytes", uint64_t{0})) << ", "
              << c.value("hits", uint64_t{0}) << " hits, " << c.value("misses", uint64_t{0})
              << " misses, " << c.value("evictions", uint64_t{0}) << " evictions, "
              << c.value("verify_failures", uint64_t{0}) << " verification failures\n";
  }
  for (const auto& d : j.value("disks", nlohmann::json::array())) {
    auto n = [&](const char* k) { return d.value(k, uint64_t{0}); };
    std::cout << "disk " << d.value("instance", "") << "/" << d.value("disk", "") << ": "
              << n("reads") << " reads (" << FormatSizeHuman(n("read_bytes")) << "), "
              << n("writes") << " writes (" << FormatSizeHuman(n("write_bytes")) << "), "
              << n("flushes") << " flushes, " << n("discards") << " discards, "
              << n("read_errors") + n("write_errors") + n("flush_errors") + n("discard_errors")
              << " errors, " << n("lock_acquisitions") << " lock acquisitions, " << n("lock_losses")
              << " lock losses\n";
  }
  return {};
}

struct GcArgs {
  std::string min_age = "24h";
  bool dry_run = false;
  bool keep_named = false;
};

Outcome RunGc(const GlobalOptions& g, const GcArgs& a) {
  auto age = ParseDuration(a.min_age);
  if (!age.ok()) return {age.status()};
  auto store = OpenStore(g);
  if (!store.ok()) return {store.status()};
  GcOptions o;
  o.min_age_seconds = age->count();
  o.dry_run = a.dry_run;
  o.keep_named = a.keep_named;
  // One bar per phase (mark: images read; sweep: objects removed).
  std::unique_ptr<Progress> bar;
  std::string phase;
  if (ShowProgress(g)) {
    o.progress = [&](const std::string& p, uint64_t done, uint64_t total) {
      if (!bar || p != phase) {
        if (bar) bar->Finish();
        phase = p;
        bar = std::make_unique<Progress>(true, "gc " + p, total, Progress::Unit::kCount);
      }
      bar->Update(done);
    };
  }
  if (!g.quiet) {
    o.waiting = [] {
      std::cerr << "imgfs: gc: waiting for imports and disk creations to finish (on this host, "
                   "or on any host sharing a rados store)\n";
    };
  }
  auto r = CollectGarbage(**store, o);
  if (bar) bar->Finish();
  if (!r.ok()) return {r.status()};
  if (g.json) {
    nlohmann::json imgs = nlohmann::json::array();
    for (const auto& i : r->images_removed) {
      imgs.push_back(
          {{"id", i.id.Hex()}, {"size", i.size}, {"names", i.names}, {"last_used", i.last_used}});
    }
    nlohmann::json pubs = nlohmann::json::array();
    for (const auto& p : r->publications_removed) {
      pubs.push_back({{"location", p.location}, {"used_bytes", p.used_bytes}});
    }
    PrintJson({{"dry_run", a.dry_run},
               {"images", imgs},
               {"manifests", r->manifests_removed},
               {"chunks", r->chunks_removed},
               {"temp_files", r->temp_files_removed},
               {"bytes_freed", r->bytes_freed},
               {"published", pubs},
               {"published_bytes_freed", r->publication_bytes_freed}});
    return {};
  }
  const char* verb = a.dry_run ? "would remove" : "removed";
  for (const auto& i : r->images_removed) {
    std::cout << verb << " image " << i.id.Hex();
    if (!i.names.empty()) {
      std::cout << " (";
      for (size_t k = 0; k < i.names.size(); ++k) std::cout << (k ? ", " : "") << i.names[k];
      std::cout << ")";
    }
    std::cout << "\n";
  }
  for (const auto& p : r->publications_removed) {
    std::cout << verb << " published image " << p.location << " (" << FormatSizeHuman(p.used_bytes)
              << " used)\n";
  }
  std::cout << verb << " " << r->images_removed.size() << " images, " << r->manifests_removed
            << " manifests, " << r->chunks_removed << " chunks, " << r->temp_files_removed
            << " temp files: " << FormatSizeHuman(r->bytes_freed)
            << (a.dry_run ? " would be freed\n" : " freed\n");
  if (!r->publications_removed.empty()) {
    std::cout << verb << " " << r->publications_removed.size()
              << " published images: " << FormatSizeHuman(r->publication_bytes_freed)
              << (a.dry_run ? " would be freed" : " freed") << " in the Ceph pool\n";
  }
  return {};
}

// Exit status: 0 clean, 1 problems found, 3 could not check.
Outcome RunFsck(const GlobalOptions& g) {
  auto store = OpenStore(g);
  if (!store.ok()) return {store.status(), 3};
  auto r = CheckStore(**store);
  if (!r.ok()) return {r.status().WithContext("fsck could not check the store"), 3};
  if (g.json) {
    PrintJson({{"clean", r->clean()},
               {"images", r->images},
               {"manifests", r->manifests},
               {"chunks", r->chunks},
               {"disks", r->disks},
               {"disks_parent_elsewhere", r->disks_parent_elsewhere},
               {"names", r->names},
               {"problems", r->problems},
               {"orphans", r->orphans}});
  } else {
    for (const auto& p : r->problems) std::cout << "problem: " << p << "\n";
    for (const auto& p : r->orphans) std::cout << "orphan: " << p << " (imgfs gc removes it)\n";
    std::cout << r->images << " images, " << r->manifests << " manifests, " << r->chunks
              << " chunks, " << r->names << " names, " << r->disks << " disks";
    if (r->disks_parent_elsewhere) {
      std::cout << " (" << r->disks_parent_elsewhere
                << " with a parent held by another store; published base present in the pool)";
    }
    std::cout << ": " << (r->clean() ? "clean" : std::to_string(r->problems.size()) + " problems")
              << "\n";
  }
  if (!r->clean()) {
    return {Status::Corruption("fsck found " + std::to_string(r->problems.size()) + " problem(s)"),
            1};
  }
  return {};
}

}  // namespace

void RegisterStoreCommands(Cli& cli) {
  auto args = std::make_shared<InitArgs>();
  auto* init = cli.app.add_subcommand("init", "Create a store (harmless if it exists)");
  init->add_option("--chunk-size", args->chunk_size,
                   "Chunk size, a power of two from 4K to 4M (default 64K)");
  init->add_option("--chunks", args->chunks, "Chunk backend: dir or rados:POOL[/NAMESPACE]");
  init->add_option("--disks", args->disks, "Disk backend: local or rbd:POOL");
  init->add_option("--ceph-conf", args->ceph_conf, "Ceph configuration file (default: $CEPH_CONF)");
  init->add_option("--ceph-id", args->ceph_id,
                   "Ceph client name without 'client.' (default: admin)");
  init->add_option("--keyring", args->keyring, "Ceph keyring file");
  init->add_option("--ceph-timeout", args->ceph_timeout,
                   "Seconds before a Ceph cluster that does not answer is an error (default: 20)");
  init->callback(
      [&cli, args] { cli.action = [&cli, args] { return RunInit(cli.global, *args); }; });

  auto mount = std::make_shared<std::string>();
  auto* stats = cli.app.add_subcommand(
      "stats", "Show what the store holds and saves, or with --mount a running mount's counters");
  stats->add_option("--mount", *mount,
                    "A mount point: the live counters of the mount there (per disk I/O, chunk "
                    "cache, restarts and upgrades) instead of the store's figures");
  stats->callback([&cli, mount] {
    cli.action = [&cli, mount] {
      return mount->empty() ? RunStoreStats(cli.global) : RunMountStats(cli.global, *mount);
    };
  });

  auto* fsck = cli.app.add_subcommand(
      "fsck", "Check the whole store (exit 0 clean, 1 problems found, 3 could not check)");
  fsck->callback([&cli] { cli.action = [&cli] { return RunFsck(cli.global); }; });

  auto ga = std::make_shared<GcArgs>();
  auto* gc = cli.app.add_subcommand("gc", "Remove unused images and unreferenced chunks");
  gc->add_option("--min-age", ga->min_age,
                 "Remove images unused for at least this long (default 24h; 0 = all unused)");
  gc->add_flag("--dry-run", ga->dry_run, "List what would go, with the bytes it would free");
  gc->add_flag("--keep-named", ga->keep_named, "Keep images that have a name");
  gc->callback([&cli, ga] { cli.action = [&cli, ga] { return RunGc(cli.global, *ga); }; });
}

}  // namespace imgfs::cli
