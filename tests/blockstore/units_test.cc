#include "blockstore/units.h"

#include <catch2/catch.hpp>

using namespace imgfs;

TEST_CASE("ParseSize: plain numbers and powers of 1024", "[units]") {
  CHECK(*ParseSize("0") == 0);
  CHECK(*ParseSize("512") == 512);
  CHECK(*ParseSize("64K") == 64 * 1024);
  CHECK(*ParseSize("64k") == 64 * 1024);
  CHECK(*ParseSize("64KiB") == 64 * 1024);
  CHECK(*ParseSize("10G") == 10ull << 30);
  CHECK(*ParseSize("10GB") == 10ull << 30);
  CHECK(*ParseSize("1T") == 1ull << 40);
  CHECK(*ParseSize("3M") == 3ull << 20);
  CHECK(*ParseSize("100B") == 100);
}

TEST_CASE("ParseSize: garbage and overflow are rejected clearly", "[units]") {
  for (const char* bad : {"", "G", "-1", "1.5G", "10X", "10GG", " 10", "10 G", "0x10", "1Ki"}) {
    auto r = ParseSize(bad);
    INFO(bad);
    CHECK_FALSE(r.ok());
    CHECK(r.status().IsInvalidArgument());
    CHECK(r.status().message().find("invalid size") != std::string::npos);
  }
  CHECK(ParseSize("18446744073709551615").ok());
  auto over = ParseSize("18446744073709551616");
  CHECK(over.status().message().find("too large") != std::string::npos);
  CHECK_FALSE(ParseSize("16384P").ok());
  CHECK_FALSE(ParseSize("17179869184G").ok());
  CHECK(*ParseSize("16777215T") == 16777215ull << 40);
}

TEST_CASE("FormatSize prints in the form ParseSize reads", "[units]") {
  CHECK(FormatSize(0) == "0");
  CHECK(FormatSize(512) == "512");
  CHECK(FormatSize(64 * 1024) == "64K");
  CHECK(FormatSize(10ull << 30) == "10G");
  CHECK(FormatSize(1ull << 40) == "1T");
  CHECK(FormatSize((1ull << 30) + 1024) == "1048577K");
  for (uint64_t v : {1ull, 1000ull, 4096ull, 123456789ull, 5ull << 40, ~0ull}) {
    CHECK(*ParseSize(FormatSize(v)) == v);
  }
  CHECK(FormatSizeExact(1ull << 50) == "1P");
  CHECK(FormatSizeExact((16ull << 40) - 4096) == "16T - 4K");
  CHECK(FormatSizeExact((1ull << 20) - 512) == "1M - 512");
  CHECK(FormatSizeExact(1000000) == "1000000");
  CHECK(FormatSizeExact(UINT64_MAX) == FormatSize(UINT64_MAX));
  CHECK(FormatSizeHuman(1536) == "1.5 KiB");
  CHECK(FormatSizeHuman(10) == "10 B");
}

TEST_CASE("ParseDuration", "[units]") {
  CHECK(ParseDuration("0")->count() == 0);
  CHECK(ParseDuration("90s")->count() == 90);
  CHECK(ParseDuration("30m")->count() == 1800);
  CHECK(ParseDuration("24h")->count() == 86400);
  CHECK(ParseDuration("7d")->count() == 7 * 86400);
  CHECK(ParseDuration("2w")->count() == 14 * 86400);
  CHECK_FALSE(ParseDuration("10").ok());
  CHECK_FALSE(ParseDuration("h").ok());
  CHECK_FALSE(ParseDuration("5y").ok());
  CHECK_FALSE(ParseDuration("99999999999999999999d").ok());
}
