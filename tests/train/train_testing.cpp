// Helpers for the tests that run the trainer.
#include "train/train_testing.h"

#include <fstream>

namespace dla::test {

config::ResolvedConfig tiny_train_config(const std::vector<std::string>& overrides) {
  std::vector<std::string> all = {
      "model.vocab_size=32",   "model.hidden_size=16",     "model.num_layers=1",
      "model.gdn.num_heads=1", "model.gdn.head_dim=16",    "model.intermediate_size=32",
      "model.chunk_size=16",   "data.mqar.num_kv_pairs=2", "data.mqar.eval_examples=8",
      "train.steps=5",         "train.batch_size=4",       "train.seq_len=16",
      "train.log_every=2",     "train.device=cpu",         "optim.warmup_steps=2"};
  all.insert(all.end(), overrides.begin(), overrides.end());
  return config::resolve_run_config(std::nullopt, all);
}

run::RunDirectory test_run_directory(const std::filesystem::path& root) {
  std::filesystem::create_directories(root);
  return {root, root / "config.yaml", root / "log.txt"};
}

std::vector<nlohmann::json> read_jsonl(const std::filesystem::path& file) {
  std::ifstream in(file);
  std::vector<nlohmann::json> rows;
  for (std::string line; std::getline(in, line);) {
    if (!line.empty()) rows.push_back(nlohmann::json::parse(line));
  }
  return rows;
}

std::vector<double> column(const std::vector<nlohmann::json>& rows, const std::string& key) {
  std::vector<double> out;
  for (const auto& row : rows)
    out.push_back(row.at(key).get<double>());
  return out;
}

}  // namespace dla::test
