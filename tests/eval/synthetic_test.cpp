// Needle-in-a-haystack and passkey prompts: deterministic, sized and placed as asked.
#include "dla/eval/synthetic.h"

#include <regex>

#include "catch.h"
#include "dla/util/error.h"

namespace dla::eval {

TEST_CASE("probe prompts are deterministic, fit their length and put the needle at the depth", "[eval]") {
  const data::ByteTokenizer bytes;
  const std::string essay =
      "It is a truth universally acknowledged. A single man must be in want of a wife. ";
  for (const int variant : {1, 2, 3}) {
    CAPTURE(variant);
    const auto a = niah_prompt(variant, essay, 2000, 0.5, 9, bytes);
    CHECK(a.prompt == niah_prompt(variant, essay, 2000, 0.5, 9, bytes).prompt);
    CHECK(a.prompt != niah_prompt(variant, essay, 2000, 0.5, 10, bytes).prompt);
    const auto size = static_cast<int64_t>(bytes.encode(a.prompt).size());
    CHECK(size <= 2000);
    CHECK(size >= 1800);
    REQUIRE(a.answers.size() == 1);
    const auto at = a.prompt.find("is: " + a.answers[0]);
    REQUIRE(at != std::string::npos);
    const double where = static_cast<double>(at) / static_cast<double>(a.prompt.size());
    CHECK(where > 0.4);
    CHECK(where < 0.6);
    if (variant == 3) {
      CHECK(std::regex_match(
          a.answers[0], std::regex("[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")));
    } else {
      CHECK(std::regex_match(a.answers[0], std::regex("[0-9]{7}")));
    }
  }
  // Deeper needles sit later.
  const auto early = passkey_prompt(1000, 0.1, 3, bytes);
  const auto late = passkey_prompt(1000, 0.9, 3, bytes);
  CHECK(early.answers == late.answers);
  CHECK(early.prompt.find("The pass key is") < late.prompt.find("The pass key is"));
  CHECK_THROWS_AS(passkey_prompt(20, 0.5, 3, bytes), UserError);
}

TEST_CASE("string_match_all is the fraction of answers found, ignoring case", "[eval]") {
  CHECK(string_match_all("The number is 1234567.", {"1234567"}) == 1.0);
  CHECK(string_match_all("ABC-def", {"abc", "DEF", "x"}) == 2.0 / 3.0);
  CHECK(string_match_all("nothing", {"1"}) == 0.0);
}

}  // namespace dla::eval
