// The `data` section of the run config: where training sequences come from.
#pragma once

#include "dla/config/schema.h"
#include "dla/data/mqar.h"

namespace dla::data {

enum class DataSource { mqar, tokens };

}  // namespace dla::data

template <>
struct dla::config::EnumNames<dla::data::DataSource> {
  static constexpr std::array<std::string_view, 2> names{"mqar", "tokens"};
};

namespace dla::data {

struct DataOptions {
  DataSource source = DataSource::mqar;
  MqarOptions mqar;
  std::string path;         ///< tokens: a dataset directory written by `dla data prepare`
  std::string tokenizer;    ///< tokens: when set, the shards must have been made with this tokenizer
  int64_t val_batches = 8;  ///< tokens: batches of the validation split per evaluation

  template <class V>
  void visit(V& v) {
    using config::Bounds;
    v.field("source", source,
            "Where training sequences come from: mqar (generated, no files) or tokens (a prepared dataset).");
    v.section("mqar", mqar, "Multi-query associative recall generator (Zoology's MQAR).");
    v.field("path", path, "tokens: the dataset directory written by `dla data prepare` (docs/data.md).");
    v.field(
        "tokenizer", tokenizer,
        "tokens: `byte` or a SentencePiece model; when set, shards made with another tokenizer are refused.");
    v.field("val_batches", val_batches, "tokens: batches of the validation split scored per evaluation.",
            Bounds::at_least(1));
  }
};

}  // namespace dla::data
