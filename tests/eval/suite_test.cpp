// Suite files: the shipped suites parse, and mistakes are errors naming the file, the task and the key.
#include "dla/eval/suite.h"

#include "catch.h"
#include "test_util.h"

namespace dla::eval {

TEST_CASE("the suites in configs/eval parse", "[eval]") {
  for (const char* name : {"synthetic", "commonsense", "recall", "longcontext"}) {
    CAPTURE(name);
    const auto suite = load_suite(std::filesystem::path(DLA_SOURCE_DIR) / "configs" / "eval" /
                                  (std::string(name) + ".yaml"));
    CHECK(suite.name == name);
    CHECK_FALSE(suite.tasks.empty());
  }
  const auto common = load_suite(std::filesystem::path(DLA_SOURCE_DIR) / "configs/eval/commonsense.yaml");
  CHECK(common.tasks[2].name == "piqa");
  CHECK(common.tasks[2].context == "Question: {goal}\nAnswer:");
  CHECK(common.tasks[2].data.labels_file == "piqa_valid_labels.lst");
}

TEST_CASE("suite mistakes name the file, task and key", "[eval]") {
  test::TempDir dir;
  const auto suite_with = [&](const std::string& task) {
    const auto file = dir / "s.yaml";
    test::write_text(file, "suite: s\ntasks:\n" + task);
    return file;
  };
  CHECK_THROWS_WITH(load_suite(suite_with("  - {name: a, type: cloze, data: {file: x}, contxt: c}\n")),
                    test::has_substr("unknown key 'contxt'"));
  CHECK_THROWS_WITH(load_suite(suite_with("  - {name: a, type: quiz, data: {file: x}}\n")),
                    test::has_substr("type 'quiz' is not one of"));
  CHECK_THROWS_WITH(load_suite(suite_with("  - {name: a, type: cloze}\n")),
                    test::has_substr("'data.file' is required"));
  CHECK_THROWS_WITH(load_suite(suite_with("  - {name: a, type: mqar, num_fewshot: [1]}\n")),
                    test::has_substr("key 'num_fewshot' has the wrong type"));
  CHECK_THROWS_WITH(load_suite(suite_with("  - {name: a, type: mqar}\n  - {name: a, type: mqar}\n")),
                    test::has_substr("two tasks are named 'a'"));
  test::write_text(dir / "bad.yaml", "suite: [unclosed\n");
  CHECK_THROWS_WITH(load_suite(dir / "bad.yaml"), test::has_substr("bad.yaml:"));
  CHECK_THROWS_WITH(load_suite(dir / "none.yaml"), test::has_substr("does not exist"));
}

}  // namespace dla::eval
