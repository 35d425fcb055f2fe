// PyTorch's own c10d (TCPStore + ProcessGroupGloo) behind a small C API, for
// crates/bergson/src/dist/gloo.rs. See ../../../docs/build.md ("Several
// processes") and the research note shared/research/distributed.md.
//
// Every extern "C" entry catches all C++ exceptions: an error comes back as a
// malloc'd message (without libtorch's C++ backtrace) that Rust frees with
// bd_c10d_free_str. Tensors cross as at::Tensor* (tch's C_tensor*).
//
// Collectives are synchronous (asyncOp = false, then Work::wait) and refuse
// non-contiguous tensors: Gloo reduces the first numel elements of the
// storage, so a strided view would give silently wrong results.
//
// Store keys follow Python's default group (PrefixStore "default_pg", then
// the group name "0/", then "cpu/" for the Gloo backend), so a PyTorch rank
// started with init_process_group("gloo", init_method="tcp://...") can join.

#include <c10/util/Logging.h>
#include <c10/util/intrusive_ptr.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

char* dup_message(const char* msg) {
  size_t n = std::strlen(msg);
  char* out = static_cast<char*>(std::malloc(n + 1));
  if (out != nullptr) {
    std::memcpy(out, msg, n + 1);
  }
  return out;
}

// Runs f, turning any exception into *err and `fail`.
template <typename T, typename F>
T guarded(char** err, T fail, F&& f) {
  try {
    return f();
  } catch (const c10::Error& e) {
    *err = dup_message(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *err = dup_message(e.what());
  } catch (...) {
    *err = dup_message("unknown C++ exception");
  }
  return fail;
}

void check_contiguous(const at::Tensor& t) {
  if (!t.is_contiguous()) {
    throw std::invalid_argument(
        "collectives need contiguous tensors (Gloo would read the wrong "
        "elements of a strided view)");
  }
}

}  // namespace

// A Gloo process group and the TCP store it met its peers through.
struct bd_pg {
  c10::intrusive_ptr<c10d::TCPStore> tcp;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> gloo;
  std::chrono::milliseconds timeout;
};

// A store connection of its own (for a watcher thread), keyed like the group.
struct bd_store {
  c10::intrusive_ptr<c10d::Store> store;
};

extern "C" {

void bd_c10d_free_str(char* s) { std::free(s); }

// Joins (rank 0 of `world`, or every rank when server == 0, connects to) the
// TCPStore at host:port and builds a Gloo group over it. Gloo binds to the
// interface `iface` if given, else to `host` with bind_host (a loopback
// master: one machine), else to this machine's hostname as PyTorch does.
// `store_timeout_ms` bounds the rendezvous, `timeout_ms` every collective.
bd_pg* bd_pg_new(const char* host, int port, int rank, int world, int server,
                 const char* iface, int bind_host, int64_t store_timeout_ms,
                 int64_t timeout_ms, char** err) {
  return guarded<bd_pg*>(err, nullptr, [&]() -> bd_pg* {
    // c10d logs every failed store or socket call as a warning with a C++
    // backtrace; our errors carry the message, so keep stderr to errors.
    FLAGS_caffe2_log_level = std::max(FLAGS_caffe2_log_level, 2);
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(port);
    so.isServer = server != 0;
    so.numWorkers = static_cast<std::size_t>(world);
    // Every rank checks in (a PyTorch store host waits for all of them), and the host
    // waits until all did, as init_process_group does.
    so.waitWorkers = true;
    so.timeout = std::chrono::milliseconds(store_timeout_ms);
    so.useLibUV = true;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), so);
    c10::intrusive_ptr<c10d::Store> store =
        c10::make_intrusive<c10d::PrefixStore>("default_pg", tcp);
    store = c10::make_intrusive<c10d::PrefixStore>("0/", store);
    store = c10::make_intrusive<c10d::PrefixStore>("cpu/", store);
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    std::string interface(iface);
    if (!interface.empty()) {
      opts->devices.push_back(
          c10d::ProcessGroupGloo::createDeviceForInterface(interface));
    } else if (bind_host != 0) {
      opts->devices.push_back(
          c10d::ProcessGroupGloo::createDeviceForHostname(host));
    } else {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    auto gloo =
        c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, opts);
    return new bd_pg{tcp, gloo, timeout};
  });
}

// Frees the group first, then the store it was built on.
void bd_pg_free(bd_pg* pg) {
  if (pg == nullptr) {
    return;
  }
  try {
    pg->gloo.reset();
    pg->tcp.reset();
  } catch (...) {
  }
  delete pg;
}

// In-place all-reduce; op: 0 sum, 1 product, 2 min, 3 max.
int bd_all_reduce(bd_pg* pg, at::Tensor* t, int op, char** err) {
  return guarded<int>(err, -1, [&]() -> int {
    check_contiguous(*t);
    c10d::AllreduceOptions o;
    switch (op) {
      case 0: o.reduceOp = c10d::ReduceOp::SUM; break;
      case 1: o.reduceOp = c10d::ReduceOp::PRODUCT; break;
      case 2: o.reduceOp = c10d::ReduceOp::MIN; break;
      case 3: o.reduceOp = c10d::ReduceOp::MAX; break;
      default: throw std::invalid_argument("unknown reduce op");
    }
    o.timeout = pg->timeout;
    o.asyncOp = false;
    std::vector<at::Tensor> ts{*t};
    pg->gloo->allreduce(ts, o)->wait();
    return 0;
  });
}

// In-place broadcast from `root`.
int bd_broadcast(bd_pg* pg, at::Tensor* t, int root, char** err) {
  return guarded<int>(err, -1, [&]() -> int {
    check_contiguous(*t);
    c10d::BroadcastOptions o;
    o.rootRank = root;
    o.timeout = pg->timeout;
    o.asyncOp = false;
    std::vector<at::Tensor> ts{*t};
    pg->gloo->broadcast(ts, o)->wait();
    return 0;
  });
}

// Gathers every rank's `in` into outs[0..n) (n == world, each shaped as in).
int bd_all_gather(bd_pg* pg, at::Tensor** outs, int n, at::Tensor* in,
                  char** err) {
  return guarded<int>(err, -1, [&]() -> int {
    check_contiguous(*in);
    std::vector<std::vector<at::Tensor>> out(1);
    for (int i = 0; i < n; ++i) {
      check_contiguous(*outs[i]);
      out[0].push_back(*outs[i]);
    }
    std::vector<at::Tensor> ins{*in};
    c10d::AllgatherOptions o;
    o.timeout = pg->timeout;
    o.asyncOp = false;
    pg->gloo->allgather(out, ins, o)->wait();
    return 0;
  });
}

int bd_barrier(bd_pg* pg, char** err) {
  return guarded<int>(err, -1, [&]() -> int {
    c10d::BarrierOptions o;
    o.timeout = pg->timeout;
    o.asyncOp = false;
    pg->gloo->barrier(o)->wait();
    return 0;
  });
}

// A new connection to the group's store, under the prefix "bergson/".
bd_store* bd_store_open(bd_pg* pg, char** err) {
  return guarded<bd_store*>(err, nullptr, [&]() -> bd_store* {
    c10::intrusive_ptr<c10d::Store> s =
        c10::make_intrusive<c10d::PrefixStore>("bergson", pg->tcp->clone());
    return new bd_store{s};
  });
}

void bd_store_free(bd_store* s) {
  try {
    delete s;
  } catch (...) {
  }
}

// Adds `delta` to the counter `key` (created at 0) and returns the new value
// in *out; delta 0 reads it without waiting.
int bd_store_add(bd_store* s, const char* key, int64_t delta, int64_t* out,
                 char** err) {
  return guarded<int>(err, -1, [&]() -> int {
    *out = s->store->add(std::string(key), delta);
    return 0;
  });
}

}  // extern "C"
