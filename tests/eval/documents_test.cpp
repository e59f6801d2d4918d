// Reading evaluation data files, and the errors for broken ones.
#include "dla/eval/documents.h"

#include "catch.h"
#include "test_util.h"

namespace dla::eval {
namespace {

DocumentSource source(const std::string& file, const std::string& format = "jsonl",
                      const std::vector<std::string>& fields = {}, const std::string& split = "none",
                      const std::string& labels_file = "") {
  DocumentSource s;
  s.files = {file};
  s.format = format;
  s.fields = fields;
  s.split = split;
  s.labels_file = labels_file;
  return s;
}

}  // namespace

TEST_CASE("documents come from JSON lines, JSON arrays, line groups, text and label files", "[eval]") {
  test::TempDir dir;
  test::write_text(dir / "a.jsonl", "{\"x\": 1}\n\n{\"x\": 2}\n");
  test::write_text(dir / "labels.lst", "1\n0\n");
  test::write_text(dir / "b.json", R"([{"y": "p"}, {"y": "q"}, {"y": "r"}])");
  test::write_text(dir / "c.txt", "ctx one\n2\nctx two\n0\n");
  test::write_text(dir / "wiki.txt",
                   " \n = Alpha = \n text a \n = = Sub = = \n more \n = Beta = \n text b \n");
  test::write_text(
      dir / "adapters.json",
      R"([{"instruction": "Please choose the correct answer to the question: Why?\n\nAnswer1: red Answer2: the blue one\n\nAnswer format: answer1/answer2", "answer": "answer2"}])");

  const auto a = load_documents(source("a.jsonl", "jsonl", {}, "none", "labels.lst"), dir.path());
  REQUIRE(a.size() == 2);
  CHECK(a[1].at("x") == 2);
  CHECK(a[0].at("label") == 1);
  CHECK(load_documents(source("b.json", "json"), dir.path()).size() == 3);
  const auto c = load_documents(source("c.txt", "lines", {"ctx", "label"}), dir.path());
  REQUIRE(c.size() == 2);
  CHECK(c[1].at("ctx") == "ctx two");
  const auto wiki = load_documents(source("wiki.txt", "text", {}, "wikitext"), dir.path());
  REQUIRE(wiki.size() == 2);
  CHECK_THAT(wiki[0].at("text").get<std::string>(), test::has_substr("= = Sub = ="));
  CHECK_THAT(wiki[1].at("text").get<std::string>(), test::has_substr("text b"));
  const auto adapters = load_documents(source("adapters.json", "llm_adapters"), dir.path());
  REQUIRE(adapters.size() == 1);
  CHECK(adapters[0].at("question") == "Why?");
  CHECK(adapters[0].at("choices") == nlohmann::json::array({"red", "the blue one"}));
  CHECK(adapters[0].at("label") == 1);
  CHECK(wikitext_detokenize("a @-@ b , c ( d ) 3 @.@ 5") == "a-b, c (d) 3.5");
}

TEST_CASE("missing and malformed data files are errors naming the file and line", "[eval]") {
  test::TempDir dir;
  CHECK_THROWS_AS(load_documents(source("nope.jsonl"), dir.path()), MissingDataFile);
  test::write_text(dir / "bad.jsonl", "{\"x\": 1}\n{\"x\": \n");
  CHECK_THROWS_WITH(load_documents(source("bad.jsonl"), dir.path()),
                    test::has_substr("bad.jsonl:2: not valid JSON"));
  test::write_text(dir / "short.txt", "a\nb\nc\n");
  CHECK_THROWS_WITH(load_documents(source("short.txt", "lines", {"p", "q"}), dir.path()),
                    test::has_substr("ends inside a record of 2 lines"));
  test::write_text(dir / "a.jsonl", "{}\n{}\n");
  test::write_text(dir / "labels.lst", "0\n");
  CHECK_THROWS_WITH(load_documents(source("a.jsonl", "jsonl", {}, "none", "labels.lst"), dir.path()),
                    test::has_substr("1 labels for 2 documents"));
  CHECK_THROWS_WITH(load_documents(source("a.jsonl", "yaml"), dir.path()),
                    test::has_substr("data format 'yaml'"));
}

}  // namespace dla::eval
