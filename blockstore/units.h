// Sizes and durations as the command line reads and prints them.
//
// Sizes: a decimal number with an optional suffix K, M, G, T, P (powers of
// 1024; "KiB", "k" and a trailing "B" are accepted too). Durations: a decimal
// number with s, m, h, d or w ("0" alone is allowed).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>

#include "blockstore/status.h"

namespace imgfs {

// Parses "512", "64K", "10G", "1T". Rejects garbage, negatives, fractions and
// values that overflow 64 bits with an InvalidArgument naming the input.
Result<uint64_t> ParseSize(std::string_view text);

// Prints a size in the largest unit that divides it exactly ("64K", "10G",
// "1000"), so that ParseSize(FormatSize(n)) == n.
std::string FormatSize(uint64_t bytes);

// Prints a size exactly and briefly: as FormatSize when a unit divides it
// ("1P"), as a unit multiple less a small rest when that is close ("16T - 4K",
// ext4's largest file), else in bytes.
std::string FormatSizeExact(uint64_t bytes);

// Prints a size for people: "1.5 GiB", "512 B".
std::string FormatSizeHuman(uint64_t bytes);

// Parses "0", "90s", "30m", "24h", "7d", "2w".
Result<std::chrono::seconds> ParseDuration(std::string_view text);

}  // namespace imgfs
