#include "cache/store.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <random>

#include "cache/import.h"
#include "tests/cache/import_test_util.h"

using namespace imgfs;
using imgfs::testing::ImportBytes;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    char tmpl[] = "/tmp/imgfs-store-test.XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path); }
  std::string operator/(const std::string& s) const { return (path / s).string(); }
};

StoreConfig MemConfig() {
  StoreConfig c;
  c.chunks = "mem";
  c.disks = "local";
  c.chunk_size = 4096;
  return c;
}

Bytes RandomBytes(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  Bytes b(n);
  for (auto& x : b) x = static_cast<uint8_t>(rng());
  return b;
}


}  // namespace

TEST_CASE("Store::Init creates a store and is harmless when repeated", "[store]") {
  TempDir t;
  std::string p = t / "store";
  REQUIRE(Store::Init(p, MemConfig()).ok());
  REQUIRE(Store::Init(p, MemConfig()).ok());
  CHECK(fs::exists(p + "/imgfs.json"));
  StoreConfig other = MemConfig();
  other.chunk_size = 8192;
  Status s = Store::Init(p, other);
  CHECK(s.IsAlreadyExists());
  CHECK(s.message().find("different configuration") != std::string::npos);
}

TEST_CASE("Store::Init refuses a foreign directory and bad configurations", "[store]") {
  TempDir t;
  fs::create_directories(t / "foreign");
  std::ofstream(t / "foreign/file") << "x";
  Status s = Store::Init(t / "foreign", MemConfig());
  CHECK(s.IsInvalidArgument());
  CHECK(s.message().find("not empty") != std::string::npos);
  CHECK(fs::exists(t / "foreign/file"));
  CHECK_FALSE(fs::exists(t / "foreign/imgfs.json"));

  StoreConfig bad = MemConfig();
  bad.chunk_size = 3000;
  CHECK(Store::Init(t / "b1", bad).IsInvalidArgument());
  bad = MemConfig();
  bad.chunks = "tape";
  CHECK(Store::Init(t / "b2", bad).IsInvalidArgument());
  bad = MemConfig();
  bad.disks = "nfs";
  CHECK(Store::Init(t / "b3", bad).IsInvalidArgument());
}

TEST_CASE("Store::Open of a missing store says to run imgfs init", "[store]") {
  TempDir t;
  auto r = Store::Open(t / "nothing");
  REQUIRE_FALSE(r.ok());
  CHECK(r.status().IsNotFound());
  CHECK(r.status().message().find("imgfs init") != std::string::npos);
  std::ofstream(t / "imgfs.json") << "{\"format\":\"something-else\"}";
  auto r2 = Store::Open(t.path.string());
  CHECK(r2.status().IsInvalidArgument());
}

TEST_CASE("Store: import publishes an image that reads back byte for byte", "[store]") {
  TempDir t;
  REQUIRE(Store::Init(t / "s", MemConfig()).ok());
  auto store = Store::Open(t / "s");
  REQUIRE(store.ok());
  Bytes data = RandomBytes(3 * 4096 + 100, 1);
  std::fill(data.begin() + 4096, data.begin() + 8192, 0);  // a hole chunk
  auto r = ImportBytes(**store, data, {"img"});
  REQUIRE(r.ok());
  CHECK(r->size == data.size());
  CHECK(r->stored_bytes == data.size() - 4096);
  CHECK(r->new_bytes == data.size() - 4096);

  auto again = ImportBytes(**store, data);
  REQUIRE(again.ok());
  CHECK(again->id == r->id);
  CHECK(again->new_bytes == 0);

  auto reader = (*store)->OpenImage(r->id);
  REQUIRE(reader.ok());
  Bytes back(data.size());
  REQUIRE((*reader)->Read(0, back).ok());
  CHECK(back == data);

  auto rec = (*store)->GetImage(r->id);
  REQUIRE(rec.ok());
  CHECK(rec->names == std::vector<std::string>{"img"});
  CHECK(rec->size == data.size());
}

TEST_CASE("Store: an image's geometry comes from its record; the cache size is an option",
          "[store]") {
  TempDir t;
  REQUIRE(Store::Init(t / "s", MemConfig()).ok());
  StoreOptions o;
  o.chunk_cache_bytes = 12345678;
  auto store = Store::Open(t / "s", {}, o);
  REQUIRE(store.ok());
  CHECK((*store)->chunks().cache_bytes() == 12345678);
  Bytes data = RandomBytes(5 * 4096 + 7, 2);
  auto r = ImportBytes(**store, data);
  REQUIRE(r.ok());
  auto g = (*store)->GetGeometry(r->id);
  REQUIRE(g.ok());
  CHECK(g->size == data.size());
  CHECK(g->chunk_size == 4096);
  auto reader = (*store)->OpenImage(r->id);
  REQUIRE(reader.ok());
  CHECK((*reader)->manifest().chunk_size == g->chunk_size);
  CHECK((*store)->GetGeometry(Hash128(data)).status().IsNotFound());

  auto dflt = Store::Open(t / "s");
  REQUIRE(dflt.ok());
  CHECK((*dflt)->chunks().cache_bytes() == DefaultChunkCacheBytes());
}

TEST_CASE("Store: an image's chunk size is its manifest's, also when the store's differs",
          "[store]") {
  TempDir t;
  StoreConfig c = MemConfig();
  c.chunk_size = 8192;
  REQUIRE(Store::Init(t / "s", c).ok());
  auto store = Store::Open(t / "s");
  REQUIRE(store.ok());
  // An image cut into 4 KiB chunks (as another host's store with another
  // chunk size would write it into a shared pool).
  Bytes data = RandomBytes(3 * 4096 + 100, 7);
  Manifest m;
  m.size = data.size();
  m.chunk_size = 4096;
  for (size_t off = 0; off < data.size(); off += m.chunk_size) {
    size_t n = std::min<size_t>(m.chunk_size, data.size() - off);
    auto put = (*store)->chunks().Put(ByteView(data.data() + off, n));
    REQUIRE(put.ok());
    m.chunks.push_back(put->id);
  }
  auto id = PutManifest((*store)->backend(), m);
  REQUIRE(id.ok());
  REQUIRE((*store)->PublishImage(m, *id, {}, false).ok());
  auto g = (*store)->GetGeometry(*id);
  REQUIRE(g.ok());
  CHECK(g->size == data.size());
  CHECK(g->chunk_size == 4096);

  // A record written before records kept the chunk size: the manifest answers.
  REQUIRE((*store)
              ->backend()
              .PutRecord("images/" + id->Hex(), R"({"size":)" + std::to_string(data.size()) + "}",
                         RecordCondition::Any())
              .ok());
  auto old = (*store)->GetGeometry(*id);
  REQUIRE(old.ok());
  CHECK(old->size == data.size());
  CHECK(old->chunk_size == 4096);
}

TEST_CASE("Store: images resolve by id, name and unique prefix", "[store]") {
  TempDir t;
  REQUIRE(Store::Init(t / "s", MemConfig()).ok());
  auto store = Store::Open(t / "s");
  REQUIRE(store.ok());
  auto a = ImportBytes(**store, RandomBytes(5000, 2), {"alpha"});
  REQUIRE(a.ok());
  std::string hex = a->id.Hex();
  CHECK(*(*store)->ResolveImage(hex) == a->id);
  CHECK(*(*store)->ResolveImage("alpha") == a->id);
  CHECK(*(*store)->ResolveImage(hex.substr(0, 8)) == a->id);
  CHECK((*store)->ResolveImage(hex.substr(0, 7)).status().IsNotFound());
  CHECK((*store)->ResolveImage("beta").status().IsNotFound());

  // Two image records sharing an 8-digit prefix make that prefix ambiguous.
  std::string twin = hex.substr(0, 8) + std::string(24, 'f');
  if (twin == hex) twin[31] = 'e';
  REQUIRE((*store)
              ->backend()
              .PutRecord("images/" + twin, R"({"size":1})", RecordCondition::Absent())
              .ok());
  auto amb = (*store)->ResolveImage(hex.substr(0, 8));
  REQUIRE_FALSE(amb.ok());
  CHECK(amb.status().IsInvalidArgument());
  CHECK(amb.status().message().find("ambiguous") != std::string::npos);
  CHECK(amb.status().message().find(hex) != std::string::npos);
  CHECK(amb.status().message().find(twin) != std::string::npos);
  CHECK(*(*store)->ResolveImage(hex.substr(0, 9)) == a->id);
}

TEST_CASE("Store: names move only with force; removal keeps the image", "[store]") {
  TempDir t;
  REQUIRE(Store::Init(t / "s", MemConfig()).ok());
  auto store = Store::Open(t / "s");
  REQUIRE(store.ok());
  auto a = ImportBytes(**store, RandomBytes(5000, 3), {"n"});
  auto b = ImportBytes(**store, RandomBytes(5000, 4));
  REQUIRE(a.ok());
  REQUIRE(b.ok());
  Status s = (*store)->SetName("n", b->id, false);
  CHECK(s.IsAlreadyExists());
  CHECK(*(*store)->ResolveImage("n") == a->id);
  CHECK((*store)->SetName("n", a->id, false).ok());
  CHECK((*store)->SetName("n", b->id, true).ok());
  CHECK(*(*store)->ResolveImage("n") == b->id);
  CHECK((*store)->SetName("bad/name", b->id, false).IsInvalidArgument());
  CHECK((*store)->RemoveName("n").ok());
  CHECK((*store)->RemoveName("n").IsNotFound());
  CHECK((*store)->GetImage(b->id).ok());
  // A failed publication (name taken) writes no image record.
  auto c = ImportBytes(**store, RandomBytes(5000, 5), {"m"});
  REQUIRE(c.ok());
  auto d = ImportBytes(**store, RandomBytes(5000, 6), {"m"});
  CHECK(d.status().IsAlreadyExists());
  CHECK((*store)->ListImages()->size() == 3);
}

TEST_CASE("Store: TouchImage records last use with an injected clock", "[store]") {
  TempDir t;
  REQUIRE(Store::Init(t / "s", MemConfig()).ok());
  int64_t now = 1000;
  auto store = Store::Open(t / "s", [&now] { return now; });
  REQUIRE(store.ok());
  auto a = ImportBytes(**store, RandomBytes(5000, 7));
  REQUIRE(a.ok());
  CHECK((*store)->GetImage(a->id)->created == 1000);
  now = 5000;
  REQUIRE((*store)->TouchImage(a->id).ok());
  CHECK((*store)->GetImage(a->id)->last_used == 5000);
  CHECK((*store)->GetImage(a->id)->created == 1000);
  ImageId missing;
  missing.bytes[0] = 1;
  CHECK((*store)->TouchImage(missing).IsNotFound());
}

TEST_CASE("Store: RemoveImage drops the image and its names", "[store]") {
  TempDir t;
  REQUIRE(Store::Init(t / "s", MemConfig()).ok());
  auto store = Store::Open(t / "s");
  REQUIRE(store.ok());
  auto a = ImportBytes(**store, RandomBytes(5000, 8), {"x", "y"});
  REQUIRE(a.ok());
  REQUIRE((*store)->RemoveImage(a->id).ok());
  CHECK((*store)->GetImage(a->id).status().IsNotFound());
  CHECK((*store)->ResolveImage("x").status().IsNotFound());
  CHECK((*store)->ListImages()->empty());
}
