#include "env/mapped_file.h"

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <mutex>

#include "kvstash/process.h"

namespace kvstash {

// --- SIGBUS guard for mapped files -------------------------------------------------------------
//
// A fixed table of mapped ranges, read by the signal handler without locks. A slot is claimed with
// a compare-and-swap on `begin`; the handler only reads.
struct GuardSlot {
  std::atomic<uintptr_t> begin{0};
  std::atomic<uintptr_t> end{0};
  std::atomic<bool>* damaged = nullptr;
};

namespace {

std::atomic<bool> g_guard_enabled{true};  // kvstash::SetSigbusGuard
constexpr int kGuardSlots = 256;
GuardSlot g_guard[kGuardSlots];
struct sigaction g_previous_sigbus;
std::once_flag g_guard_once;

void SigbusHandler(int sig, siginfo_t* info, void* ucontext) {
  const uintptr_t addr = reinterpret_cast<uintptr_t>(info->si_addr);
  for (auto& slot : g_guard) {
    const uintptr_t begin = slot.begin.load(std::memory_order_acquire);
    if (begin == 0 || addr < begin || addr >= slot.end.load(std::memory_order_acquire)) continue;
    // Replace the lost page with zeros so the interrupted copy can finish; the reader sees
    // damaged() and throws the result away.
    const uintptr_t page = addr & ~static_cast<uintptr_t>(sysconf(_SC_PAGESIZE) - 1);
    void* fixed = mmap(reinterpret_cast<void*>(page), static_cast<size_t>(sysconf(_SC_PAGESIZE)),
                       PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    if (fixed != MAP_FAILED) {
      slot.damaged->store(true, std::memory_order_release);
      return;
    }
    break;
  }
  // Not ours: behave as if we had never been installed.
  if (g_previous_sigbus.sa_flags & SA_SIGINFO) {
    if (g_previous_sigbus.sa_sigaction != nullptr) {
      g_previous_sigbus.sa_sigaction(sig, info, ucontext);
      return;
    }
  } else if (g_previous_sigbus.sa_handler != SIG_DFL && g_previous_sigbus.sa_handler != SIG_IGN) {
    g_previous_sigbus.sa_handler(sig);
    return;
  }
  signal(SIGBUS, SIG_DFL);
  raise(SIGBUS);
}

void InstallSigbusGuard() {
  std::call_once(g_guard_once, [] {
    struct sigaction action;
    std::memset(&action, 0, sizeof(action));
    action.sa_sigaction = SigbusHandler;
    action.sa_flags = SA_SIGINFO | SA_NODEFER;
    sigemptyset(&action.sa_mask);
    sigaction(SIGBUS, &action, &g_previous_sigbus);
  });
}

}  // namespace

PosixMappedFile::~PosixMappedFile() {
  if (slot_ != nullptr) slot_->begin.store(0, std::memory_order_release);
  if (size_ > 0) munmap(const_cast<uint8_t*>(data_), size_);
}

bool PosixMappedFile::Guard() {
  if (size_ == 0) return true;
  // Disabled by the host: no handler, and the caller reads the file into memory instead.
  if (!g_guard_enabled.load(std::memory_order_acquire)) return false;
  InstallSigbusGuard();
  for (auto& slot : g_guard) {
    uintptr_t expected = 0;
    // Claim with a placeholder so the handler never sees a half-filled slot.
    if (slot.begin.compare_exchange_strong(expected, 1, std::memory_order_acq_rel)) {
      slot.damaged = &damaged_;
      slot.end.store(reinterpret_cast<uintptr_t>(data_) + size_, std::memory_order_release);
      slot.begin.store(reinterpret_cast<uintptr_t>(data_), std::memory_order_release);
      slot_ = &slot;
      return true;
    }
  }
  return false;
}

void SetSigbusGuard(bool enabled) { g_guard_enabled.store(enabled, std::memory_order_release); }

}  // namespace kvstash
