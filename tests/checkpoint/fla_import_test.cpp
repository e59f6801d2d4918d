// `dla import-fla` and `dla score` end to end: fla's GatedDeltaNetForCausalLM fixture scored to fla's loss,
// a Mamba-2 round trip through fla's format, and errors that name the key or tensor.
#include "dla/checkpoint/fla_import.h"

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>

#include "catch.h"
#include "checkpoint/checkpoint_testing.h"
#include "dla/checkpoint/fla_names.h"
#include "dla/io/safetensors.h"
#include "dla/util/error.h"
#include "ops/op_testing.h"

namespace dla::checkpoint {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using test::has_substr;

// The fixture's fla model as an fla checkpoint directory: config.json is the "config" metadata, and
// model.safetensors the `param.*` tensors under their fla names.
void write_fixture_fla_dir(const io::SafetensorsReader& fixture, const fs::path& dir) {
  io::NamedTensors tensors;
  for (const auto& name : fixture.names()) {
    if (name.starts_with("param.")) tensors.emplace_back(name.substr(6), fixture.tensor(name));
  }
  test::write_fla_dir(dir, fixture.metadata().at("config"), tensors);
}

json parse_score(const test::CommandResult& result) {
  INFO(result.output);
  REQUIRE(result.status == 0);
  return json::parse(result.output);
}

}  // namespace

TEST_CASE("import-fla then score reproduces fla's loss on the GatedDeltaNetForCausalLM fixture",
          "[checkpoint][cli]") {
  const auto path = test::fixture_file("fla/gdn_model.safetensors");
  const io::SafetensorsReader fixture(path);
  test::TempDir dir;
  write_fixture_fla_dir(fixture, dir / "fla");

  const auto imported = test::run_dla("import-fla --in fla --out ckpt", dir.path());
  INFO(imported.output);
  REQUIRE(imported.status == 0);
  CHECK_THAT(imported.output, has_substr("gated_deltanet") && has_substr("ckpt"));

  // The weights arrive unchanged under dla's names.
  auto loaded = load_model_checkpoint(dir / "ckpt");
  const json config = json::parse(fixture.metadata().at("config"));
  CHECK(loaded.config.config.model.mixer == model::MixerKind::gdn);
  CHECK(loaded.config.config.model.vocab_size == config.at("vocab_size").get<int64_t>());
  CHECK(loaded.config.config.model.num_layers == config.at("num_hidden_layers").get<int64_t>());
  for (const auto& item : loaded.model->named_parameters()) {
    CAPTURE(item.key());
    CHECK(at::equal(item.value(),
                    fixture.tensor("param." + *fla_name_from_dla(item.key(), model::MixerKind::gdn))));
  }
  CHECK_THAT(imported.output, has_substr(std::to_string(loaded.model->num_parameters())));

  // fla's loss is the mean over the [B,T] batch; every row has T tokens, so it is the mean of the row losses.
  const at::Tensor ids = fixture.tensor("input_ids").to(at::kLong);
  test::write_text(dir / "ids.txt", test::ids_text(ids));
  const json all =
      parse_score(test::run_dla_stdout("score --checkpoint ckpt --ids-file ids.txt", dir.path()));
  const double expected = fixture.tensor("loss").item<double>();
  CAPTURE(all.dump(), expected);
  CHECK(std::abs(all.at("mean_loss").get<double>() - expected) <= 1e-4);
  CHECK(all.at("tokens").get<int64_t>() == ids.numel());
  CHECK(all.at("sequences").get<int64_t>() == ids.size(0));
  CHECK(all.at("predicted_tokens").get<int64_t>() == ids.numel() - ids.size(0));
  CHECK(std::abs(all.at("perplexity").get<double>() - std::exp(all.at("mean_loss").get<double>())) <= 1e-9);

  const std::string first_row = test::ids_text(ids.narrow(0, 0, 1));
  const json first = parse_score(test::run_dla_stdout(
      "score --checkpoint ckpt --ids '" + first_row.substr(0, first_row.size() - 1) + "'", dir.path()));
  CHECK(first.at("tokens").get<int64_t>() == ids.size(1));
  CHECK(std::abs(first.at("mean_loss").get<double>() - all.at("sequence_losses")[0].get<double>()) <= 1e-6);
}

TEST_CASE("Mamba-2 round trip through fla's format keeps the weights and the score", "[checkpoint][cli]") {
  const auto config = test::small_model_config(model::MixerKind::mamba2);
  model::CausalLM original(config.config.model);
  test::perturb_parameters(*original, 3);
  test::TempDir dir;
  // Hand-written, with the Infinity that Python's json writes for Mamba2Config.dt_limit.
  const std::string config_json = R"({
    "model_type": "mamba2", "architectures": ["Mamba2ForCausalLM"],
    "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "norm_eps": 1e-05,
    "head_dim": 16, "state_size": 8, "expand": 2, "n_groups": 1, "conv_kernel": 4,
    "use_conv_bias": true, "use_bias": false, "tie_word_embeddings": false, "rmsnorm": true,
    "norm_before_gate": false, "D_has_hdim": false, "dt_limit": [0.0, Infinity],
    "A_init_range": [1, 16], "chunk_size": 256, "hidden_act": "silu", "num_heads": 4
  })";
  test::write_fla_dir(dir / "fla", config_json, test::fla_named_parameters(*original));

  const auto imported = test::run_dla("import-fla --in fla --out ckpt", dir.path());
  INFO(imported.output);
  REQUIRE(imported.status == 0);
  CHECK_THAT(imported.output, has_substr("mamba2"));

  auto loaded = load_model_checkpoint(dir / "ckpt");
  const auto& options = loaded.config.config.model;
  CHECK(options.mixer == model::MixerKind::mamba2);
  CHECK_FALSE(options.use_mlp);
  CHECK(options.norm_eps == 1e-5);
  CHECK(options.mamba2.state_size == 8);
  const auto imported_params = loaded.model->named_parameters();
  REQUIRE(imported_params.size() == original->named_parameters().size());
  for (const auto& item : original->named_parameters()) {
    CAPTURE(item.key());
    REQUIRE(imported_params.find(item.key()) != nullptr);
    CHECK(at::equal(imported_params[item.key()], item.value()));
  }

  const at::Tensor ids = at::randint(64, {2, 40}, at::make_generator<at::CPUGeneratorImpl>(5), at::kLong);
  test::write_text(dir / "ids.txt", test::ids_text(ids));
  const json score =
      parse_score(test::run_dla_stdout("score --checkpoint ckpt --ids-file ids.txt", dir.path()));
  const double expected = test::score_in_process(*original, ids);
  CAPTURE(score.dump(), expected);
  CHECK(std::abs(score.at("mean_loss").get<double>() - expected) <= 1e-6);
}

TEST_CASE("import of tied embeddings works with and without a stored lm_head.weight", "[checkpoint]") {
  const auto config = test::small_model_config(model::MixerKind::gdn, {"model.tie_embeddings=true"});
  model::CausalLM original(config.config.model);
  test::perturb_parameters(*original, 4);
  const std::string config_json = test::fla_config_json(config.config.model).dump();
  auto tensors = test::fla_named_parameters(*original);
  for (const bool with_head : {false, true}) {
    CAPTURE(with_head);
    test::TempDir dir;
    if (with_head) tensors.emplace_back("lm_head.weight", original->embeddings->weight.detach().clone());
    test::write_fla_dir(dir / "fla", config_json, tensors);
    auto loaded = import_fla_checkpoint(dir / "fla");
    CHECK(loaded.config.config.model.tie_embeddings);
    CHECK(at::equal(loaded.model->embeddings->weight, original->embeddings->weight));
    const at::Tensor ids = at::arange(20, at::kLong).unsqueeze(0);
    CHECK(test::score_in_process(*loaded.model, ids) == test::score_in_process(*original, ids));
  }
}

TEST_CASE("import reads weights sharded over files listed in model.safetensors.index.json", "[checkpoint]") {
  const auto config = test::small_model_config(model::MixerKind::gdn);
  model::CausalLM original(config.config.model);
  test::perturb_parameters(*original, 6);
  const auto tensors = test::fla_named_parameters(*original);
  test::TempDir dir;
  fs::create_directories(dir / "fla");
  test::write_text(dir / "fla" / "config.json", test::fla_config_json(config.config.model).dump());
  io::NamedTensors shards[2];
  json weight_map = json::object();
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    shards[i % 2].push_back(tensors[i]);
    weight_map[tensors[i].first] = fmt::format("model-{:05}-of-00002.safetensors", i % 2 + 1);
  }
  for (int i = 0; i < 2; ++i)
    io::save_safetensors(dir / "fla" / fmt::format("model-{:05}-of-00002.safetensors", i + 1), shards[i]);
  test::write_text(dir / "fla" / "model.safetensors.index.json", json{{"weight_map", weight_map}}.dump());

  auto loaded = import_fla_checkpoint(dir / "fla");
  for (const auto& item : original->named_parameters()) {
    CAPTURE(item.key());
    CHECK(at::equal(loaded.model->named_parameters()[item.key()], item.value()));
  }
  fs::remove(dir / "fla" / "model-00002-of-00002.safetensors");
  CHECK_THROWS_WITH(import_fla_checkpoint(dir / "fla"), has_substr("model.safetensors.index.json") &&
                                                            has_substr("model-00002-of-00002.safetensors"));
}

TEST_CASE("import-fla errors name the file and the key or tensor", "[checkpoint][cli]") {
  const auto path = test::fixture_file("fla/gdn_model.safetensors");
  const io::SafetensorsReader fixture(path);
  test::TempDir dir;
  write_fixture_fla_dir(fixture, dir / "fla");
  const json config = json::parse(fixture.metadata().at("config"));
  // Through the binary (exit status 1, nothing written) or, to save its start-up time, in this process.
  const auto check_fails = [&](const std::vector<std::string>& needles, bool through_cli = false) {
    std::string message;
    if (through_cli) {
      const auto result = test::run_dla("import-fla --in fla --out ckpt", dir.path());
      CHECK(result.status == 1);
      CHECK_FALSE(fs::exists(dir / "ckpt"));
      message = result.output;
    } else {
      try {
        import_fla_checkpoint(dir / "fla");
      } catch (const UserError& e) {
        message = e.what();
      }
    }
    INFO(message);
    for (const auto& needle : needles)
      CHECK_THAT(message, has_substr(needle));
  };

  SECTION("an unsupported model_type") {
    json bad = config;
    bad["model_type"] = "rwkv7";
    test::write_text(dir / "fla" / "config.json", bad.dump());
    check_fails({"config.json", "\"rwkv7\" is not supported", "gated_deltanet", "mamba2"}, true);
  }
  SECTION("a missing config key") {
    json bad = config;
    bad.erase("hidden_size");
    test::write_text(dir / "fla" / "config.json", bad.dump());
    check_fails({"config.json", "'hidden_size' is missing"}, true);
  }
  SECTION("a mistyped config key") {
    json bad = config;
    bad["num_heads"] = "2";
    test::write_text(dir / "fla" / "config.json", bad.dump());
    check_fails({"config.json", "'num_heads': expected an integer, got \"2\""});
  }
  SECTION("an out-of-range config key") {
    json bad = config;
    bad["num_hidden_layers"] = 0;
    test::write_text(dir / "fla" / "config.json", bad.dump());
    check_fails({"config.json", "'num_hidden_layers'", ">= 1"});
  }
  SECTION("an option dla does not implement") {
    json bad = config;
    bad["hidden_act"] = "gelu";
    test::write_text(dir / "fla" / "config.json", bad.dump());
    check_fails({"config.json", "hidden_act = \"gelu\" is not supported"});
  }
  SECTION("invalid JSON") {
    test::write_text(dir / "fla" / "config.json", "{\"model_type\": ");
    check_fails({"config.json", "invalid JSON"});
  }
  SECTION("an extra tensor, a missing tensor and a mis-shaped tensor, all in one message") {
    io::NamedTensors tensors;
    for (const auto& name : fixture.names()) {
      if (!name.starts_with("param.") || name == "param.model.norm.weight") continue;
      const std::string fla = name.substr(6);
      tensors.emplace_back(fla, fla == "model.layers.1.attn.A_log" ? at::zeros({3}) : fixture.tensor(name));
    }
    tensors.emplace_back("model.layers.0.attn.r_proj.weight", at::zeros({2, 2}));
    tensors.emplace_back("model.rotary.inv_freq", at::zeros({4}));
    io::save_safetensors(dir / "fla" / "model.safetensors", tensors);
    check_fails({"model.safetensors", "unexpected tensor 'model.layers.0.attn.r_proj.weight' [2, 2]",
                 "unexpected tensor 'model.rotary.inv_freq' [4]", "missing tensor 'model.norm.weight' [64]",
                 "'model.layers.1.attn.A_log' has shape [3] but the model expects [2]"},
                true);
  }
  SECTION("an untied model without lm_head.weight") {
    io::NamedTensors tensors;
    for (const auto& name : fixture.names()) {
      if (name.starts_with("param.") && name != "param.lm_head.weight") {
        tensors.emplace_back(name.substr(6), fixture.tensor(name));
      }
    }
    io::save_safetensors(dir / "fla" / "model.safetensors", tensors);
    check_fails({"missing tensor 'lm_head.weight'"});
  }
  SECTION("a directory without config.json") {
    fs::remove(dir / "fla" / "config.json");
    check_fails({"fla/config.json: missing"});
  }
}

TEST_CASE("run_config_from_fla reads fla's config keys into dla's model options", "[checkpoint]") {
  const auto config = test::small_model_config(
      model::MixerKind::gdn,
      {"model.gdn.num_v_heads=4", "model.gdn.expand_v=2", "model.gdn.allow_neg_eigval=true",
       "model.gdn.use_short_conv=false", "model.intermediate_size=96"});
  json fla = test::fla_config_json(config.config.model);
  fla["num_v_heads"] = 4;
  fla["intermediate_size"] = 96;
  const auto resolved = run_config_from_fla(fla, "config.json");
  CHECK(resolved.to_yaml() == config.to_yaml());
  CHECK(resolved.sources.at("model.gdn.num_v_heads").file == "config.json");

  // Keys fla added later may be absent; their dla defaults match fla's old behaviour.
  fla.erase("num_v_heads");
  fla.erase("allow_neg_eigval");
  const auto old = run_config_from_fla(fla, "config.json");
  CHECK(old.config.model.gdn.num_v_heads == 0);
  CHECK_FALSE(old.config.model.gdn.allow_neg_eigval);

  json mamba = test::fla_config_json(test::small_model_config(model::MixerKind::mamba2).config.model);
  mamba["use_bias"] = true;
  CHECK_THROWS_WITH(run_config_from_fla(mamba, "m/config.json"),
                    has_substr("m/config.json") && has_substr("use_bias = true is not supported"));
}

}  // namespace dla::checkpoint
