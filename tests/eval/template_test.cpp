// Field paths and templates.
#include "dla/eval/template.h"

#include "catch.h"
#include "dla/util/error.h"

namespace dla::eval {

TEST_CASE("templates substitute fields, nested paths and indices", "[eval]") {
  const auto doc = nlohmann::json::parse(
      R"({"goal": "boil water", "n": 3, "question": {"stem": "Why?", "choices": [{"text": "a", "label": "A"},
          {"text": "b", "label": "B"}]}})");
  CHECK(render("Question: {goal}\nAnswer:", doc) == "Question: boil water\nAnswer:");
  CHECK(render("{question.stem} {question.choices[1].text} n={n} {{literal}}", doc) ==
        "Why? b n=3 {literal}");
  CHECK(values_at(doc, "question.choices[].label") == std::vector<std::string>{"A", "B"});
  CHECK(values_at(doc, "goal") == std::vector<std::string>{"boil water"});
  CHECK(find_path(doc, "question.choices[5].text") == nullptr);
  CHECK_THROWS_WITH(render("{missing}", doc), test::has_substr("no field 'missing'"));
  CHECK_THROWS_WITH(render("{goal", doc), test::has_substr("without"));
  CHECK_THROWS_AS(values_at(doc, "question.nothing[].text"), UserError);
}

}  // namespace dla::eval
