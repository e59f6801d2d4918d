// The config engine on a test-only config tree that uses every field type.
#include "dla/config/schema.h"

#include "catch.h"
#include "test_util.h"

namespace dla::config {

enum class Color { red, green, blue };
template <>
struct EnumNames<Color> {
  static constexpr std::array<std::string_view, 3> names{"red", "green", "blue"};
};

namespace {

struct Inner {
  double rate = 0.5;
  Color color = Color::green;
  std::vector<int64_t> sizes = {1, 2};

  template <class V>
  void visit(V& v) {
    v.field("rate", rate, "a rate", Bounds::between(0, 1));
    v.field("color", color, "a color");
    v.field("sizes", sizes, "some sizes");
  }
};

struct Outer {
  int64_t steps = 10;
  bool verbose = false;
  std::string name = "x";
  std::vector<std::string> paths;
  Inner inner;

  template <class V>
  void visit(V& v) {
    v.field("steps", steps, "number of steps", Bounds::positive());
    v.field("verbose", verbose, "talk more");
    v.field("name", name, "a name");
    v.field("paths", paths, "input paths");
    v.section("inner", inner, "the inner section");
  }
};

void apply_text(const Schema& schema, const std::string& text, SourceMap& sources) {
  apply_node(schema, YAML::Load(text), "test.yaml", sources);
}

}  // namespace

TEST_CASE("config fields decode every type from YAML", "[config]") {
  Outer config;
  const Schema schema = Schema::of(config);
  SourceMap sources;
  apply_text(schema,
             "steps: 2e3\nverbose: yes\nname: run-1\npaths: [a, b]\n"
             "inner:\n  rate: 0.25\n  color: blue\n  sizes: [4, 8, 16]\n",
             sources);
  CHECK(config.steps == 2000);
  CHECK(config.verbose);
  CHECK(config.name == "run-1");
  CHECK(config.paths == std::vector<std::string>{"a", "b"});
  CHECK(config.inner.rate == 0.25);
  CHECK(config.inner.color == Color::blue);
  CHECK(config.inner.sizes == std::vector<int64_t>{4, 8, 16});
  REQUIRE(sources.count("inner.color") == 1);
  CHECK(sources.at("inner.color").line == 7);
  CHECK(sources.at("inner.color").column == 10);
}

TEST_CASE("config overrides apply after the file and win", "[config]") {
  Outer config;
  const Schema schema = Schema::of(config);
  SourceMap sources;
  apply_text(schema, "steps: 5\ninner:\n  rate: 0.1\n", sources);
  apply_override(schema, "inner.rate=0.75", sources);
  apply_override(schema, "paths=[x, y, z]", sources);
  apply_override(schema, "name=", sources);
  CHECK(config.steps == 5);
  CHECK(config.inner.rate == 0.75);
  CHECK(config.paths.size() == 3);
  CHECK(sources.at("inner.rate").describe() == "--set inner.rate=0.75");
  CHECK_THROWS_WITH(apply_override(schema, "steps", sources), test::has_substr("expected KEY=VALUE"));
  CHECK_THROWS_WITH(apply_override(schema, "=3", sources), test::has_substr("expected KEY=VALUE"));
}

TEST_CASE("unknown config keys are errors that suggest the nearest key", "[config]") {
  Outer config;
  const Schema schema = Schema::of(config);
  SourceMap sources;
  CHECK_THROWS_WITH(apply_text(schema, "steps: 1\ninner:\n  rat: 0.3\n", sources),
                    test::has_substr("test.yaml:3:3") && test::has_substr("unknown key 'inner.rat'") &&
                        test::has_substr("did you mean 'inner.rate'?"));
  // The right name in the wrong section.
  CHECK_THROWS_WITH(apply_text(schema, "color: red\n", sources),
                    test::has_substr("did you mean 'inner.color'?"));
  // Nothing close: the valid keys of the section are listed.
  CHECK_THROWS_WITH(apply_text(schema, "inner:\n  zzzzzzzz: 1\n", sources),
                    test::has_substr("valid keys in 'inner': rate, color, sizes"));
  CHECK_THROWS_WITH(
      apply_override(schema, "inner.colour=red", sources),
      test::has_substr("--set inner.colour=red") && test::has_substr("did you mean 'inner.color'?"));
}

TEST_CASE("config type and range errors name the key, the file and the line", "[config]") {
  Outer config;
  const Schema schema = Schema::of(config);
  SourceMap sources;
  CHECK_THROWS_WITH(apply_text(schema, "\n\nsteps: many\n", sources),
                    test::has_substr("test.yaml:3:8: steps: expected an integer, got 'many'"));
  CHECK_THROWS_WITH(apply_text(schema, "steps: 0\n", sources),
                    test::has_substr("steps: expected a value > 0"));
  CHECK_THROWS_WITH(apply_text(schema, "steps: 1.5\n", sources), test::has_substr("expected an integer"));
  CHECK_THROWS_WITH(apply_text(schema, "verbose: maybe\n", sources),
                    test::has_substr("expected true or false"));
  CHECK_THROWS_WITH(apply_text(schema, "inner:\n  rate: 1.5\n", sources),
                    test::has_substr("test.yaml:2:9: inner.rate: expected a value in [0, 1], got '1.5'"));
  CHECK_THROWS_WITH(apply_text(schema, "inner:\n  rate: nan\n", sources),
                    test::has_substr("expected a number"));
  CHECK_THROWS_WITH(apply_text(schema, "inner:\n  color: bleu\n", sources),
                    test::has_substr("expected one of red, green, blue, got 'bleu'; did you mean 'blue'?"));
  CHECK_THROWS_WITH(apply_text(schema, "inner:\n  sizes: 3\n", sources),
                    test::has_substr("expected list of int"));
  CHECK_THROWS_WITH(apply_text(schema, "inner: 3\n", sources), test::has_substr("'inner' is a section"));
  CHECK_THROWS_WITH(apply_text(schema, "name: [a]\n", sources),
                    test::has_substr("expected a string, got a list"));
  CHECK_THROWS_WITH(apply_text(schema, "steps: 1\nsteps: 2\n", sources),
                    test::has_substr("test.yaml:2:1") && test::has_substr("duplicate key 'steps'"));
  CHECK_THROWS_WITH(apply_text(schema, "[1, 2]\n", sources), test::has_substr("expected a mapping"));
  CHECK_THROWS_AS(apply_text(schema, "steps: many\n", sources), UserError);
}

TEST_CASE("config files: invalid YAML, missing files and extends", "[config]") {
  test::TempDir dir;
  Outer config;
  const Schema schema = Schema::of(config);
  SourceMap sources;

  test::write_text(dir / "broken.yaml", "steps: 1\ninner: [unclosed\n");
  CHECK_THROWS_WITH(apply_file(schema, (dir / "broken.yaml").string(), sources),
                    test::has_substr("broken.yaml:") && test::has_substr("invalid YAML"));
  CHECK_THROWS_WITH(apply_file(schema, (dir / "absent.yaml").string(), sources),
                    test::has_substr("absent.yaml' does not exist"));

  test::write_text(dir / "base.yaml", "steps: 7\nname: base\ninner:\n  rate: 0.2\n");
  test::write_text(dir / "child.yaml", "extends: base.yaml\nname: child\n");
  apply_file(schema, (dir / "child.yaml").string(), sources);
  CHECK(config.steps == 7);
  CHECK(config.name == "child");
  CHECK(config.inner.rate == 0.2);
  CHECK(sources.at("steps").file == (dir / "base.yaml").string());

  test::write_text(dir / "loop.yaml", "extends: loop.yaml\n");
  CHECK_THROWS_WITH(apply_file(schema, (dir / "loop.yaml").string(), sources),
                    test::has_substr("extends itself"));
  test::write_text(dir / "orphan.yaml", "extends: nowhere.yaml\n");
  CHECK_THROWS_WITH(apply_file(schema, (dir / "orphan.yaml").string(), sources),
                    test::has_substr("orphan.yaml:1:10") && test::has_substr("nowhere.yaml' does not exist"));
}

TEST_CASE("config written as YAML reads back to the same values", "[config]") {
  Outer config;
  config.steps = 123456789012;
  config.inner.rate = 0.1 + 0.2;  // not exactly representable in short decimal form
  config.inner.color = Color::red;
  config.paths = {"a b", "c: d"};
  config.name = "";
  const std::string text = Schema::of(config).to_yaml_text();

  Outer reread;
  reread.steps = 1;
  reread.inner.sizes = {};
  SourceMap sources;
  apply_node(Schema::of(reread), YAML::Load(text), "dump.yaml", sources);
  CHECK(reread.steps == config.steps);
  CHECK(reread.inner.rate == config.inner.rate);
  CHECK(reread.inner.color == config.inner.color);
  CHECK(reread.inner.sizes == config.inner.sizes);
  CHECK(reread.paths == config.paths);
  CHECK(reread.name == config.name);
  CHECK(Schema::of(reread).to_yaml_text() == text);
}

TEST_CASE("config markdown documents every key with type, default and meaning", "[config]") {
  Outer config;
  const Schema schema = Schema::of(config);
  const std::string markdown = schema.to_markdown();
  CHECK(schema.find_field("nope") == nullptr);
  for (const auto& field : schema.fields())
    CHECK_THAT(markdown, test::has_substr("`" + field.key + "`"));
  CHECK_THAT(markdown, test::has_substr("| `inner.rate` | float, in [0, 1] | `0.5` | a rate |"));
  CHECK_THAT(markdown, test::has_substr("one of red, green, blue"));
  CHECK_THAT(markdown, test::has_substr("the inner section"));
}

}  // namespace dla::config
