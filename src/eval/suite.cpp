// Reading evaluation suites.
#include "dla/eval/suite.h"

#include <set>

#include "dla/util/error.h"
#include "dla/util/yaml_map.h"

namespace dla::eval {
namespace {

using Reader = util::KeyReader;

const std::set<std::string> kTaskTypes = {"perplexity", "cloze", "multiple_choice", "generate",
                                          "mqar",       "niah",  "passkey"};

TaskSpec read_task(const nlohmann::json& node, const std::string& where) {
  TaskSpec task;
  Reader r(node, where);
  r.read("name", task.name);
  r.read("type", task.type);
  r.read("optional", task.optional);
  r.read("version", task.version);
  nlohmann::json data = nlohmann::json::object();
  r.read("data", data);
  r.read("text", task.text);
  r.read("detokenize", task.detokenize);
  r.read("context", task.context);
  r.read("target", task.target);
  r.read("choices", task.choices);
  r.read("choices_from", task.choices_from);
  r.read("contexts_from", task.contexts_from);
  r.read("continuation", task.continuation);
  r.read("gold", task.gold);
  r.read("gold_labels_from", task.gold_labels_from);
  r.read("answers", task.answers);
  r.read("answers_from", task.answers_from);
  r.read("target_delimiter", task.target_delimiter);
  r.read("fewshot_delimiter", task.fewshot_delimiter);
  r.read("num_fewshot", task.num_fewshot);
  r.read("max_length", task.max_length);
  r.read("max_new_tokens", task.max_new_tokens);
  r.read("until", task.until);
  r.read("metrics", task.metrics);
  r.read("generator", task.generator);
  r.finish();
  const std::string at = task.name.empty() ? where : fmt::format("{} ('{}')", where, task.name);
  if (task.name.empty()) throw UserError(fmt::format("{}: the task needs a 'name'", where));
  if (kTaskTypes.count(task.type) == 0) {
    throw UserError(
        fmt::format("{}: type '{}' is not one of {}", at, task.type, fmt::join(kTaskTypes, ", ")));
  }
  if (task.max_length < 2 || task.num_fewshot < 0 || task.max_new_tokens < 1) {
    throw UserError(
        fmt::format("{}: max_length ≥ 2, num_fewshot ≥ 0 and max_new_tokens ≥ 1 are expected", at));
  }
  if (!data.empty()) {
    Reader d(data, at + ": data");
    std::string file;
    d.read("file", file);
    d.read("files", task.data.files);
    if (!file.empty()) task.data.files.insert(task.data.files.begin(), file);
    d.read("format", task.data.format);
    d.read("fields", task.data.fields);
    d.read("split", task.data.split);
    d.read("labels_file", task.data.labels_file);
    d.read("labels_field", task.data.labels_field);
    d.finish();
  }
  const bool generated = task.type == "mqar" || task.type == "niah" || task.type == "passkey";
  if (!generated && task.data.files.empty()) throw UserError(fmt::format("{}: 'data.file' is required", at));
  if (task.type == "multiple_choice" && task.choices.empty() && task.choices_from.empty() &&
      task.contexts_from.empty()) {
    throw UserError(
        fmt::format("{}: a multiple_choice task needs 'choices', 'choices_from' or 'contexts_from'", at));
  }
  if (task.metrics.empty()) task.metrics = default_metrics(task.type);
  return task;
}

}  // namespace

bool needs_tokenizer(const SuiteSpec& suite) {
  return std::any_of(suite.tasks.begin(), suite.tasks.end(),
                     [](const TaskSpec& t) { return t.type != "mqar"; });
}

std::vector<std::string> default_metrics(const std::string& type) {
  if (type == "perplexity")
    return {"word_perplexity", "byte_perplexity", "bits_per_byte", "token_perplexity"};
  if (type == "cloze") return {"acc", "perplexity"};
  if (type == "multiple_choice") return {"acc", "acc_norm"};
  if (type == "generate") return {"exact_match", "contains"};
  if (type == "mqar") return {"accuracy"};
  return {"accuracy"};  // niah, passkey
}

SuiteSpec load_suite(const std::filesystem::path& file) {
  const nlohmann::json root = util::load_yaml(file, "evaluation suite");
  SuiteSpec suite;
  suite.file = file;
  nlohmann::json tasks = nlohmann::json::array();
  Reader r(root, file.string());
  r.read("suite", suite.name);
  r.read("data_root", suite.data_root);
  r.read("seed", suite.seed);
  r.read("batch_size", suite.batch_size);
  r.read("tasks", tasks);
  r.finish();
  if (suite.name.empty()) suite.name = file.stem().string();
  if (!tasks.is_array() || tasks.empty())
    throw UserError(fmt::format("{}: 'tasks' must list at least one task", file.string()));
  std::set<std::string> names;
  for (size_t i = 0; i < tasks.size(); ++i) {
    suite.tasks.push_back(read_task(tasks[i], fmt::format("{}: tasks[{}]", file.string(), i)));
    if (!names.insert(suite.tasks.back().name).second) {
      throw UserError(fmt::format("{}: two tasks are named '{}'", file.string(), suite.tasks.back().name));
    }
  }
  return suite;
}

}  // namespace dla::eval
