// The data and tokenizer commands end to end: prepare prints its summary, the tokenizer commands round-trip,
// bad input exits 1 naming the file.
#include <nlohmann/json.hpp>

#include "catch.h"
#include "test_util.h"

namespace dla::test {

TEST_CASE("dla data prepare and dla tokenizer encode/decode", "[data][cli]") {
  TempDir dir;
  write_text(dir / "a.txt", "Hello, world.\n");
  write_text(dir / "b.txt", "Second document.\n");
  const auto prepared =
      run_dla_stdout("data prepare --input a.txt --input b.txt --out ds --val-fraction 0.5", dir.path());
  INFO(prepared.output);
  REQUIRE(prepared.status == 0);
  const auto summary = nlohmann::json::parse(prepared.output);
  CHECK(summary.at("documents_train") == 1);
  CHECK(summary.at("documents_val") == 1);
  CHECK(summary.at("tokens_train") == 14 + 1);

  const auto encoded = run_dla_stdout("tokenizer encode --text 'Hi!'", dir.path());
  REQUIRE(encoded.status == 0);
  CHECK(encoded.output == "72 105 33\n");
  const auto decoded = run_dla_stdout("tokenizer decode --ids '72 105 33 256'", dir.path());
  REQUIRE(decoded.status == 0);
  CHECK(decoded.output == "Hi!\n");

  const auto missing = run_dla("data prepare --input nothing.txt --out ds2", dir.path());
  CHECK(missing.status == 1);
  CHECK_THAT(missing.output, has_substr("nothing.txt: no such file"));
  const auto outside = run_dla("tokenizer decode --ids '300'", dir.path());
  CHECK(outside.status == 1);
  CHECK_THAT(outside.output,
             has_substr("token 300 at position 0 is outside the model's vocabulary [0, 258)"));
  const auto bench = run_dla_stdout("bench data --data ds -T 4 -B 2 --batches 3", dir.path());
  INFO(bench.output);
  REQUIRE(bench.status == 0);
  CHECK(nlohmann::json::parse(bench.output).at("tokens_per_s").get<double>() > 0);
}

}  // namespace dla::test
