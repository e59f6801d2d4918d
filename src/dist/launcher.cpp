// Process supervision for `dla launch`. Signals are blocked and taken with sigtimedwait, so the loop that
// reaps workers is also the one that forwards signals: no handler runs asynchronously.
#include "dla/dist/launcher.h"

#include <netinet/in.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fmt/ranges.h>
#include <cerrno>

#include <chrono>
#include <csignal>
#include <cstring>
#include <thread>

#include "dla/util/error.h"

namespace dla::dist {
namespace {

using Clock = std::chrono::steady_clock;

struct Worker {
  int rank = 0;
  pid_t pid = -1;
  bool running = false;
};

std::string describe_status(int status) {
  if (WIFEXITED(status)) return fmt::format("exited with status {}", WEXITSTATUS(status));
  if (WIFSIGNALED(status)) {
    return fmt::format("was killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
  }
  return fmt::format("ended with wait status {}", status);
}

int exit_code(int status) {
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return 1;
}

std::string self_executable() {
  std::error_code ec;
  const auto path = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) throw UserError("dla launch: cannot find this program's path (/proc/self/exe): " + ec.message());
  return path.string();
}

void signal_running(std::vector<Worker>& workers, int signal) {
  for (const auto& worker : workers)
    if (worker.running) ::kill(worker.pid, signal);
}

// In the child between fork and exec: only async-signal-safe calls and setenv on prepared strings.
[[noreturn]] void exec_worker(const std::string& program, const std::vector<std::string>& args,
                              const std::vector<std::pair<std::string, std::string>>& env,
                              const sigset_t& original_mask) {
  // Its own process group: a Ctrl-C at the terminal reaches the launcher alone, which forwards it once.
  ::setpgid(0, 0);
  // A launcher that is killed takes its workers with it (they stop gracefully on SIGTERM).
  ::prctl(PR_SET_PDEATHSIG, SIGTERM);
  ::sigprocmask(SIG_SETMASK, &original_mask, nullptr);
  for (const auto& [name, value] : env)
    ::setenv(name.c_str(), value.c_str(), 1);
  std::vector<char*> argv;
  argv.push_back(const_cast<char*>(program.c_str()));
  for (const auto& arg : args)
    argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  ::execv(program.c_str(), argv.data());
  const char message[] = "dla launch: cannot start the worker program\n";
  [[maybe_unused]] const auto written = ::write(STDERR_FILENO, message, sizeof(message) - 1);
  ::_exit(127);
}

void validate(const LaunchOptions& o) {
  if (o.nproc_per_node < 1) throw UserError("dla launch: --nproc-per-node must be at least 1");
  if (o.nnodes < 1) throw UserError("dla launch: --nnodes must be at least 1");
  if (o.node_rank < 0 || o.node_rank >= o.nnodes) {
    throw UserError(
        fmt::format("dla launch: --node-rank {} must be in [0, {}) (--nnodes)", o.node_rank, o.nnodes));
  }
  if (o.master_port && (*o.master_port < 1 || *o.master_port > 65535)) {
    throw UserError(fmt::format("dla launch: --master-port {} must be in 1..65535", *o.master_port));
  }
  if (o.command.empty()) {
    throw UserError(
        "dla launch: name the worker command after `--`, e.g. dla launch --nproc-per-node 2 -- train "
        "--config run.yaml");
  }
  if (o.command.front() == "launch")
    throw UserError("dla launch: the worker command cannot be `launch` itself");
}

}  // namespace

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) throw UserError(fmt::format("dla launch: cannot open a socket: {}", std::strerror(errno)));
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  socklen_t length = sizeof(address);
  const bool ok = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0 &&
                  ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) == 0;
  ::close(fd);
  if (!ok) throw UserError(fmt::format("dla launch: cannot find a free port: {}", std::strerror(errno)));
  return ntohs(address.sin_port);
}

int launch(const LaunchOptions& options) {
  validate(options);
  const std::string program = options.program.empty() ? self_executable() : options.program;
  const int world_size = options.nnodes * options.nproc_per_node;
  const int port = options.master_port ? *options.master_port : options.nnodes == 1 ? free_port() : 29500;
  // Workers share the node's cores; without a limit each would start one thread per core.
  const bool set_threads = std::getenv("OMP_NUM_THREADS") == nullptr;
  const unsigned threads =
      std::max(1u, std::thread::hardware_concurrency() / static_cast<unsigned>(options.nproc_per_node));

  sigset_t forwarded, original;
  sigemptyset(&forwarded);
  for (const int s : {SIGINT, SIGTERM, SIGHUP})
    sigaddset(&forwarded, s);
  ::sigprocmask(SIG_BLOCK, &forwarded, &original);

  spdlog::info("dla launch: {} worker{} on node {} of {} ({} ranks), rendezvous at {}:{}",
               options.nproc_per_node, options.nproc_per_node == 1 ? "" : "s", options.node_rank,
               options.nnodes, world_size, options.master_addr, port);
  std::vector<Worker> workers;
  for (int local = 0; local < options.nproc_per_node; ++local) {
    const int rank = options.node_rank * options.nproc_per_node + local;
    std::vector<std::pair<std::string, std::string>> env = {
        {"RANK", std::to_string(rank)},
        {"WORLD_SIZE", std::to_string(world_size)},
        {"LOCAL_RANK", std::to_string(local)},
        {"LOCAL_WORLD_SIZE", std::to_string(options.nproc_per_node)},
        {"GROUP_RANK", std::to_string(options.node_rank)},
        {"MASTER_ADDR", options.master_addr},
        {"MASTER_PORT", std::to_string(port)}};
    if (set_threads) env.emplace_back("OMP_NUM_THREADS", std::to_string(threads));
    const pid_t pid = ::fork();
    if (pid < 0) {
      signal_running(workers, SIGKILL);
      ::sigprocmask(SIG_SETMASK, &original, nullptr);
      throw UserError(fmt::format("dla launch: cannot start rank {}: {}", rank, std::strerror(errno)));
    }
    if (pid == 0) exec_worker(program, options.command, env, original);
    workers.push_back({rank, pid, true});
    spdlog::debug("dla launch: rank {} is pid {}", rank, pid);
  }

  std::optional<std::pair<int, int>> failure;  // rank, wait status
  bool kill_pending = false;
  Clock::time_point kill_at{};
  bool forwarded_once = false;
  int running = static_cast<int>(workers.size());
  while (running > 0) {
    const timespec poll{0, 100'000'000};
    siginfo_t info{};
    if (const int s = ::sigtimedwait(&forwarded, &info, &poll); s > 0) {
      if (forwarded_once) {
        spdlog::warn("dla launch: second signal {}: killing the workers", strsignal(s));
        signal_running(workers, SIGKILL);
      } else {
        spdlog::warn("dla launch: forwarding {} to the workers (send it again to kill them)", strsignal(s));
        signal_running(workers, s);
        forwarded_once = true;
      }
    }
    int status = 0;
    pid_t pid = 0;
    while ((pid = ::waitpid(-1, &status, WNOHANG)) > 0) {
      for (auto& worker : workers) {
        if (worker.pid != pid || !worker.running) continue;
        worker.running = false;
        --running;
        const bool failed = !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
        if (!failed) {
          spdlog::debug("dla launch: rank {} finished", worker.rank);
        } else if (!failure) {
          failure = {worker.rank, status};
          spdlog::error("dla launch: rank {} (pid {}) {}; stopping the other ranks", worker.rank, pid,
                        describe_status(status));
          signal_running(workers, SIGTERM);
          kill_pending = true;
          kill_at =
              Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(options.grace_period_s * 1000));
        } else {
          spdlog::debug("dla launch: rank {} {}", worker.rank, describe_status(status));
        }
      }
    }
    if (kill_pending && Clock::now() >= kill_at) {
      std::vector<int> stuck;
      for (const auto& worker : workers)
        if (worker.running) stuck.push_back(worker.rank);
      spdlog::warn("dla launch: rank {} still running {} s after the failure: killing {}",
                   fmt::join(stuck, ", "), options.grace_period_s, stuck.size() == 1 ? "it" : "them");
      signal_running(workers, SIGKILL);
      kill_pending = false;
    }
  }
  ::sigprocmask(SIG_SETMASK, &original, nullptr);
  if (failure) {
    spdlog::error("dla launch: the job failed: rank {} {}", failure->first, describe_status(failure->second));
    return exit_code(failure->second);
  }
  spdlog::info("dla launch: all {} workers finished", workers.size());
  return 0;
}

}  // namespace dla::dist
