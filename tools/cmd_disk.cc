// imgfs disk create | ls | info | resize | rm
#include <cstdio>
#include <ctime>
#include <iostream>
#include <optional>
#include <unordered_map>

#include "blockstore/names.h"
#include "blockstore/units.h"
#include "tools/cli.h"

namespace imgfs::cli {
namespace {

std::string FormatTimeNs(int64_t ns) {
  if (ns == 0) return "-";
  std::time_t t = static_cast<std::time_t>(ns / 1'000'000'000);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

nlohmann::json InfoJson(const DiskInfo& i) {
  return {{"disk", i.ref.ToString()},
          {"instance", i.ref.instance},
          {"name", i.ref.disk},
          {"size", i.size},
          {"owned_bytes", i.owned_bytes},
          {"parent", i.parent ? nlohmann::json(i.parent->Hex()) : nlohmann::json(nullptr)},
          {"mode", i.attrs.mode},
          {"uid", i.attrs.uid},
          {"gid", i.attrs.gid},
          {"mtime_ns", i.mtime_ns},
          {"location", i.location}};
}

// The --json answer of create and resize: the disk as it now is.
Outcome PrintInfoJson(Store& store, const DiskRef& ref) {
  auto info = store.disks().Info(ref);
  if (!info.ok()) return {info.status()};
  PrintJson(InfoJson(*info));
  return {};
}

struct CreateArgs {
  std::string disk;
  std::string image;
  bool blank = false;
  std::string size;
};

Outcome RunCreate(const GlobalOptions& g, const CreateArgs& a) {
  auto ref = ParseDiskRef(a.disk);
  if (!ref.ok()) return {ref.status()};
  if (a.blank == !a.image.empty()) {
    return {Status::InvalidArgument("give either --image IMAGE or --blank"), 2};
  }
  DiskCreateOptions opts;
  if (!a.size.empty()) {
    auto size = ParseSize(a.size);
    if (!size.ok()) return {size.status()};
    opts.size = *size;
  } else if (a.blank) {
    return {Status::InvalidArgument("a blank disk needs --size SIZE")};
  }
  auto store = OpenStore(g);
  if (!store.ok()) return {store.status()};
  if (!a.blank) {
    auto id = (*store)->ResolveImage(a.image);
    if (!id.ok()) return {id.status()};
    auto rec = (*store)->ReadImageRecord(*id);  // the size, without loading the manifest
    if (!rec.ok()) return {rec.status()};
    if (opts.size && *opts.size < rec->size) {
      return {Status::InvalidArgument(
          "size " + FormatSizeHuman(*opts.size) + " (" + std::to_string(*opts.size) +
          " bytes) is smaller than image " + id->Hex() + " (" + FormatSizeHuman(rec->size) + ", " +
          std::to_string(rec->size) + " bytes)")};
    }
    opts.image = *id;
  }
  Status s = (*store)->CreateDisk(*ref, opts);
  if (!s.ok()) return {s};
  if (g.json) return PrintInfoJson(**store, *ref);
  return {};
}

// Whether this store holds each parent image: on a pool shared by several
// stores, a disk may be a clone of an image that only another store holds
// (docs/rbd.md, "Stores sharing a pool").
class ParentsInStore {
 public:
  explicit ParentsInStore(Store& store) : store_(store) {}
  Result<bool> Holds(const ImageId& id) {
    auto it = known_.find(id);
    if (it != known_.end()) return it->second;
    auto rec = store_.ReadImageRecord(id);
    if (!rec.ok() && !rec.status().IsNotFound()) return rec.status();
    known_.emplace(id, rec.ok());
    return rec.ok();
  }

 private:
  Store& store_;
  std::unordered_map<ImageId, bool> known_;
};

Outcome RunLs(const GlobalOptions& g, const std::string& instance) {
  if (!instance.empty()) {
    Status s = ValidateInstanceName(instance);
    if (!s.ok()) return {s};
  }
  auto store = OpenStore(g);
  if (!store.ok()) return {store.status()};
  auto disks = (*store)->disks().List(instance);
  if (!disks.ok()) return {disks.status()};
  struct Row {
    DiskInfo info;
    bool parent_in_store = true;
    std::string broken;  // why the disk cannot be opened (backend's Check)
  };
  std::vector<Row> rows;
  ParentsInStore parents(**store);
  // Read together: for rbd a batch of header reads, not an open of each.
  auto infos = (*store)->disks().InfoMany(*disks);
  for (size_t n = 0; n < disks->size(); ++n) {
    const DiskRef& ref = (*disks)[n];
    auto& info = infos[n];
    if (info.status().IsNotFound()) {
      // Removed meanwhile, or in the pool but not openable (its parent gone).
      std::vector<std::string> problems;
      Status s = (*store)->disks().Check(ref, &problems);
      if (!s.ok()) return {s};
      if (problems.empty()) continue;
      Row row;
      row.info.ref = ref;
      row.broken = info.status().message();
      rows.push_back(std::move(row));
      continue;
    }
    if (!info.ok()) return {info.status()};
    Row row;
    row.info = std::move(info).value();
    if (row.info.parent) {
      auto held = parents.Holds(*row.info.parent);
      if (!held.ok()) return {held.status()};
      row.parent_in_store = *held;
    }
    rows.push_back(std::move(row));
  }
  if (g.json) {
    nlohmann::json arr = nlohmann::json::array();
    for (const auto& r : rows) {
      if (!r.broken.empty()) {
        arr.push_back({{"disk", r.info.ref.ToString()}, {"error", r.broken}});
        continue;
      }
      nlohmann::json j = InfoJson(r.info);
      if (r.info.parent) j["parent_in_store"] = r.parent_in_store;
      arr.push_back(std::move(j));
    }
    PrintJson(arr);
    return {};
  }
  std::printf("%-40s  %10s  %10s  %s\n", "DISK", "SIZE", "OWNED", "PARENT");
  bool elsewhere = false;
  for (const auto& r : rows) {
    const DiskInfo& i = r.info;
    if (!r.broken.empty()) {
      std::printf("%-40s  %10s  %10s  %s\n", i.ref.ToString().c_str(), "?", "?",
                  "? (cannot be opened; see imgfs disk info)");
      continue;
    }
    std::string parent = i.parent ? i.parent->Hex() : "-";
    if (i.parent && !r.parent_in_store) {
      parent += " *";
      elsewhere = true;
    }
    std::printf("%-40s  %10s  %10s  %s\n", i.ref.ToString().c_str(),
                FormatSizeHuman(i.size).c_str(), FormatSizeHuman(i.owned_bytes).c_str(),
                parent.c_str());
  }
  if (elsewhere) {
    std::printf("* parent image not in this store (another store sharing the pool holds it)\n");
  }
  return {};
}

Outcome RunInfo(const GlobalOptions& g, const std::string& disk) {
  auto ref = ParseDiskRef(disk);
  if (!ref.ok()) return {ref.status()};
  auto store = OpenStore(g);
  if (!store.ok()) return {store.status()};
  auto info = (*store)->disks().Info(*ref);
  if (!info.ok()) return {info.status()};
  std::vector<std::string> names;
  bool in_store = true;
  // The published base the disk reads (rbd), whichever store published it.
  std::optional<Result<std::string>> base;
  if (info->parent) {
    auto rec = (*store)->GetImage(*info->parent);
    if (rec.ok()) {
      names = rec->names;
    } else if (rec.status().IsNotFound()) {
      in_store = false;
    } else {
      return {rec.status()};
    }
    auto published = (*store)->disks().CheckPublished(*info->parent);
    if (published.status().code() != Code::kNotSupported) {
      if (published.status().IsRetryable()) return {published.status()};
      base = std::move(published);
    }
  }
  if (g.json) {
    nlohmann::json j = InfoJson(*info);
    j["parent_names"] = names;
    if (info->parent) j["parent_in_store"] = in_store;
    if (base) {
      j["parent_base"] =
          base->ok() ? nlohmann::json{{"location", **base}, {"present", true}}
                     : nlohmann::json{{"present", false}, {"problem", base->status().message()}};
    }
    PrintJson(j);
    return {};
  }
  std::string parent = info->parent ? info->parent->Hex() : "- (blank)";
  if (!names.empty()) {
    parent += " (";
    for (size_t k = 0; k < names.size(); ++k) parent += (k ? ", " : "") + names[k];
    parent += ")";
  }
  if (!in_store) {
    parent += base && base->ok() ? " (held by another store; published base present in the pool)"
              : base             ? " (not in this store; its published base has a problem, below)"
                                 : " (missing from this store)";
  }
  char mode[8];
  std::snprintf(mode, sizeof mode, "%04o", info->attrs.mode);
  std::cout << "disk:       " << info->ref.ToString() << "\n"
            << "size:       " << FormatSizeHuman(info->size) << " (" << info->size << " bytes)\n"
            << "owned:      " << FormatSizeHuman(info->owned_bytes) << "\n"
            << "parent:     " << parent << "\n";
  if (base) {
    std::cout << "base:       "
              << (base->ok() ? **base + " (present)" : "PROBLEM: " + base->status().message())
              << "\n";
  }
  std::cout << "mode:       " << mode << "  uid " << info->attrs.uid << "  gid " << info->attrs.gid
            << "\n"
            << "modified:   " << FormatTimeNs(info->mtime_ns) << "\n"
            << "location:   " << info->location << "\n";
  return {};
}

Outcome RunResize(const GlobalOptions& g, const std::string& disk, const std::string& size_text) {
  auto ref = ParseDiskRef(disk);
  if (!ref.ok()) return {ref.status()};
  auto size = ParseSize(size_text);
  if (!size.ok()) return {size.status()};
  auto store = OpenStore(g);
  if (!store.ok()) return {store.status()};
  Status s = (*store)->ResizeDisk(*ref, *size, /*allow_shrink=*/false);
  if (!s.ok()) return {s};
  if (g.json) return PrintInfoJson(**store, *ref);
  return {};
}

Outcome RunRm(const GlobalOptions& g, const std::string& disk) {
  auto ref = ParseDiskRef(disk);
  if (!ref.ok()) return {ref.status()};
  auto store = OpenStore(g);
  if (!store.ok()) return {store.status()};
  Status s = (*store)->RemoveDisk(*ref);
  if (!s.ok()) return {s};
  if (g.json) PrintJson({{"removed", ref->ToString()}});
  return {};
}

}  // namespace

void RegisterDiskCommands(Cli& cli) {
  auto* disk = cli.app.add_subcommand("disk", "Instance disks: thin copy-on-write clones");
  disk->require_subcommand(1);

  auto ca = std::make_shared<CreateArgs>();
  auto* create = disk->add_subcommand("create", "Create a disk from an image, or a blank one");
  create->add_option("INSTANCE/DISK", ca->disk, "The disk, e.g. 6f1c0a2e/disk")->required();
  create->add_option("--image", ca->image, "Image id, unique id prefix (8+ hex digits) or name");
  create->add_flag("--blank", ca->blank, "A blank disk (needs --size)");
  create->add_option("--size", ca->size,
                     "Size (K, M, G, T suffixes); default: the image's size; not smaller");
  create->callback([&cli, ca] { cli.action = [&cli, ca] { return RunCreate(cli.global, *ca); }; });

  auto inst = std::make_shared<std::string>();
  auto* ls = disk->add_subcommand("ls", "List disks (of one instance, or all)");
  ls->add_option("INSTANCE", *inst, "Only this instance's disks");
  ls->callback([&cli, inst] { cli.action = [&cli, inst] { return RunLs(cli.global, *inst); }; });

  auto iref = std::make_shared<std::string>();
  auto* info = disk->add_subcommand("info", "Show a disk: size, owned bytes, parent image");
  info->add_option("INSTANCE/DISK", *iref, "The disk")->required();
  info->callback(
      [&cli, iref] { cli.action = [&cli, iref] { return RunInfo(cli.global, *iref); }; });

  struct ResizeArgs {
    std::string disk, size;
  };
  auto ra = std::make_shared<ResizeArgs>();
  auto* resize = disk->add_subcommand("resize", "Grow a disk (shrinking is refused)");
  resize->add_option("INSTANCE/DISK", ra->disk, "The disk")->required();
  resize->add_option("SIZE", ra->size, "The new size (K, M, G, T suffixes)")->required();
  resize->callback([&cli, ra] {
    cli.action = [&cli, ra] { return RunResize(cli.global, ra->disk, ra->size); };
  });

  auto rref = std::make_shared<std::string>();
  auto* rm = disk->add_subcommand("rm", "Remove a disk that no one has open for writing");
  rm->add_option("INSTANCE/DISK", *rref, "The disk")->required();
  rm->callback([&cli, rref] { cli.action = [&cli, rref] { return RunRm(cli.global, *rref); }; });
}

}  // namespace imgfs::cli
