// The dla model checkpoint directory: exact round trip, replacement, and errors that name the file.
#include "dla/checkpoint/model_checkpoint.h"

#include <ATen/ATen.h>

#include "catch.h"
#include "checkpoint/checkpoint_testing.h"
#include "dla/io/safetensors.h"

namespace dla::checkpoint {
namespace {

namespace fs = std::filesystem;
using test::has_substr;

// A saved checkpoint of a small, perturbed GDN model in `dir`; returns the model.
model::CausalLM save_small(const fs::path& dir, const config::ResolvedConfig& config, uint64_t seed) {
  model::CausalLM model(config.config.model);
  test::perturb_parameters(*model, seed);
  save_model_checkpoint(dir, config, *model);
  return model;
}

void check_same_parameters(model::CausalLMImpl& expected, model::CausalLMImpl& got) {
  const auto got_params = got.named_parameters();
  REQUIRE(got_params.size() == expected.named_parameters().size());
  for (const auto& item : expected.named_parameters()) {
    CAPTURE(item.key());
    const auto* tensor = got_params.find(item.key());
    REQUIRE(tensor != nullptr);
    CHECK(tensor->scalar_type() == at::kFloat);
    CHECK(at::equal(*tensor, item.value()));
  }
}

}  // namespace

TEST_CASE("save_model_checkpoint then load_model_checkpoint gives the same weights and config",
          "[checkpoint]") {
  for (const auto mixer : {model::MixerKind::gdn, model::MixerKind::mamba2}) {
    CAPTURE(config::enum_name(mixer));
    test::TempDir dir;
    const auto config = test::small_model_config(mixer, {"run.seed=7", "optim.lr=3e-4", "train.steps=17"});
    auto model = save_small(dir / "ckpt", config, 1);
    CHECK(fs::is_regular_file(dir / "ckpt" / "config.yaml"));
    CHECK(fs::is_regular_file(dir / "ckpt" / "model.safetensors"));
    CHECK_FALSE(fs::exists(dir / ("ckpt.tmp." + std::to_string(::getpid()))));

    auto loaded = load_model_checkpoint(dir / "ckpt");
    CHECK(loaded.config.to_yaml() == config.to_yaml());
    check_same_parameters(*model, *loaded.model);
  }
}

TEST_CASE("save_model_checkpoint replaces a checkpoint but nothing else", "[checkpoint]") {
  test::TempDir dir;
  const auto config = test::small_model_config(model::MixerKind::gdn);
  save_small(dir / "ckpt", config, 1);
  auto second = save_small(dir / "ckpt/", config, 2);  // a trailing slash names the same directory
  check_same_parameters(*second, *load_model_checkpoint(dir / "ckpt").model);
  CHECK(std::distance(fs::directory_iterator(dir.path()), fs::directory_iterator()) == 1);

  fs::create_directories(dir / "data");
  test::write_text(dir / "data" / "notes.txt", "mine");
  model::CausalLM model(config.config.model);
  CHECK_THROWS_WITH(save_model_checkpoint(dir / "data", config, *model),
                    has_substr("data") && has_substr("not a dla checkpoint"));
  CHECK(test::read_text(dir / "data" / "notes.txt") == "mine");
}

TEST_CASE("load_model_checkpoint errors name the missing or bad file", "[checkpoint]") {
  test::TempDir dir;
  const auto config = test::small_model_config(model::MixerKind::gdn);
  const fs::path ckpt = dir / "ckpt";

  CHECK_THROWS_WITH(load_model_checkpoint(dir / "absent"),
                    has_substr("absent") && has_substr("does not exist"));

  SECTION("a truncated model.safetensors") {
    save_small(ckpt, config, 1);
    fs::resize_file(ckpt / "model.safetensors", fs::file_size(ckpt / "model.safetensors") / 2);
    CHECK_THROWS_AS(load_model_checkpoint(ckpt), UserError);
    CHECK_THROWS_WITH(load_model_checkpoint(ckpt), has_substr((ckpt / "model.safetensors").string()));
  }
  SECTION("a missing config.yaml") {
    save_small(ckpt, config, 1);
    fs::remove(ckpt / "config.yaml");
    CHECK_THROWS_WITH(load_model_checkpoint(ckpt),
                      has_substr((ckpt / "config.yaml").string()) && has_substr("missing"));
  }
  SECTION("a missing model.safetensors") {
    save_small(ckpt, config, 1);
    fs::remove(ckpt / "model.safetensors");
    CHECK_THROWS_WITH(load_model_checkpoint(ckpt), has_substr((ckpt / "model.safetensors").string()));
  }
  SECTION("a bad config.yaml names the file, line and key") {
    save_small(ckpt, config, 1);
    test::write_text(ckpt / "config.yaml", "model:\n  hiden_size: 32\n");
    CHECK_THROWS_WITH(load_model_checkpoint(ckpt),
                      has_substr("config.yaml:2:3") && has_substr("model.hidden_size"));
  }
  SECTION("a config.yaml that does not fit the tensors") {
    save_small(ckpt, config, 1);
    const auto other = test::small_model_config(model::MixerKind::gdn, {"model.hidden_size=48"});
    const std::string yaml = other.to_yaml();
    test::write_text(ckpt / "config.yaml", yaml);
    CHECK_THROWS_WITH(load_model_checkpoint(ckpt), has_substr((ckpt / "model.safetensors").string()) &&
                                                       has_substr("'embeddings.weight' has shape [64, 32]"));
  }
  SECTION("a safetensors file without dla's format mark") {
    auto model = save_small(ckpt, config, 1);
    io::NamedTensors tensors;
    for (const auto& item : model->named_parameters())
      tensors.emplace_back(item.key(), item.value().detach());
    io::save_safetensors(ckpt / "model.safetensors", tensors);
    CHECK_THROWS_WITH(load_model_checkpoint(ckpt),
                      has_substr("model.safetensors") && has_substr("not a dla model file"));
  }
}

}  // namespace dla::checkpoint
