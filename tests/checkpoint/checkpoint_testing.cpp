// Helpers for the checkpoint, import and score tests.
#include "checkpoint/checkpoint_testing.h"

#include <stdexcept>

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <fmt/format.h>

#include "dla/checkpoint/fla_export.h"
#include "dla/checkpoint/fla_import.h"
#include "dla/checkpoint/fla_names.h"

namespace dla::test {

config::ResolvedConfig small_model_config(model::MixerKind mixer, const std::vector<std::string>& overrides) {
  std::vector<std::string> all = {"model.vocab_size=64", "model.hidden_size=32", "model.num_layers=2"};
  if (mixer == model::MixerKind::gdn) {
    all.insert(all.end(), {"model.gdn.num_heads=2", "model.gdn.head_dim=16"});
  } else {
    all.insert(all.end(), {"model.mixer=mamba2", "model.use_mlp=false", "model.norm_eps=1e-5",
                           "model.mamba2.head_dim=16", "model.mamba2.state_size=8"});
  }
  all.insert(all.end(), overrides.begin(), overrides.end());
  return config::resolve_run_config(std::nullopt, all);
}

void perturb_parameters(model::CausalLMImpl& model, uint64_t seed) {
  at::NoGradGuard no_grad;
  const auto generator = at::make_generator<at::CPUGeneratorImpl>(seed);
  for (auto& p : model.parameters())
    p.add_(at::randn(p.sizes(), generator, p.options()), /*alpha=*/0.1);
}

io::NamedTensors fla_named_parameters(model::CausalLMImpl& model) {
  io::NamedTensors out;
  for (const auto& item : model.named_parameters()) {
    const auto name = checkpoint::fla_name_from_dla(item.key(), model.options().mixer);
    if (!name) throw std::logic_error("no fla name for " + item.key());
    out.emplace_back(*name, item.value().detach().clone());
  }
  return out;
}

nlohmann::json fla_config_json(const model::ModelOptions& options) {
  return checkpoint::fla_config_json(options);
}

void write_fla_dir(const std::filesystem::path& dir, const std::string& config_text,
                   const io::NamedTensors& tensors) {
  std::filesystem::create_directories(dir);
  write_text(dir / "config.json", config_text);
  io::save_safetensors(dir / "model.safetensors", tensors);
}

double score_in_process(model::CausalLMImpl& model, const at::Tensor& ids_BT) {
  at::NoGradGuard no_grad;
  model.eval();
  double sum = 0;
  for (int64_t b = 0; b < ids_BT.size(0); ++b) {
    const at::Tensor row = ids_BT.narrow(0, b, 1);
    sum += model::next_token_loss(model.forward(row), row).item<double>();
  }
  return sum / static_cast<double>(ids_BT.size(0));
}

std::string ids_text(const at::Tensor& ids_BT) {
  const at::Tensor ids = ids_BT.to(at::kLong).contiguous();
  std::string out;
  for (int64_t b = 0; b < ids.size(0); ++b) {
    const at::Tensor row = ids[b];
    out +=
        fmt::format("{}\n", fmt::join(row.data_ptr<int64_t>(), row.data_ptr<int64_t>() + row.numel(), " "));
  }
  return out;
}

}  // namespace dla::test
