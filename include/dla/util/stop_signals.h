// A graceful stop on SIGTERM or SIGINT: while a StopSignals lives, the first such signal is only recorded, so
// the training loop can finish its step, save and exit 0; a second one terminates as usual.
#pragma once

namespace dla {

class StopSignals {
 public:
  StopSignals();
  ~StopSignals();
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

  bool requested() const;
  /// The signal received, 0 when none.
  int signal() const;
};

}  // namespace dla
