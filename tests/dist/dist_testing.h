// Ranks as threads of the test process: each gets a Gloo communicator, so collective code can be tested
// without starting processes.
#pragma once

#include <exception>
#include <functional>
#include <thread>
#include <vector>

#include "dla/dist/communicator.h"
#include "dla/dist/launcher.h"

namespace dla::test {

inline dist::DistEnvironment thread_rank(int rank, int world_size, int port) {
  dist::DistEnvironment env;
  env.rank = rank;
  env.world_size = world_size;
  env.local_rank = rank;
  env.local_world_size = world_size;
  env.master_port = port;
  return env;
}

/// Runs body(communicator) on `world_size` threads, one rank each, rank r on device_of(r); rethrows the first
/// rank's exception.
template <class Body>
void run_ranks(
    int world_size, Body body, dist::DistOptions options = {},
    const std::function<at::Device(int)>& device_of = [](int) { return at::Device(at::kCPU); }) {
  const int port = dist::free_port();
  std::vector<std::exception_ptr> errors(world_size);
  std::vector<std::thread> threads;
  for (int r = 0; r < world_size; ++r) {
    threads.emplace_back([&, r] {
      try {
        dist::Communicator communicator(thread_rank(r, world_size, port), options, device_of(r));
        body(communicator);
      } catch (...) {
        errors[r] = std::current_exception();
      }
    });
  }
  for (auto& t : threads)
    t.join();
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);
}

}  // namespace dla::test
