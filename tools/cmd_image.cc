// imgfs image import | ls | info | rm | verify | name
#include <signal.h>

#include <atomic>
#include <cstdio>
#include <ctime>
#include <iostream>

#include "blockstore/units.h"
#include "cache/import.h"
#include "cache/verify.h"
#include "tools/cli.h"

namespace imgfs::cli {
namespace {

std::atomic<bool> g_interrupted{false};

void OnSignal(int) { g_interrupted.store(true); }

// SIGINT/SIGTERM stop a long command cleanly (temp files removed) instead of
// killing the process mid-write.
void CatchInterrupts() {
  struct sigaction sa {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

std::string FormatTime(int64_t t) {
  if (t == 0) return "-";
  std::time_t tt = static_cast<std::time_t>(t);
  std::tm tm{};
  gmtime_r(&tt, &tm);
  char buf[32];
  std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
  return buf;
}

nlohmann::json RecordJson(const ImageRecord& r) {
  return {{"id", r.id.Hex()},     {"size", r.size},           {"data_bytes", r.data_bytes},
          {"created", r.created}, {"last_used", r.last_used}, {"names", r.names}};
}

std::string JoinNames(const std::vector<std::string>& names) {
  std::string out;
  for (const auto& n : names) out += (out.empty() ? "" : ",") + n;
  return out.empty() ? "-" : out;
}

struct ImportArgs {
  std::string source;
  std::vector<std::string> names;
  std::string format = "auto";
  bool force = false;
};

Outcome RunImport(const GlobalOptions& g, const ImportArgs& a) {
  auto store = OpenStore(g);
  if (!store.ok()) return {store.status()};
  CatchInterrupts();
  ImportOptions o;
  o.format = a.format;
  o.names = a.names;
  o.force_names = a.force;
  o.cancel = &g_interrupted;
  Progress bar(ShowProgress(g), "import", 0);
  if (ShowProgress(g)) {
    o.progress = [&bar](uint64_t done, uint64_t total) {
      bar.SetTotal(total);
      bar.Update(done);
    };
  }
  auto r = ImportImage(**store, a.source, o);
  bar.Finish();
  if (!r.ok()) return {r.status()};
  if (g.json) {
    PrintJson({{"id", r->id.Hex()},
               {"size", r->size},
               {"stored_bytes", r->stored_bytes},
               {"new_bytes", r->new_bytes},
               {"format", r->format},
               {"names", a.names}});
  } else {
    std::cout << r->id.Hex() << "\n";
  }
  return {};
}

Outcome RunLs(const GlobalOptions& g) {
  auto store = OpenStore(g);
  if (!store.ok()) return {store.status()};
  auto images = (*store)->ListImages();
  if (!images.ok()) return {images.status()};
  if (g.json) {
    nlohmann::json arr = nlohmann::json::array();
    for (const auto& r : *images) arr.push_back(RecordJson(r));
    PrintJson(arr);
    return {};
  }
  std::printf("%-32s  %10s  %10s  %-20s  %s\n", "ID", "SIZE", "DATA", "LAST USED", "NAMES");
  for (const auto& r : *images) {
    std::printf("%-32s  %10s  %10s  %-20s  %s\n", r.id.Hex().c_str(),
                FormatSizeHuman(r.size).c_str(), FormatSizeHuman(r.data_bytes).c_str(),
                FormatTime(r.last_used).c_str(), JoinNames(r.names).c_str());
  }
  return {};
}

Outcome RunInfo(const GlobalOptions& g, const std::string& ref) {
  auto store = OpenStore(g);
  if (!store.ok()) return {store.status()};
  auto id = (*store)->ResolveImage(ref);
  if (!id.ok()) return {id.status()};
  auto r = (*store)->GetImage(*id);
  if (!r.ok()) return {r.status()};
  auto m = GetManifest((*store)->backend(), *id);
  if (!m.ok()) return {m.status()};
  auto users = (*store)->DisksUsing(*id);
  if (!users.ok()) return {users.status()};
  std::vector<std::string> disks;
  for (const auto& d : *users) disks.push_back(d.ToString());
  if (g.json) {
    nlohmann::json j = RecordJson(*r);
    j["chunk_size"] = m->chunk_size;
    j["chunks"] = m->chunks.size();
    j["disks"] = disks;
    PrintJson(j);
    return {};
  }
  std::cout << "id:         " << r->id.Hex() << "\n"
            << "names:      " << JoinNames(r->names) << "\n"
            << "size:       " << FormatSizeHuman(r->size) << " (" << r->size << " bytes)\n"
            << "data:       " << FormatSizeHuman(r->data_bytes) << "\n"
            << "chunks:     " << m->chunks.size() << " of " << FormatSize(m->chunk_size) << "\n"
            << "created:    " << FormatTime(r->created) << "\n"
            << "last used:  " << FormatTime(r->last_used) << "\n"
            << "disks:      " << (disks.empty() ? "-" : "");
  for (size_t i = 0; i < disks.size(); ++i) std::cout << (i ? ", " : "") << disks[i];
  std::cout << "\n";
  return {};
}

Outcome RunRm(const GlobalOptions& g, const std::string& ref) {
  auto store = OpenStore(g);
  if (!store.ok()) return {store.status()};
  auto id = (*store)->ResolveImage(ref);
  if (!id.ok()) return {id.status()};
  Status s = (*store)->RemoveImage(*id);
  if (!s.ok()) return {s};
  if (g.json) PrintJson({{"removed", id->Hex()}});
  return {};
}

Outcome RunName(const GlobalOptions& g, const std::string& ref, const std::string& name, bool force,
                bool remove) {
  auto store = OpenStore(g);
  if (!store.ok()) return {store.status()};
  if (remove) return {(*store)->RemoveName(name)};
  auto id = (*store)->ResolveImage(ref);
  if (!id.ok()) return {id.status()};
  Status s = (*store)->SetName(name, *id, force);
  if (!s.ok()) return {s};
  if (g.json) PrintJson({{"name", name}, {"id", id->Hex()}});
  return {};
}

Outcome RunVerify(const GlobalOptions& g, const std::string& ref) {
  auto store = OpenStore(g);
  if (!store.ok()) return {store.status()};
  std::vector<ImageId> ids;
  if (!ref.empty()) {
    auto id = (*store)->ResolveImage(ref);
    if (!id.ok()) return {id.status()};
    ids.push_back(*id);
  } else {
    auto images = (*store)->ListImages();
    if (!images.ok()) return {images.status()};
    for (const auto& r : *images) ids.push_back(r.id);
  }
  nlohmann::json out = nlohmann::json::array();
  size_t bad_images = 0;
  for (const auto& id : ids) {
    std::unique_ptr<Progress> bar;
    std::function<void(uint64_t, uint64_t)> progress;
    if (ShowProgress(g)) {
      progress = [&](uint64_t done, uint64_t total) {
        if (!bar) {
          bar = std::make_unique<Progress>(true, "verify " + id.Hex().substr(0, 12), total,
                                           Progress::Unit::kCount);
        }
        bar->Update(done);
      };
    }
    auto report = VerifyImage(**store, id, progress);
    if (bar) bar->Finish();
    if (!report.ok()) return {report.status(), 2};
    nlohmann::json problems = nlohmann::json::array();
    if (!report->manifest_status.ok()) {
      problems.push_back({{"manifest", report->manifest_status.message()}});
      if (!g.json) {
        std::cout << "image " << id.Hex()
                  << ": BROKEN manifest: " << report->manifest_status.message() << "\n";
      }
    }
    for (const auto& p : report->problems) {
      problems.push_back({{"chunk", p.chunk.Hex()}, {"offset", p.offset}, {"problem", p.problem}});
      if (!g.json) {
        std::cout << "image " << id.Hex() << ": chunk " << p.chunk.Hex() << " at offset "
                  << p.offset << ": " << p.problem << "\n";
      }
    }
    if (!report->ok()) ++bad_images;
    if (!g.json && report->ok()) {
      std::cout << "image " << id.Hex() << ": ok (" << report->chunks_checked << " chunks)\n";
    }
    out.push_back({{"id", id.Hex()},
                   {"ok", report->ok()},
                   {"chunks_checked", report->chunks_checked},
                   {"problems", problems}});
  }
  if (g.json) PrintJson(out);
  if (bad_images > 0) {
    return {Status::Corruption(std::to_string(bad_images) + " image(s) damaged"), 1};
  }
  return {};
}

}  // namespace

void RegisterImageCommands(Cli& cli) {
  auto* image = cli.app.add_subcommand("image", "Base images in the _base cache");
  image->require_subcommand(1);

  auto ia = std::make_shared<ImportArgs>();
  auto* imp = image->add_subcommand("import", "Import a disk image; prints its image id");
  imp->add_option("SOURCE", ia->source, "Image file, or - for a raw stream on stdin")->required();
  imp->add_option("--name", ia->names, "Name to give the image (repeatable)");
  imp->add_option("--format", ia->format, "Source format: auto, raw, qcow2, vmdk, vdi, vhdx");
  imp->add_flag("--force", ia->force, "Move names that point at other images");
  imp->callback([&cli, ia] { cli.action = [&cli, ia] { return RunImport(cli.global, *ia); }; });

  auto* ls = image->add_subcommand("ls", "List images");
  ls->callback([&cli] { cli.action = [&cli] { return RunLs(cli.global); }; });

  auto ref = std::make_shared<std::string>();
  auto* info = image->add_subcommand("info", "Show one image");
  info->add_option("IMAGE", *ref, "Image id, unique id prefix (8+ hex digits) or name")->required();
  info->callback([&cli, ref] { cli.action = [&cli, ref] { return RunInfo(cli.global, *ref); }; });

  auto rmref = std::make_shared<std::string>();
  auto* rm = image->add_subcommand("rm", "Remove an image that no disk uses");
  rm->add_option("IMAGE", *rmref, "Image id, unique id prefix or name")->required();
  rm->callback([&cli, rmref] { cli.action = [&cli, rmref] { return RunRm(cli.global, *rmref); }; });

  auto vref = std::make_shared<std::string>();
  auto* verify = image->add_subcommand("verify", "Re-read and re-hash every chunk of images");
  verify->add_option("IMAGE", *vref, "Image to verify (default: all)");
  verify->callback(
      [&cli, vref] { cli.action = [&cli, vref] { return RunVerify(cli.global, *vref); }; });

  struct NameArgs {
    std::string image, name;
    bool force = false, remove = false;
  };
  auto na = std::make_shared<NameArgs>();
  auto* name = image->add_subcommand("name", "Give an image a name (or --rm a name)");
  name->add_option("IMAGE", na->image, "Image id, unique id prefix or name");
  name->add_option("NAME", na->name, "The name");
  name->add_flag("--force", na->force, "Move the name if it points at another image");
  name->add_flag("--rm", na->remove, "Remove NAME (give only NAME)");
  name->callback([&cli, na] {
    cli.action = [&cli, na] {
      if (na->remove && na->name.empty()) std::swap(na->image, na->name);
      if (na->name.empty() || (!na->remove && na->image.empty())) {
        return Outcome{Status::InvalidArgument("usage: imgfs image name IMAGE NAME"), 2};
      }
      return RunName(cli.global, na->image, na->name, na->force, na->remove);
    };
  });
}

}  // namespace imgfs::cli
