#include "blockstore/units.h"

#include <cctype>
#include <cstdio>
#include <limits>

namespace imgfs {
namespace {

// Reads the leading decimal digits of `text` into `value`; returns how many
// characters were used, or 0 on no digits; sets `overflow` when too large.
size_t ParseDigits(std::string_view text, uint64_t* value, bool* overflow) {
  size_t i = 0;
  uint64_t v = 0;
  *overflow = false;
  while (i < text.size() && std::isdigit(static_cast<unsigned char>(text[i]))) {
    uint64_t d = static_cast<uint64_t>(text[i] - '0');
    if (v > (std::numeric_limits<uint64_t>::max() - d) / 10) *overflow = true;
    v = v * 10 + d;
    ++i;
  }
  *value = v;
  return i;
}

std::string Quote(std::string_view text) {
  std::string out = "'";
  for (char c : text) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", static_cast<unsigned char>(c));
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "'";
}

}  // namespace

Result<uint64_t> ParseSize(std::string_view text) {
  uint64_t value = 0;
  bool overflow = false;
  size_t n = ParseDigits(text, &value, &overflow);
  if (n == 0) {
    return Status::InvalidArgument("invalid size " + Quote(text) +
                                   ": expected a number with an optional K, M, G or T suffix");
  }
  std::string_view suffix = text.substr(n);
  int shift = 0;
  if (!suffix.empty()) {
    switch (std::toupper(static_cast<unsigned char>(suffix[0]))) {
      case 'K': shift = 10; break;
      case 'M': shift = 20; break;
      case 'G': shift = 30; break;
      case 'T': shift = 40; break;
      case 'P': shift = 50; break;
      case 'B': shift = 0; break;
      default:
        return Status::InvalidArgument("invalid size " + Quote(text) +
                                       ": unknown suffix; use K, M, G or T (powers of 1024)");
    }
    std::string_view rest = suffix.substr(1);
    if (suffix[0] != 'B' && suffix[0] != 'b') {
      if (rest == "iB" || rest == "B" || rest == "ib") rest = {};
    }
    if (!rest.empty()) {
      return Status::InvalidArgument("invalid size " + Quote(text) +
                                     ": unexpected characters after the number");
    }
  }
  if (overflow || (shift > 0 && value > (std::numeric_limits<uint64_t>::max() >> shift))) {
    return Status::InvalidArgument("invalid size " + Quote(text) + ": too large");
  }
  return value << shift;
}

std::string FormatSize(uint64_t bytes) {
  static constexpr char kUnits[] = {'P', 'T', 'G', 'M', 'K'};
  static constexpr int kShifts[] = {50, 40, 30, 20, 10};
  if (bytes == 0) return "0";
  for (int i = 0; i < 5; ++i) {
    uint64_t unit = uint64_t{1} << kShifts[i];
    if (bytes % unit == 0) return std::to_string(bytes / unit) + kUnits[i];
  }
  return std::to_string(bytes);
}

std::string FormatSizeExact(uint64_t bytes) {
  for (int shift : {50, 40, 30, 20, 10}) {
    uint64_t unit = uint64_t{1} << shift;
    if (bytes % unit == 0) return FormatSize(bytes);
    if (bytes > UINT64_MAX - unit) continue;
    uint64_t up = (bytes / unit + 1) * unit;
    if (up - bytes <= (unit >> 10)) return FormatSize(up) + " - " + FormatSize(up - bytes);
  }
  return FormatSize(bytes);
}

std::string FormatSizeHuman(uint64_t bytes) {
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024 && u < 6) {
    v /= 1024;
    ++u;
  }
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f %s", v, kUnits[u]);
  return buf;
}

Result<std::chrono::seconds> ParseDuration(std::string_view text) {
  uint64_t value = 0;
  bool overflow = false;
  size_t n = ParseDigits(text, &value, &overflow);
  if (n == 0) {
    return Status::InvalidArgument("invalid duration " + Quote(text) +
                                   ": expected a number with s, m, h, d or w");
  }
  std::string_view suffix = text.substr(n);
  uint64_t mult = 0;
  if (suffix.empty()) {
    if (value != 0) {
      return Status::InvalidArgument("invalid duration " + Quote(text) +
                                     ": give a unit, e.g. 30m, 24h or 7d");
    }
    mult = 1;
  } else if (suffix == "s") {
    mult = 1;
  } else if (suffix == "m" || suffix == "min") {
    mult = 60;
  } else if (suffix == "h") {
    mult = 3600;
  } else if (suffix == "d") {
    mult = 86400;
  } else if (suffix == "w") {
    mult = 7 * 86400;
  } else {
    return Status::InvalidArgument("invalid duration " + Quote(text) +
                                   ": unknown unit; use s, m, h, d or w");
  }
  constexpr uint64_t kMax = static_cast<uint64_t>(std::numeric_limits<int64_t>::max());
  if (overflow || value > kMax / mult) {
    return Status::InvalidArgument("invalid duration " + Quote(text) + ": too large");
  }
  return std::chrono::seconds(static_cast<int64_t>(value * mult));
}

}  // namespace imgfs
