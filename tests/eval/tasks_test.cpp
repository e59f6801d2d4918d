// Metric formulas against hand-computed values: with a model that predicts the uniform distribution over V
// tokens, every token's log-likelihood is −ln V.
#include "dla/eval/tasks.h"

#include <cmath>

#include "catch.h"
#include "eval/eval_testing.h"
#include "test_util.h"

namespace dla::eval {
namespace {

constexpr int64_t kVocab = 258;

struct Fixture {
  test::TempDir dir;
  model::CausalLM model = test::uniform_model(kVocab);
  data::ByteTokenizer tokenizer;
  Scorer scorer{*model, at::kCPU, 2};
  TaskContext context{scorer, tokenizer, kVocab, dir.path(), 1234, 0};
};

TaskSpec task(const std::string& type, const std::string& file) {
  TaskSpec t;
  t.name = type;
  t.type = type;
  t.data.files = {file};
  t.metrics = default_metrics(type);
  return t;
}

}  // namespace

TEST_CASE("perplexity: word and byte perplexity and bits per byte as lm-evaluation-harness defines them",
          "[eval]") {
  Fixture f;
  test::write_text(f.dir / "docs.jsonl", "{\"text\": \"one two three\"}\n{\"text\": \"four  five\"}\n");
  TaskSpec t = task("perplexity", "docs.jsonl");
  t.max_length = 4;  // several rolling windows per document
  const auto r = run_task(t, f.context);
  const double ln_v = std::log(static_cast<double>(kVocab));
  const double tokens = 13 + 10, words = 5, bytes = 23;
  CHECK(r.n == 2);
  CHECK(std::abs(r.metrics.at("token_perplexity") - kVocab) < 1e-6 * kVocab);
  CHECK(std::abs(r.metrics.at("byte_perplexity") - std::exp(tokens * ln_v / bytes)) < 1e-3);
  CHECK(std::abs(std::log(r.metrics.at("word_perplexity")) - tokens * ln_v / words) < 1e-5);
  CHECK(std::abs(r.metrics.at("bits_per_byte") - tokens * ln_v / bytes / std::log(2.0)) < 1e-5);
  // Every token was scored once: positions 0..3 of the windows.
  double counted = 0;
  for (const double c : r.positions.count)
    counted += c;
  CHECK(counted == tokens);
}

TEST_CASE("multiple_choice: acc takes the largest log-likelihood, acc_norm divides by characters", "[eval]") {
  Fixture f;
  // Choices of 2 and 6 characters: with " " in front, 3 and 7 tokens. acc prefers the shorter (gold 0 in
  // the first document), acc_norm the ratio −(n+1)/n·ln V, i.e. the longer (gold 1 in the second).
  test::write_text(f.dir / "mc.jsonl",
                   "{\"q\": \"Pick\", \"a\": \"ab\", \"b\": \"abcdef\", \"label\": 0}\n"
                   "{\"q\": \"Pick\", \"a\": \"ab\", \"b\": \"abcdef\", \"label\": 1}\n");
  TaskSpec t = task("multiple_choice", "mc.jsonl");
  t.context = "{q}:";
  t.choices = {"{a}", "{b}"};
  t.metrics = {"acc", "acc_norm", "acc_bytes"};
  const auto r = run_task(t, f.context);
  CHECK(r.metrics.at("acc") == 0.5);
  CHECK(r.metrics.at("acc_norm") == 0.5);
  CHECK(r.metrics.at("acc_bytes") == 0.5);
  // Labels instead of indices, and one context per choice (WinoGrande's layout).
  test::write_text(f.dir / "labels.jsonl",
                   "{\"opts\": [\"x\", \"yy\"], \"ctx\": [\"long context\", \"c\"], "
                   "\"tail\": \"end\", \"keys\": [\"A\", \"B\"], \"answer\": \"B\"}\n");
  TaskSpec by_label = task("multiple_choice", "labels.jsonl");
  by_label.contexts_from = "ctx";
  by_label.continuation = "{tail}";
  by_label.gold = "{answer}";
  by_label.gold_labels_from = "keys[]";
  // The continuation is the same for both contexts, so their log-likelihoods tie and argmax takes the first.
  CHECK(run_task(by_label, f.context).metrics.at("acc") == 0.0);
}

TEST_CASE("cloze: accuracy is the greedy check, perplexity is per document", "[eval]") {
  Fixture f;
  test::write_text(f.dir / "cloze.jsonl",
                   "{\"context\": \"the cat\", \"continuation\": \"sat\"}\n{\"context\": \"a\", "
                   "\"continuation\": \"dog\"}\n");
  TaskSpec t = task("cloze", "cloze.jsonl");
  t.context = "{context}";
  t.target = "{continuation}";
  const auto r = run_task(t, f.context);
  // " sat" and " dog": 4 tokens each, so perplexity = exp(4 ln V) = V^4; a uniform argmax is token 0.
  CHECK(r.metrics.at("acc") == 0.0);
  CHECK(std::abs(std::log(r.metrics.at("perplexity")) - 4 * std::log(static_cast<double>(kVocab))) < 1e-6);
}

TEST_CASE("few-shot prompts, answer normalisation and helpers", "[eval]") {
  CHECK(normalize_answer("  The  Eiffel-Tower! ") == "eiffeltower");
  CHECK(normalize_answer("An apple, a day") == "apple day");
  CHECK(argmax({1.0, 3.0, 3.0, 2.0}) == 1);
  CHECK(count_characters("héllo") == 5);
  CHECK(count_words(" a  b\tc\n") == 3);
  Fixture f;
  test::write_text(f.dir / "qa.jsonl",
                   "{\"q\": \"2+2\", \"a\": [\"four\"]}\n{\"q\": \"3+3\", \"a\": [\"six\"]}\n");
  TaskSpec t = task("generate", "qa.jsonl");
  t.context = "Q: {q}\nA:";
  t.answers_from = "a";
  t.num_fewshot = 1;
  t.max_new_tokens = 3;
  const auto r = run_task(t, f.context);
  CHECK(r.n == 2);
  CHECK(r.metrics.at("exact_match") == 0.0);
}

TEST_CASE("optional tasks without data are skipped; others fail naming the file", "[eval]") {
  Fixture f;
  TaskSpec t = task("cloze", "absent.jsonl");
  t.context = "{context}";
  t.target = "{continuation}";
  CHECK_THROWS_WITH(run_task(t, f.context), test::has_substr("absent.jsonl' does not exist"));
  t.optional = true;
  const auto r = run_task(t, f.context);
  CHECK_THAT(r.skipped, test::has_substr("absent.jsonl"));
  CHECK(r.metrics.empty());
  // A template field the documents lack names the task and document.
  test::write_text(f.dir / "x.jsonl", "{\"context\": \"c\"}\n");
  TaskSpec broken = task("cloze", "x.jsonl");
  broken.context = "{context}";
  broken.target = "{answer}";
  CHECK_THROWS_WITH(run_task(broken, f.context),
                    test::has_substr("task 'cloze', document 1: the document has no field 'answer'"));
}

}  // namespace dla::eval
