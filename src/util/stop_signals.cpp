// SIGTERM/SIGINT handlers that record the first signal and restore the default action for the next.
#include "dla/util/stop_signals.h"

#include <csignal>

namespace dla {
namespace {

volatile std::sig_atomic_t g_received = 0;
struct sigaction g_previous_term {};
struct sigaction g_previous_int {};

extern "C" void record_signal(int signal) {
  g_received = signal;
  struct sigaction fallback {};
  fallback.sa_handler = SIG_DFL;
  ::sigaction(signal, &fallback, nullptr);
}

}  // namespace

StopSignals::StopSignals() {
  g_received = 0;
  struct sigaction action {};
  action.sa_handler = record_signal;
  sigemptyset(&action.sa_mask);
  ::sigaction(SIGTERM, &action, &g_previous_term);
  ::sigaction(SIGINT, &action, &g_previous_int);
}

StopSignals::~StopSignals() {
  ::sigaction(SIGTERM, &g_previous_term, nullptr);
  ::sigaction(SIGINT, &g_previous_int, nullptr);
}

bool StopSignals::requested() const {
  return g_received != 0;
}

int StopSignals::signal() const {
  return g_received;
}

}  // namespace dla
