// Token shards: round trips at both token widths and every kind of damage detected with the file's name.
#include "dla/data/shard.h"

#include <filesystem>
#include <fstream>
#include <vector>

#include "catch.h"
#include "test_util.h"

namespace dla::test {
namespace {

void overwrite_byte(const std::filesystem::path& path, std::size_t offset, char value) {
  std::fstream file(path, std::ios::in | std::ios::out | std::ios::binary);
  file.seekp(static_cast<std::streamoff>(offset));
  file.put(value);
}

}  // namespace

TEST_CASE("shards round-trip tokens at 16 and 32 bits", "[data]") {
  TempDir dir;
  for (const uint64_t vocab : {uint64_t{258}, uint64_t{65536}, uint64_t{100000}}) {
    CAPTURE(vocab);
    std::vector<uint32_t> tokens;
    for (uint32_t i = 0; i < 1000; ++i)
      tokens.push_back((i * 7919u) % static_cast<uint32_t>(vocab));
    const auto info = data::write_shard(dir / "s.bin", tokens, vocab, 42);
    CHECK(info.token_bytes == (vocab <= 65536 ? 2u : 4u));
    const data::Shard shard(dir / "s.bin");
    CHECK(shard.info().num_tokens == 1000);
    CHECK(shard.info().vocab_size == vocab);
    CHECK(shard.info().tokenizer_fingerprint == 42);
    CHECK(std::filesystem::file_size(dir / "s.bin") == 64 + 1000 * info.token_bytes);
    std::vector<int64_t> out(1000);
    shard.copy(0, out);
    CHECK(std::equal(out.begin(), out.end(), tokens.begin()));
  }
}

TEST_CASE("damaged shards are errors naming the file", "[data]") {
  TempDir dir;
  const std::vector<uint32_t> tokens(100, 7);
  const auto fresh = [&] {
    data::write_shard(dir / "s.bin", tokens, 258, 1);
    return dir / "s.bin";
  };
  std::filesystem::resize_file(fresh(), 100);
  CHECK_THROWS_WITH(data::Shard(dir / "s.bin"), has_substr("s.bin: truncated or damaged token shard"));
  std::filesystem::resize_file(fresh(), 10);
  CHECK_THROWS_WITH(data::Shard(dir / "s.bin"), has_substr("s.bin: truncated token shard"));
  overwrite_byte(fresh(), 0, 'X');
  CHECK_THROWS_WITH(data::Shard(dir / "s.bin"), has_substr("s.bin: not a dla token shard (wrong magic)"));
  overwrite_byte(fresh(), 8, 9);
  CHECK_THROWS_WITH(data::Shard(dir / "s.bin"), has_substr("token shard version 9"));
  overwrite_byte(fresh(), 64 + 11, 3);
  CHECK_THROWS_WITH(data::Shard(dir / "s.bin"), has_substr("s.bin: checksum mismatch"));
  CHECK_THROWS_WITH(data::Shard(dir / "absent.bin"), has_substr("absent.bin"));
  // A writer that broke its vocabulary: the id is found even though the checksum is right.
  data::write_shard(dir / "s.bin", std::vector<uint32_t>{1, 2, 300}, 258, 1);
  CHECK_THROWS_WITH(data::Shard(dir / "s.bin"),
                    has_substr("s.bin: token id 300 is outside the shard's vocabulary of 258"));
}

}  // namespace dla::test
