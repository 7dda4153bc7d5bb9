// imgfs init | stats | fsck | gc
#include <iostream>

#include "blockstore/units.h"
#include "tools/cli.h"

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
  std::string path = StorePath(g);
  Status s = Store::Init(path, c);
  if (!s.ok()) return {s};
  if (g.json) {
    PrintJson({{"store", path}, {"chunk_size", c.chunk_size}, {"chunks", c.chunks},
               {"disks", c.disks}});
  } else if (!g.quiet) {
    std::cout << "store " << path << " ready (chunk size " << FormatSize(c.chunk_size)
              << ", chunks " << c.chunks << ", disks " << c.disks << ")\n";
  }
  return {};
}

Outcome RunStats(const GlobalOptions& g) {
  auto store = OpenStore(g);
  if (!store.ok()) return {store.status()};
  auto images = (*store)->ListImages();
  if (!images.ok()) return {images.status()};
  uint64_t logical = 0, data = 0;
  for (const auto& r : *images) {
    logical += r.size;
    data += r.data_bytes;
  }
  uint64_t chunks = 0, chunk_bytes = 0;
  Bytes buf;
  (void)buf;
  Status s = (*store)->chunks().ListIds([&](const ChunkId&) {
    ++chunks;
    return Status::OK();
  });
  if (!s.ok()) return {s};
  chunk_bytes = chunks * (*store)->config().chunk_size;  // upper bound: last chunks may be short
  auto disks = (*store)->disks().List("");
  if (!disks.ok()) return {disks.status()};
  auto space = (*store)->backend().Space();
  if (g.json) {
    nlohmann::json j = {{"images", images->size()},  {"image_bytes", logical},
                        {"image_data_bytes", data},  {"chunks", chunks},
                        {"chunk_bytes_max", chunk_bytes}, {"disks", disks->size()}};
    if (space.ok()) {
      j["capacity_bytes"] = space->capacity_bytes;
      j["available_bytes"] = space->available_bytes;
    }
    PrintJson(j);
  } else {
    std::cout << "images:      " << images->size() << " (" << FormatSizeHuman(logical)
              << " virtual, " << FormatSizeHuman(data) << " of data)\n"
              << "chunks:      " << chunks << " (at most " << FormatSizeHuman(chunk_bytes)
              << ")\n"
              << "disks:       " << disks->size() << "\n";
    if (data > 0 && chunk_bytes > 0) {
      std::printf("dedup ratio: %.2f (image data / stored chunks, at least)\n",
                  static_cast<double>(data) / static_cast<double>(chunk_bytes));
    }
    if (space.ok()) {
      std::cout << "space:       " << FormatSizeHuman(space->available_bytes) << " free of "
                << FormatSizeHuman(space->capacity_bytes) << "\n";
    }
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
  init->add_option("--ceph-id", args->ceph_id, "Ceph client name without 'client.' (default: admin)");
  init->add_option("--keyring", args->keyring, "Ceph keyring file");
  init->callback([&cli, args] { cli.action = [&cli, args] { return RunInit(cli.global, *args); }; });

  auto* stats = cli.app.add_subcommand("stats", "Show what the store holds and saves");
  stats->callback([&cli] { cli.action = [&cli] { return RunStats(cli.global); }; });

  auto* fsck = cli.app.add_subcommand("fsck", "Check the whole store");
  auto* gc = cli.app.add_subcommand("gc", "Remove unused images and unreferenced chunks");
  gc->allow_extras();
  for (auto* sub : {fsck, gc}) {
    sub->callback([&cli, sub] {
      cli.action = [sub] {
        return Outcome{Status::NotSupported("'" + sub->get_name() + "' is not built yet")};
      };
    });
  }
}

}  // namespace imgfs::cli
