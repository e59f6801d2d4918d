// Training checkpoints: writing, checking, retention and restoring.
#include "dla/checkpoint/train_checkpoint.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>

#include <ATen/ATen.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <yaml-cpp/yaml.h>
#include <nlohmann/json.hpp>

#include "dla/checkpoint/model_checkpoint.h"
#include "dla/checkpoint/state_dict.h"
#include "dla/io/atomic_file.h"
#include "dla/io/mapped_file.h"
#include "dla/io/safetensors.h"
#include "dla/util/error.h"
#include "dla/util/hash.h"

namespace dla::checkpoint {
namespace fs = std::filesystem;
namespace {

constexpr const char* kOptimizerFile = "optimizer.safetensors";
constexpr const char* kRngFile = "rng.safetensors";
constexpr const char* kStateFile = "state.json";
constexpr int kFormatVersion = 1;

void write_text_atomic(const fs::path& path, const std::string& text) {
  io::write_file_atomic(path, std::as_bytes(std::span(text.data(), text.size())));
}

uint64_t file_checksum(const fs::path& path) {
  const io::MappedFile file(path);
  return fnv1a64(file.bytes().data(), file.size());
}

std::optional<int64_t> step_of(const std::string& name) {
  constexpr std::string_view prefix = "step-";
  if (!name.starts_with(prefix) || name.size() != prefix.size() + 8) return std::nullopt;
  int64_t step = 0;
  const auto [end, error] = std::from_chars(name.data() + prefix.size(), name.data() + name.size(), step);
  if (error != std::errc() || end != name.data() + name.size()) return std::nullopt;
  return step;
}

void fsync_directory(const fs::path& dir) {
  if (const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY); fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

/// Test hook (docs/checkpoints.md): DLA_FAULT_CHECKPOINT=kill-after-model:N kills the process half-way
/// through writing its N-th checkpoint, as a crash or an OOM kill would.
void maybe_crash(std::string_view point) {
  static int checkpoints = 0;
  const char* fault = std::getenv("DLA_FAULT_CHECKPOINT");
  if (fault == nullptr) return;
  const std::string_view spec = fault;
  ++checkpoints;
  if (spec.substr(0, spec.find(':')) != point) return;
  const int nth = spec.find(':') == std::string_view::npos ? 1 : std::atoi(fault + spec.find(':') + 1);
  if (checkpoints == nth) std::raise(SIGKILL);
}

/// Every leaf of a YAML map as "a.b.c" -> its text.
void flatten(const YAML::Node& node, const std::string& prefix, std::map<std::string, std::string>& out) {
  if (node.IsMap()) {
    for (const auto& item : node)
      flatten(item.second,
              prefix.empty() ? item.first.as<std::string>() : prefix + "." + item.first.as<std::string>(),
              out);
  } else {
    out[prefix] = YAML::Dump(node);
  }
}

std::map<std::string, std::string> flat_config(const config::ResolvedConfig& config) {
  std::map<std::string, std::string> out;
  flatten(YAML::Load(config.to_yaml()), "", out);
  return out;
}

}  // namespace

std::string checkpoint_name(int64_t step) {
  return fmt::format("step-{:08d}", step);
}

fs::path save_train_checkpoint(const fs::path& run_root, const config::ResolvedConfig& config,
                               model::CausalLMImpl& model, torch::optim::AdamW& optimizer,
                               const TrainingProgress& progress) {
  const std::string name = checkpoint_name(progress.step);
  const fs::path target = run_root / name;
  const fs::path temp = run_root / fmt::format("{}.tmp.{}", name, ::getpid());
  std::error_code ec;
  fs::remove_all(temp, ec);
  fs::create_directories(temp, ec);
  if (ec) throw UserError(fmt::format("cannot write the checkpoint {}: {}", temp.string(), ec.message()));
  try {
    write_model_files(temp, config, model);
    maybe_crash("kill-after-model");

    io::NamedTensors optimizer_tensors;
    for (const auto& item : model.named_parameters()) {
      const auto found = optimizer.state().find(item.value().unsafeGetTensorImpl());
      if (found == optimizer.state().end()) continue;
      const auto& state = static_cast<const torch::optim::AdamWParamState&>(*found->second);
      optimizer_tensors.emplace_back(item.key() + ".step", at::full({1}, state.step(), at::kLong));
      optimizer_tensors.emplace_back(item.key() + ".exp_avg", state.exp_avg());
      optimizer_tensors.emplace_back(item.key() + ".exp_avg_sq", state.exp_avg_sq());
    }
    io::save_safetensors(temp / kOptimizerFile, optimizer_tensors, {{"format", "dla-adamw"}});

    io::NamedTensors rng = {{"cpu", at::detail::getDefaultCPUGenerator().get_state()}};
    io::save_safetensors(temp / kRngFile, rng, {{"format", "dla-rng"}});

    const nlohmann::json state = {{"format", "dla-train-checkpoint"},
                                  {"version", kFormatVersion},
                                  {"step", progress.step},
                                  {"tokens_seen", progress.tokens_seen},
                                  {"samples_seen", progress.samples_seen},
                                  {"world_size", progress.world_size},
                                  {"tokenizer_fingerprint", progress.tokenizer_fingerprint}};
    write_text_atomic(temp / kStateFile, state.dump(2) + "\n");

    // The manifest comes last: a directory without one was never finished.
    nlohmann::json files = nlohmann::json::object();
    for (const auto& entry : fs::directory_iterator(temp)) {
      files[entry.path().filename().string()] = {
          {"bytes", fs::file_size(entry.path())},
          {"checksum", fmt::format("{:016x}", file_checksum(entry.path()))}};
    }
    write_text_atomic(temp / kCheckpointManifest,
                      nlohmann::json{{"step", progress.step}, {"files", files}}.dump(2) + "\n");

    if (fs::exists(target)) fs::remove_all(target);
    fs::rename(temp, target);
    fsync_directory(run_root);
    write_text_atomic(run_root / kLatestFile, name + "\n");
  } catch (const fs::filesystem_error& e) {
    fs::remove_all(temp, ec);
    throw UserError(fmt::format("cannot write the checkpoint {}: {}", target.string(), e.what()));
  } catch (...) {
    fs::remove_all(temp, ec);
    throw;
  }
  return target;
}

CheckpointStatus verify_checkpoint(const fs::path& dir) {
  CheckpointStatus status{dir, step_of(dir.filename().string()).value_or(-1), 0, ""};
  std::ifstream in(dir / kCheckpointManifest);
  if (!in) {
    status.problem = "manifest.json is missing (the checkpoint was not finished)";
    return status;
  }
  nlohmann::json manifest;
  try {
    manifest = nlohmann::json::parse(in);
    for (const auto& [file, expected] : manifest.at("files").items()) {
      const fs::path path = dir / file;
      if (!fs::is_regular_file(path)) {
        status.problem = file + " is missing";
        return status;
      }
      const uint64_t bytes = fs::file_size(path);
      status.bytes += bytes;
      if (bytes != expected.at("bytes").get<uint64_t>()) {
        status.problem = fmt::format("{} has {} bytes, the manifest says {} (truncated or replaced)", file,
                                     bytes, expected.at("bytes").get<uint64_t>());
        return status;
      }
      if (fmt::format("{:016x}", file_checksum(path)) != expected.at("checksum").get<std::string>()) {
        status.problem = file + " does not match its checksum (damaged)";
        return status;
      }
    }
  } catch (const nlohmann::json::exception& e) {
    status.problem = std::string("manifest.json is malformed: ") + e.what();
  }
  return status;
}

std::vector<CheckpointStatus> list_checkpoints(const fs::path& run_root) {
  std::vector<CheckpointStatus> found;
  if (!fs::is_directory(run_root)) return found;
  for (const auto& entry : fs::directory_iterator(run_root)) {
    if (entry.is_directory() && step_of(entry.path().filename().string()))
      found.push_back(verify_checkpoint(entry.path()));
  }
  std::sort(found.begin(), found.end(), [](const auto& a, const auto& b) { return a.step < b.step; });
  return found;
}

void apply_retention(const fs::path& run_root, int64_t keep_last, int64_t keep_every) {
  std::vector<int64_t> steps;
  for (const auto& entry : fs::directory_iterator(run_root)) {
    if (const auto step = step_of(entry.path().filename().string()); step && entry.is_directory())
      steps.push_back(*step);
  }
  std::sort(steps.begin(), steps.end());
  for (std::size_t i = 0; i + static_cast<std::size_t>(keep_last) < steps.size(); ++i) {
    if (keep_every > 0 && steps[i] % keep_every == 0) continue;
    std::error_code ec;
    fs::remove_all(run_root / checkpoint_name(steps[i]), ec);
  }
}

TrainingProgress load_train_checkpoint(const fs::path& dir, const config::ResolvedConfig& config,
                                       model::CausalLMImpl& model, torch::optim::AdamW& optimizer,
                                       std::vector<std::string>& changed_keys) {
  const CheckpointStatus status = verify_checkpoint(dir);
  if (!status.ok()) throw UserError(fmt::format("{}: damaged checkpoint: {}", dir.string(), status.problem));
  const config::ResolvedConfig saved = config::resolve_run_config((dir / kModelConfigFile).string(), {});
  const auto before = flat_config(saved), now = flat_config(config);
  std::vector<std::string> architecture;
  for (const auto& [key, value] : now) {
    const auto old = before.find(key);
    if (old != before.end() && old->second == value) continue;
    (key.starts_with("model.") ? architecture : changed_keys).push_back(key);
  }
  if (!architecture.empty()) {
    std::string list;
    for (const auto& key : architecture)
      list += fmt::format("\n  {}: {} in the checkpoint, {} now", key,
                          before.count(key) ? before.at(key) : "(absent)", now.at(key));
    throw UserError(
        fmt::format("{}: the checkpoint's model differs from the config's; resume needs the same "
                    "architecture:{}",
                    dir.string(), list));
  }

  const io::SafetensorsReader weights(dir / kModelWeightsFile);
  load_parameters(model, weights.load_all(), weights.path().string());

  const io::SafetensorsReader moments(dir / kOptimizerFile);
  for (const auto& item : model.named_parameters()) {
    if (!moments.contains(item.key() + ".step")) continue;
    const at::Tensor& p = item.value();
    auto state = std::make_unique<torch::optim::AdamWParamState>();
    state->step(moments.tensor(item.key() + ".step").item<int64_t>());
    state->exp_avg(moments.tensor(item.key() + ".exp_avg").to(p.device(), p.scalar_type()));
    state->exp_avg_sq(moments.tensor(item.key() + ".exp_avg_sq").to(p.device(), p.scalar_type()));
    optimizer.state()[p.unsafeGetTensorImpl()] = std::move(state);
  }
  const io::SafetensorsReader rng(dir / kRngFile);
  at::Generator cpu_generator = at::detail::getDefaultCPUGenerator();
  cpu_generator.set_state(rng.tensor("cpu"));

  std::ifstream in(dir / kStateFile);
  const auto state = nlohmann::json::parse(in);
  return {state.at("step"), state.at("tokens_seen"), state.at("samples_seen"), state.at("world_size"),
          state.at("tokenizer_fingerprint")};
}

}  // namespace dla::checkpoint
