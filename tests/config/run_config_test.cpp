// The run config: resolution order, validation with sources, the written file, and its documentation.
#include "dla/config/run_config.h"

#include "catch.h"
#include "test_util.h"

namespace dla::config {

TEST_CASE("resolve_run_config applies defaults, then the file, then overrides", "[config]") {
  test::TempDir dir;
  const auto file = (dir / "run.yaml").string();
  test::write_text(file, "run:\n  name: first\n  seed: 7\nlog:\n  level: debug\n");

  const auto defaults = resolve_run_config(std::nullopt, {});
  CHECK(defaults.config.run.name == "default");
  CHECK(defaults.sources.empty());

  const auto resolved = resolve_run_config(file, {"run.seed=9"});
  CHECK(resolved.config.run.name == "first");
  CHECK(resolved.config.run.seed == 9);
  CHECK(resolved.config.log.level == LogLevel::debug);
  CHECK(resolved.sources.at("run.name").line == 2);
}

TEST_CASE("run config validation errors point at the key's source", "[config]") {
  test::TempDir dir;
  const auto file = (dir / "run.yaml").string();
  test::write_text(file, "run:\n  name: a/b\n");
  CHECK_THROWS_WITH(resolve_run_config(file, {}),
                    test::has_substr("run.yaml:2:9: run.name: expected a plain folder name"));
  CHECK_THROWS_WITH(resolve_run_config(std::nullopt, {"run.name=.."}),
                    test::has_substr("--set run.name=..: run.name: expected a plain folder name"));
  CHECK_THROWS_WITH(resolve_run_config(std::nullopt, {"run.seed=-1"}),
                    test::has_substr("expected a value >= 0"));
  CHECK_THROWS_WITH(resolve_run_config(std::nullopt, {"train.cuda_graphs=true", "train.grad_accum_steps=2"}),
                    test::has_substr("train.cuda_graphs") && test::has_substr("train.grad_accum_steps to 1"));
}

TEST_CASE("the resolved run config round-trips through its YAML", "[config]") {
  test::TempDir dir;
  const auto resolved = resolve_run_config(std::nullopt, {"run.name=rt", "log.level=warn", "run.seed=42"});
  const auto file = (dir / "config.yaml").string();
  test::write_text(file, resolved.to_yaml());
  const auto reread = resolve_run_config(file, {});
  CHECK(reread.to_yaml() == resolved.to_yaml());
  CHECK(reread.config.run.seed == 42);
}

TEST_CASE("docs/config.md is what `dla config docs` prints", "[config]") {
  const auto path = std::filesystem::path(DLA_SOURCE_DIR) / "docs" / "config.md";
  INFO("regenerate with: ./build/src/dla config docs > docs/config.md");
  CHECK(test::read_text(path) == run_config_markdown());
}

}  // namespace dla::config
