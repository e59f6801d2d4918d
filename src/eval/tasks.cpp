// Task types: perplexity, cloze, multiple_choice, generate, and the generated mqar, niah and passkey.
#include "dla/eval/tasks.h"

#include <ATen/ops/argmax.h>

#include <cmath>
#include <fstream>
#include <random>
#include <sstream>

#include "dla/data/mqar.h"
#include "dla/eval/synthetic.h"
#include "dla/eval/template.h"
#include "dla/util/error.h"

namespace dla::eval {
namespace {

using Json = nlohmann::json;

// Few-shot examples for document `index`: `count` other documents, drawn with a seeded generator.
std::vector<size_t> fewshot_indices(size_t index, size_t total, int64_t count, int64_t seed) {
  std::vector<size_t> picked;
  if (count <= 0 || total <= 1) return picked;
  std::mt19937_64 rng(static_cast<uint64_t>(seed) * 0x9E3779B97F4A7C15ULL + index);
  while (static_cast<int64_t>(picked.size()) < std::min<int64_t>(count, static_cast<int64_t>(total) - 1)) {
    const size_t candidate = rng() % total;
    if (candidate != index && std::find(picked.begin(), picked.end(), candidate) == picked.end()) {
      picked.push_back(candidate);
    }
  }
  return picked;
}

double mean(const std::vector<double>& values) {
  double sum = 0;
  for (const double v : values)
    sum += v;
  return values.empty() ? 0 : sum / static_cast<double>(values.size());
}

void keep_requested(TaskResult& result, const TaskSpec& task, const std::map<std::string, double>& computed) {
  for (const auto& metric : task.metrics) {
    const auto it = computed.find(metric);
    if (it == computed.end()) {
      std::string known;
      for (const auto& [name, value] : computed)
        known += (known.empty() ? "" : ", ") + name;
      throw UserError(fmt::format("task '{}': metric '{}' is not one a {} task computes ({})", task.name,
                                  metric, task.type, known));
    }
    result.metrics[metric] = it->second;
  }
}

// The choices of a multiple-choice document and the index of the right one.
struct Choices {
  std::vector<std::string> contexts;  ///< one per choice, or one shared
  std::vector<std::string> continuations;
  std::vector<std::string> texts;  ///< what acc_norm measures
  size_t gold = 0;
};

Choices multiple_choice(const TaskSpec& task, const Json& doc) {
  Choices c;
  if (!task.contexts_from.empty()) {
    c.contexts = values_at(doc, task.contexts_from);
    const std::string shared = render(task.continuation, doc);
    c.continuations.assign(c.contexts.size(), shared);
    c.texts = c.continuations;
  } else {
    c.texts = task.choices_from.empty() ? std::vector<std::string>{} : values_at(doc, task.choices_from);
    for (const auto& choice : task.choices)
      c.texts.push_back(render(choice, doc));
    c.contexts = {render(task.context, doc)};
    c.continuations = c.texts;
  }
  const std::string gold = render(task.gold, doc);
  if (!task.gold_labels_from.empty()) {
    const auto labels = values_at(doc, task.gold_labels_from);
    const auto it = std::find(labels.begin(), labels.end(), gold);
    if (it == labels.end()) throw UserError(fmt::format("gold label '{}' is not among the labels", gold));
    c.gold = static_cast<size_t>(it - labels.begin());
  } else {
    try {
      size_t used = 0;
      c.gold = std::stoul(gold, &used);
      if (used != gold.size()) throw std::invalid_argument(gold);
    } catch (const std::exception&) {
      throw UserError(fmt::format("gold '{}' is not a choice index (set gold_labels_from for labels)", gold));
    }
  }
  if (c.gold >= c.texts.size()) {
    throw UserError(fmt::format("gold index {} is out of range for {} choices", c.gold, c.texts.size()));
  }
  return c;
}

// The text a document contributes as a few-shot example: its prompt followed by its answer.
std::string example_text(const TaskSpec& task, const Json& doc) {
  if (task.type == "multiple_choice") {
    const Choices c = multiple_choice(task, doc);
    const std::string& context = c.contexts.size() == 1 ? c.contexts[0] : c.contexts[c.gold];
    return context + task.target_delimiter + c.continuations[c.gold];
  }
  if (task.type == "cloze")
    return render(task.context, doc) + task.target_delimiter + render(task.target, doc);
  const auto answers =
      !task.answers_from.empty() ? values_at(doc, task.answers_from) : std::vector<std::string>{};
  const std::string answer = !answers.empty()       ? answers[0]
                             : task.answers.empty() ? ""
                                                    : render(task.answers[0], doc);
  return render(task.context, doc) + task.target_delimiter + answer;
}

std::string with_fewshot(const TaskSpec& task, const std::vector<Json>& docs, size_t index, int64_t seed,
                         const std::string& prompt) {
  std::string out;
  for (const size_t i : fewshot_indices(index, docs.size(), task.num_fewshot, seed))
    out += example_text(task, docs[i]) + task.fewshot_delimiter;
  return out + prompt;
}

// Runs a document task, with every template error reported with its document's number.
template <class F>
auto per_document(const TaskSpec& task, size_t index, F&& f) {
  try {
    return f();
  } catch (const UserError& e) {
    throw UserError(fmt::format("task '{}', document {}: {}", task.name, index + 1, e.what()));
  }
}

TaskResult perplexity(const TaskSpec& task, const std::vector<Json>& docs, TaskContext& ctx,
                      TaskResult result) {
  std::vector<LoglikelihoodRequest> requests;
  std::vector<size_t> owner;  // document of each window
  double words = 0, bytes = 0, tokens = 0;
  for (size_t d = 0; d < docs.size(); ++d) {
    const std::string text = per_document(task, d, [&] { return render(task.text, docs[d]); });
    words += static_cast<double>(count_words(text));
    bytes += static_cast<double>(text.size());
    const std::string scored = task.detokenize == "wikitext" ? wikitext_detokenize(text) : text;
    const auto ids = ctx.tokenizer.encode(scored);
    tokens += static_cast<double>(ids.size());
    for (auto& window : rolling_windows(ids, ctx.tokenizer.eos_id(), task.max_length)) {
      requests.push_back(std::move(window));
      owner.push_back(d);
    }
  }
  const auto scores = ctx.scorer.loglikelihood(requests, task.max_length, &result.positions);
  double total = 0;
  for (const auto& s : scores)
    total += s.value;
  result.n = static_cast<int64_t>(docs.size());
  keep_requested(result, task,
                 {{"word_perplexity", std::exp(-total / words)},
                  {"byte_perplexity", std::exp(-total / bytes)},
                  {"bits_per_byte", -total / bytes / std::log(2.0)},
                  {"token_perplexity", std::exp(-total / tokens)}});
  return result;
}

TaskResult cloze(const TaskSpec& task, const std::vector<Json>& docs, TaskContext& ctx, TaskResult result) {
  std::vector<LoglikelihoodRequest> requests;
  for (size_t d = 0; d < docs.size(); ++d) {
    requests.push_back(per_document(task, d, [&] {
      const std::string prompt = with_fewshot(task, docs, d, ctx.seed, render(task.context, docs[d]));
      return encode_pair(ctx.tokenizer, prompt, task.target_delimiter + render(task.target, docs[d]));
    }));
  }
  const auto scores = ctx.scorer.loglikelihood(requests, task.max_length, &result.positions);
  std::vector<double> greedy, ll;
  for (const auto& s : scores) {
    greedy.push_back(s.greedy ? 1.0 : 0.0);
    ll.push_back(s.value);
  }
  result.n = static_cast<int64_t>(docs.size());
  keep_requested(result, task, {{"acc", mean(greedy)}, {"perplexity", std::exp(-mean(ll))}});
  return result;
}

TaskResult choice_task(const TaskSpec& task, const std::vector<Json>& docs, TaskContext& ctx,
                       TaskResult result) {
  std::vector<LoglikelihoodRequest> requests;
  std::vector<Choices> all;
  for (size_t d = 0; d < docs.size(); ++d) {
    all.push_back(per_document(task, d, [&] { return multiple_choice(task, docs[d]); }));
    for (size_t k = 0; k < all.back().continuations.size(); ++k) {
      const std::string& context =
          all.back().contexts.size() == 1 ? all.back().contexts[0] : all.back().contexts[k];
      requests.push_back(encode_pair(ctx.tokenizer, with_fewshot(task, docs, d, ctx.seed, context),
                                     task.target_delimiter + all.back().continuations[k]));
    }
  }
  const auto scores = ctx.scorer.loglikelihood(requests, task.max_length);
  std::vector<double> acc, acc_norm, acc_bytes;
  size_t next = 0;
  for (const auto& c : all) {
    std::vector<double> ll, by_chars, by_bytes;
    for (size_t k = 0; k < c.continuations.size(); ++k) {
      const double value = scores[next++].value;
      ll.push_back(value);
      by_chars.push_back(value / static_cast<double>(std::max<size_t>(1, count_characters(c.texts[k]))));
      by_bytes.push_back(value / static_cast<double>(std::max<size_t>(1, c.texts[k].size())));
    }
    acc.push_back(argmax(ll) == c.gold ? 1.0 : 0.0);
    acc_norm.push_back(argmax(by_chars) == c.gold ? 1.0 : 0.0);
    acc_bytes.push_back(argmax(by_bytes) == c.gold ? 1.0 : 0.0);
  }
  result.n = static_cast<int64_t>(docs.size());
  keep_requested(result, task,
                 {{"acc", mean(acc)}, {"acc_norm", mean(acc_norm)}, {"acc_bytes", mean(acc_bytes)}});
  return result;
}

// Greedy generation cut at the first stop string.
std::string answer_of(TaskContext& ctx, const TaskSpec& task, const std::string& prompt,
                      const std::vector<std::string>& until) {
  const auto tokens = ctx.scorer.generate(ctx.tokenizer.encode(prompt), task.max_new_tokens, task.max_length,
                                          ctx.tokenizer.eos_id());
  std::string text = ctx.tokenizer.decode(tokens);
  for (const auto& stop : until) {
    if (stop.empty()) continue;
    const auto at = text.find(stop);
    if (at != std::string::npos) text.resize(at);
  }
  return text;
}

TaskResult generate_task(const TaskSpec& task, const std::vector<Json>& docs, TaskContext& ctx,
                         TaskResult result) {
  std::vector<double> exact(docs.size(), 0.0), contains(docs.size(), 0.0);
  for (size_t d = 0; d < docs.size(); ++d) {
    if (!ctx.scorer.shard().mine(d)) continue;
    per_document(task, d, [&] {
      std::vector<std::string> answers =
          task.answers_from.empty() ? std::vector<std::string>{} : values_at(docs[d], task.answers_from);
      for (const auto& a : task.answers)
        answers.push_back(render(a, docs[d]));
      const std::string output = normalize_answer(answer_of(
          ctx, task, with_fewshot(task, docs, d, ctx.seed, render(task.context, docs[d])), task.until));
      for (const auto& answer : answers) {
        const std::string expected = normalize_answer(answer);
        if (output == expected) exact[d] = 1.0;
        if (!expected.empty() && output.find(expected) != std::string::npos) contains[d] = 1.0;
      }
      return 0;
    });
  }
  ctx.scorer.shard().sum(exact, ctx.scorer.device());
  ctx.scorer.shard().sum(contains, ctx.scorer.device());
  result.n = static_cast<int64_t>(docs.size());
  keep_requested(result, task, {{"exact_match", mean(exact)}, {"contains", mean(contains)}});
  return result;
}

int64_t setting(const Json& generator, const char* key, int64_t fallback) {
  return generator.contains(key) ? generator.at(key).get<int64_t>() : fallback;
}

TaskResult mqar_task(const TaskSpec& task, TaskContext& ctx, TaskResult result) {
  data::MqarOptions options;
  options.num_kv_pairs = setting(task.generator, "num_kv_pairs", 8);
  options.power_a = task.generator.value("power_a", 0.01);
  const int64_t examples = ctx.limit > 0 ? std::min(ctx.limit, setting(task.generator, "examples", 1000))
                                         : setting(task.generator, "examples", 1000);
  const int64_t seq_len = setting(task.generator, "seq_len", 256);
  const auto batch = data::generate_mqar(options, examples, seq_len, ctx.vocab_size,
                                         static_cast<uint64_t>(setting(task.generator, "seed", ctx.seed)));
  // Zoology's score: accuracy over the queried positions of each example, averaged over examples.
  std::vector<double> per_example(static_cast<size_t>(examples), 0.0);
  at::NoGradGuard no_grad;
  for (int64_t e = 0; e < examples; ++e) {
    if (!ctx.scorer.shard().mine(static_cast<size_t>(e))) continue;
    const at::Tensor ids = batch.ids_BL.narrow(0, e, 1);
    const at::Tensor labels = batch.labels_BL[e];
    ctx.scorer.model().eval();
    const at::Tensor predicted = ctx.scorer.model().forward(ids.to(ctx.scorer.device()))[0].argmax(-1).cpu();
    const at::Tensor scored = labels.ne(-100);
    per_example[static_cast<size_t>(e)] = predicted.eq(labels).logical_and(scored).sum().item<double>() /
                                          std::max(1.0, scored.sum().item<double>());
  }
  ctx.scorer.shard().sum(per_example, ctx.scorer.device());
  result.n = examples;
  result.settings["generator"] = {{"examples", examples},
                                  {"seq_len", seq_len},
                                  {"num_kv_pairs", options.num_kv_pairs},
                                  {"power_a", options.power_a}};
  keep_requested(result, task, {{"accuracy", mean(per_example)}});
  return result;
}

std::string read_text_file(const std::filesystem::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string text = buffer.str();
  for (auto& c : text)
    if (c == '\n' || c == '\r') c = ' ';
  return text;
}

TaskResult probe_task(const TaskSpec& task, TaskContext& ctx, TaskResult result) {
  const auto& g = task.generator;
  const std::vector<int64_t> lengths = g.value("lengths", std::vector<int64_t>{1024, 2048});
  const std::vector<double> depths = g.value("depths", std::vector<double>{0.0, 0.25, 0.5, 0.75, 1.0});
  const int64_t samples =
      ctx.limit > 0 ? std::min(ctx.limit, setting(g, "samples", 10)) : setting(g, "samples", 10);
  const int variant = static_cast<int>(setting(g, "variant", 1));
  std::string essay;
  if (task.type == "niah" && variant != 1) {
    const std::string file = g.value("haystack_file", "");
    if (file.empty()) {
      throw UserError(fmt::format("task '{}': S-NIAH-{} needs generator.haystack_file", task.name, variant));
    }
    const std::filesystem::path path = std::filesystem::path(file).is_absolute() || ctx.data_root.empty()
                                           ? std::filesystem::path(file)
                                           : ctx.data_root / file;
    if (!std::filesystem::is_regular_file(path)) {
      throw MissingDataFile(fmt::format("haystack file '{}' does not exist", path.string()));
    }
    essay = read_text_file(path);
  }
  const size_t cells = lengths.size() * depths.size();
  std::vector<double> scores(cells * static_cast<size_t>(samples), 0.0);
  for (size_t i = 0; i < scores.size(); ++i) {
    if (!ctx.scorer.shard().mine(i)) continue;
    const size_t cell = i / static_cast<size_t>(samples);
    const int64_t length = lengths[cell / depths.size()];
    const double depth = depths[cell % depths.size()];
    const uint64_t seed = static_cast<uint64_t>(setting(g, "seed", ctx.seed)) * 1000003ULL + i;
    const ProbePrompt probe = task.type == "niah"
                                  ? niah_prompt(variant, essay, length, depth, seed, ctx.tokenizer)
                                  : passkey_prompt(length, depth, seed, ctx.tokenizer);
    TaskSpec generous = task;
    generous.max_length = length + task.max_new_tokens;
    scores[i] = string_match_all(answer_of(ctx, generous, probe.prompt, {}), probe.answers);
  }
  ctx.scorer.shard().sum(scores, ctx.scorer.device());
  Json grid = Json::array();
  std::map<std::string, double> computed = {{"accuracy", mean(scores)}};
  for (size_t l = 0; l < lengths.size(); ++l) {
    Json row = Json::array();
    double length_sum = 0;
    for (size_t d = 0; d < depths.size(); ++d) {
      double sum = 0;
      for (int64_t s = 0; s < samples; ++s)
        sum += scores[(l * depths.size() + d) * static_cast<size_t>(samples) + static_cast<size_t>(s)];
      row.push_back(sum / static_cast<double>(samples));
      length_sum += sum;
    }
    grid.push_back(row);
    computed[fmt::format("accuracy@{}", lengths[l])] =
        length_sum / static_cast<double>(samples * depths.size());
  }
  result.grid = {{"lengths", lengths}, {"depths", depths}, {"accuracy", grid}};
  result.n = static_cast<int64_t>(scores.size());
  result.settings["generator"] = {
      {"lengths", lengths}, {"depths", depths}, {"samples", samples}, {"variant", variant}};
  TaskSpec all = task;
  if (std::find(all.metrics.begin(), all.metrics.end(), "accuracy") != all.metrics.end()) {
    for (const auto length : lengths)
      all.metrics.push_back(fmt::format("accuracy@{}", length));
  }
  keep_requested(result, all, computed);
  return result;
}

}  // namespace

size_t argmax(const std::vector<double>& values) {
  size_t best = 0;
  for (size_t i = 1; i < values.size(); ++i)
    if (values[i] > values[best]) best = i;
  return best;
}

size_t count_characters(const std::string& text) {
  size_t n = 0;
  for (const unsigned char c : text)
    if ((c & 0xC0) != 0x80) ++n;
  return n;
}

size_t count_words(const std::string& text) {
  size_t n = 0;
  bool in_word = false;
  for (const unsigned char c : text) {
    const bool space = std::isspace(c) != 0;
    if (!space && !in_word) ++n;
    in_word = !space;
  }
  return n;
}

std::string normalize_answer(const std::string& text) {
  std::string lowered;
  for (const unsigned char c : text) {
    if (std::ispunct(c)) continue;
    lowered += static_cast<char>(std::tolower(c));
  }
  std::istringstream words(lowered);
  std::string out;
  for (std::string word; words >> word;) {
    if (word == "a" || word == "an" || word == "the") continue;
    out += (out.empty() ? "" : " ") + word;
  }
  return out;
}

TaskResult run_task(const TaskSpec& task, TaskContext& ctx) {
  TaskResult result;
  result.name = task.name;
  result.type = task.type;
  result.version = task.version;
  result.settings = {{"num_fewshot", task.num_fewshot}, {"max_length", task.max_length}};
  try {
    if (task.type == "mqar") return mqar_task(task, ctx, result);
    if (task.type == "niah" || task.type == "passkey") return probe_task(task, ctx, result);
    std::vector<Json> docs = load_documents(task.data, ctx.data_root);
    if (ctx.limit > 0 && static_cast<int64_t>(docs.size()) > ctx.limit)
      docs.resize(static_cast<size_t>(ctx.limit));
    if (docs.empty()) throw UserError(fmt::format("task '{}': the data has no documents", task.name));
    if (task.type == "perplexity") return perplexity(task, docs, ctx, result);
    if (task.type == "cloze") return cloze(task, docs, ctx, result);
    if (task.type == "multiple_choice") return choice_task(task, docs, ctx, result);
    return generate_task(task, docs, ctx, result);
  } catch (const MissingDataFile& e) {
    if (!task.optional) throw UserError(fmt::format("task '{}': {}", task.name, e.what()));
    result.skipped = e.what();
    return result;
  }
}

}  // namespace dla::eval
