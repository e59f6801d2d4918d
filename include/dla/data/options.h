// The `data` section of the run config: where training sequences come from.
#pragma once

#include "dla/config/schema.h"
#include "dla/data/mqar.h"

namespace dla::data {

enum class DataSource { mqar };

}  // namespace dla::data

template <>
struct dla::config::EnumNames<dla::data::DataSource> {
  static constexpr std::array<std::string_view, 1> names{"mqar"};
};

namespace dla::data {

struct DataOptions {
  DataSource source = DataSource::mqar;
  MqarOptions mqar;

  template <class V>
  void visit(V& v) {
    v.field("source", source, "Where training sequences come from: mqar (generated, no files).");
    v.section("mqar", mqar, "Multi-query associative recall generator (Zoology's MQAR).");
  }
};

}  // namespace dla::data
