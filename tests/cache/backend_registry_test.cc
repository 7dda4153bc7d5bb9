// The backend registry (blockstore/backends.h) and the store as the one way
// disks change (cache/store.h): a disk backend that exists only in this file
// is registered, a store is configured with it, and every change the store
// makes reaches it. Adding it touched no other file.
#include <catch2/catch.hpp>
#include <filesystem>
#include <map>

#include "blockstore/backends.h"
#include "blockstore/mutex.h"
#include "cache/store.h"
#include "tests/blockstore/test_util.h"

using namespace imgfs;
namespace fs = std::filesystem;
using imgfs::testing::TempDir;

namespace {

// What the ledger backends of this process were asked to change.
class Ledger {
 public:
  void Note(const std::string& what) EXCLUDES(mu_) {
    MutexLock lock(mu_);
    ++calls_[what];
  }
  int Count(const std::string& what) EXCLUDES(mu_) {
    MutexLock lock(mu_);
    return calls_[what];
  }

 private:
  Mutex mu_;
  std::map<std::string, int> calls_ GUARDED_BY(mu_);
};

Ledger& TheLedger() {
  static Ledger l;
  return l;
}

// A disk backend for this test only: keeps disks in a "mem" backend and
// notes every change in the ledger.
class LedgerDiskBackend : public DiskBackend {
 public:
  explicit LedgerDiskBackend(std::unique_ptr<DiskBackend> inner) : inner_(std::move(inner)) {}

  std::string Describe() const override { return "ledger"; }
  Status Create(const DiskRef& ref, const DiskCreateOptions& opts) override {
    TheLedger().Note("create " + ref.ToString());
    return inner_->Create(ref, opts);
  }
  Result<std::unique_ptr<Disk>> Open(const DiskRef& ref, OpenMode mode) override {
    return inner_->Open(ref, mode);
  }
  Status Remove(const DiskRef& ref) override {
    TheLedger().Note("remove " + ref.ToString());
    return inner_->Remove(ref);
  }
  Status Rename(const DiskRef& from, const DiskRef& to) override {
    TheLedger().Note("rename " + from.ToString() + " " + to.ToString());
    return inner_->Rename(from, to);
  }
  Result<DiskInfo> Info(const DiskRef& ref) override { return inner_->Info(ref); }
  Status Resize(const DiskRef& ref, uint64_t new_size, bool allow_shrink) override {
    TheLedger().Note("resize " + ref.ToString() + " " + std::to_string(new_size));
    return inner_->Resize(ref, new_size, allow_shrink);
  }
  Status SetAttrs(const DiskRef& ref, const DiskAttrs& attrs) override {
    return inner_->SetAttrs(ref, attrs);
  }
  Result<DiskSizeLimit> MaxDiskSize(uint32_t chunk_size) override {
    return inner_->MaxDiskSize(chunk_size);
  }
  Status CreateInstance(const std::string& instance) override {
    return inner_->CreateInstance(instance);
  }
  Status RemoveInstance(const std::string& instance) override {
    return inner_->RemoveInstance(instance);
  }
  Result<std::vector<std::string>> ListInstances() override { return inner_->ListInstances(); }
  Result<std::vector<DiskRef>> List(const std::string& instance) override {
    return inner_->List(instance);
  }
  Result<SpaceInfo> Space() override { return inner_->Space(); }

 private:
  std::unique_ptr<DiskBackend> inner_;
};

DiskBackendType LedgerType() {
  DiskBackendType t;
  t.name = "ledger";
  t.usage = "ledger";
  t.shared_between_stores = false;
  t.create = [](const BackendContext& ctx,
                std::string_view) -> Result<std::unique_ptr<DiskBackend>> {
    ASSIGN_OR_RETURN(auto inner, CreateDiskBackend("mem", ctx.store_path, ctx.images));
    return std::unique_ptr<DiskBackend>(new LedgerDiskBackend(std::move(inner)));
  };
  t.prepare = [](const BackendContext&, std::string_view) {
    TheLedger().Note("prepare");
    return Status::OK();
  };
  return t;
}

void RegisterLedgerOnce() {
  static const Status registered = RegisterDiskBackendType(LedgerType());
  REQUIRE(registered.ok());
}

StoreConfig LedgerConfig() {
  StoreConfig c;
  c.chunks = "mem";
  c.disks = "ledger";
  c.chunk_size = 4096;
  return c;
}

}  // namespace

TEST_CASE("A disk backend registered by a test serves a store", "[registry]") {
  RegisterLedgerOnce();
  TempDir t;
  int prepared = TheLedger().Count("prepare");
  REQUIRE(Store::Init(t.path() + "/s", LedgerConfig()).ok());
  CHECK(TheLedger().Count("prepare") == prepared + 1);
  auto store = Store::Open(t.path() + "/s");
  REQUIRE(store.ok());
  Store& s = **store;
  CHECK(s.disks().Describe() == "ledger");

  DiskRef a{"vm1", "disk"}, b{"vm2", "disk"};
  DiskCreateOptions blank;
  blank.size = 1 << 20;
  REQUIRE(s.CreateDisk(a, blank).ok());
  REQUIRE(s.ResizeDisk(a, 2 << 20, false).ok());
  REQUIRE(s.RenameDisk(a, b).ok());
  auto info = s.disks().Info(b);
  REQUIRE(info.ok());
  CHECK(info->size == (2u << 20));
  CHECK(s.disks().Info(a).status().IsNotFound());
  REQUIRE(s.RemoveDisk(b).ok());
  CHECK(s.disks().Info(b).status().IsNotFound());

  CHECK(TheLedger().Count("create vm1/disk") == 1);
  CHECK(TheLedger().Count("resize vm1/disk 2097152") == 1);
  CHECK(TheLedger().Count("rename vm1/disk vm2/disk") == 1);
  CHECK(TheLedger().Count("remove vm2/disk") == 1);

  // A shrink is refused by the backend, through the store, and changes nothing.
  REQUIRE(s.CreateDisk(a, blank).ok());
  CHECK(s.ResizeDisk(a, 4096, false).IsPermissionDenied());
  CHECK(s.disks().Info(a)->size == (1u << 20));
}

TEST_CASE("Backend specs are parsed once, against the registered types", "[registry]") {
  RegisterLedgerOnce();
  auto ledger = ParseDiskBackendSpec("ledger");
  REQUIRE(ledger.ok());
  CHECK(ledger->type->name == "ledger");
  CHECK(ledger->ToString() == "ledger");
  CHECK(ParseDiskBackendSpec("ledger:").ok());  // "KIND:" is "KIND"

  auto rbd = ParseDiskBackendSpec("rbd:pool/ns");
  REQUIRE(rbd.ok());
  CHECK(rbd->arg == "pool/ns");
  CHECK(rbd->type->shared_between_stores);
  CHECK(rbd->ToString() == "rbd:pool/ns");
  CHECK_FALSE(ParseDiskBackendSpec("local")->type->shared_between_stores);

  CHECK(ParseChunkBackendSpec("dir")->type->reads_are_local);
  CHECK_FALSE(ParseChunkBackendSpec("rados:p")->type->reads_are_local);

  // Bad specs: an argument missing or not taken, an unknown kind. The
  // message names what a store may use (test-only kinds are not offered).
  auto missing = ParseDiskBackendSpec("rbd");
  REQUIRE(missing.status().IsInvalidArgument());
  CHECK(missing.status().message().find("rbd:POOL[/NAMESPACE]") != std::string::npos);
  CHECK(ParseDiskBackendSpec("local:/x").status().IsInvalidArgument());
  CHECK(ParseChunkBackendSpec("rados:").status().IsInvalidArgument());
  auto unknown = ParseChunkBackendSpec("tape");
  REQUIRE(unknown.status().IsInvalidArgument());
  CHECK(unknown.status().message() ==
        "invalid chunk backend 'tape': use dir or rados:POOL[/NAMESPACE]");

  // A name is registered once.
  CHECK(RegisterDiskBackendType(LedgerType()).IsAlreadyExists());
  DiskBackendType nameless;
  CHECK(RegisterDiskBackendType(nameless).IsInvalidArgument());
}

TEST_CASE("A store configured with an unknown backend is refused, and nothing is made",
          "[registry]") {
  TempDir t;
  StoreConfig c = LedgerConfig();
  c.disks = "ledger2";
  Status s = Store::Init(t.path() + "/s", c);
  CHECK(s.IsInvalidArgument());
  CHECK_FALSE(fs::exists(t.path() + "/s"));
}
