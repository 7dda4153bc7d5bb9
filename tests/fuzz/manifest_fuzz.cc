// libFuzzer target for Manifest::Decode.
//
// Input: one mode byte, then the candidate encoding. With an odd mode byte the
// trailing checksum is recomputed first, so the fuzzer gets past it and
// explores the body parser. Invariants checked on every input: Decode never
// crashes or over-allocates (ASan), and whatever it accepts is valid and
// canonical: it re-encodes to exactly the input bytes.
// Run (see docs/formats.md): CXX=clang++-16 cmake -B build-fuzz -DIMGFS_FUZZ=ON ...;
// build-fuzz/tests/fuzz/manifest_fuzz -max_total_time=300 CORPUS_DIR tests/fuzz/manifest_corpus
#include <xxhash.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "blockstore/manifest.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace imgfs;
  if (size < 1) return 0;
  bool fix_checksum = data[0] & 1;
  Bytes in(data + 1, data + size);
  if (fix_checksum && in.size() >= 8) {
    uint64_t sum = XXH3_64bits(in.data(), in.size() - 8);
    for (int i = 0; i < 8; ++i) in[in.size() - 8 + i] = static_cast<uint8_t>(sum >> (8 * i));
  }
  // Decode allocates 16 bytes per claimed chunk (up to kMaxManifestChunks, 1 GiB);
  // inputs claiming more than 2^16 chunks are skipped to keep the fuzzer fast.
  // The code paths are the same for larger counts.
  if (in.size() >= 16 && in[5] >= 12 && in[5] <= 22) {
    uint64_t claimed = 0;
    for (int i = 7; i >= 0; --i) claimed = claimed << 8 | in[8 + i];
    if ((claimed >> in[5]) > (uint64_t{1} << 16)) return 0;
  }
  auto m = Manifest::Decode(in);
  if (!m.ok()) {
    if (!m.status().IsCorruption()) {
      std::fprintf(stderr, "Decode failed with %s\n", m.status().ToString().c_str());
      std::abort();
    }
    return 0;
  }
  if (!m->Validate().ok()) {
    std::fprintf(stderr, "Decode accepted an invalid manifest: %s\n",
                 m->Validate().ToString().c_str());
    std::abort();
  }
  if (m->Encode() != in) {
    std::fprintf(stderr, "Decode accepted a non-canonical encoding\n");
    std::abort();
  }
  return 0;
}
