// Host emulation of the CUDA subset that operators/*.cu use, so that the kernels' own source can
// be checked on a machine without a GPU (tests/test_cuda_build.py). It is a model of the CUDA
// execution rules, not of the hardware: it catches indexing, reduction and barrier mistakes, not
// compiler, memory-model or speed problems.
//
// Blocks run one after another; the threads of a block are ucontext fibers that switch only at
// __syncthreads() and warp shuffles, in a fresh pseudo-random order every round, so a missing
// barrier changes the result. Dynamic shared memory starts NaN-filled. The test rewrites each
// `kernel<<<grid, block, smem, stream>>>(args);` into `::emu::launch(grid, block, smem, lambda)`.
#ifndef GN_MXNET_TESTS_CUDA_HOST_EMULATION_H_
#define GN_MXNET_TESTS_CUDA_HOST_EMULATION_H_

#include <math.h>
#include <stdint.h>
#include <ucontext.h>

#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <utility>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__ static  // blocks run one at a time, so one static copy serves every block
#define __align__(n) alignas(n)

struct dim3 {
  unsigned x, y, z;
  dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
typedef void* cudaStream_t;
typedef int cudaError_t;
// CUDA's codes for what the emulation can report; names and words as cudaGetErrorName and
// cudaGetErrorString give them.
enum {
  cudaSuccess = 0,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorNoDevice = 100,
  cudaErrorLaunchOutOfResources = 701
};
inline const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    default: return "cudaErrorUnknown";
  }
}
inline const char* cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    default: return "unknown error";
  }
}

// IEEE binary16 with round-to-nearest-even conversions, like cuda_fp16.h's.
struct __half { _Float16 v; };
inline float __half2float(__half h) { return static_cast<float>(h.v); }
inline __half __float2half_rn(float f) { __half h; h.v = static_cast<_Float16>(f); return h; }

namespace emu {

struct Thread {
  ucontext_t ctx;
  dim3 idx;
  int warp;
  int lane;
  bool done;
};

inline dim3 block_idx, block_dim, grid_dim;
inline Thread* cur;
inline std::vector<Thread> threads;
inline ucontext_t scheduler;
inline std::function<void()>* body;
inline std::vector<unsigned char> dyn_smem;
inline std::vector<std::vector<char>> stacks;
inline int live, block_arrived;
inline unsigned block_gen;
inline std::vector<int> warp_live, warp_arrived;
inline std::vector<unsigned> warp_gen;
inline std::vector<uint64_t> exchange;  // one 8-byte slot per lane
inline int last_error = 0;
inline int injected_error = 0;  // emu_fail_next_launch()
inline uint64_t rng = 12345;

inline void yield() { swapcontext(&cur->ctx, &scheduler); }

inline void release_if_complete() {
  if (block_arrived > 0 && block_arrived == live) {
    block_arrived = 0;
    ++block_gen;
  }
  for (size_t w = 0; w < warp_live.size(); ++w) {
    if (warp_arrived[w] > 0 && warp_arrived[w] == warp_live[w]) {
      warp_arrived[w] = 0;
      ++warp_gen[w];
    }
  }
}

inline void syncthreads() {
  const unsigned gen = block_gen;
  ++block_arrived;
  release_if_complete();
  while (block_gen == gen) yield();
}

inline void syncwarp() {
  const int w = cur->warp;
  const unsigned gen = warp_gen[w];
  ++warp_arrived[w];
  release_if_complete();
  while (warp_gen[w] == gen) yield();
}

template <typename T> T shfl_down(unsigned, T v, int offset) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "one slot per lane");
  uint64_t* slots = &exchange[cur->warp * 32];
  std::memcpy(&slots[cur->lane], &v, sizeof(T));
  syncwarp();
  T r = v;  // lanes past the warp's end keep their own value, as on the GPU
  if (cur->lane + offset < 32) std::memcpy(&r, &slots[cur->lane + offset], sizeof(T));
  syncwarp();
  return r;
}

inline unsigned char* dynamic_smem() { return dyn_smem.data(); }

inline void trampoline() {
  (*body)();
  cur->done = true;
  --live;
  --warp_live[cur->warp];
  release_if_complete();
}

template <class F> void launch(dim3 grid, dim3 block, size_t smem, F&& fn) {
  if (injected_error != 0) {  // a launch the device refuses: nothing runs
    last_error = injected_error;
    injected_error = 0;
    return;
  }
  const unsigned long n = 1ul * block.x * block.y * block.z;
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 2147483647u || grid.y > 65535 ||
      grid.z > 65535 || n == 0 || n > 1024 || block.z > 64 || smem > 48 * 1024) {
    fprintf(stderr, "emu: invalid launch grid(%u,%u,%u) block(%u,%u,%u) smem %zu\n", grid.x,
            grid.y, grid.z, block.x, block.y, block.z, smem);
    last_error = cudaErrorInvalidConfiguration;
    return;
  }
  std::function<void()> f = fn;
  body = &f;
  block_dim = block;
  grid_dim = grid;
  threads.assign(n, Thread());
  if (stacks.size() < n) stacks.resize(n, std::vector<char>(64 * 1024));
  const int warps = static_cast<int>((n + 31) / 32);
  exchange.assign(warps * 32, 0);
  std::vector<unsigned long> order(n);
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        block_idx = dim3(bx, by, bz);
        dyn_smem.assign(smem + 16, 0xFF);
        live = static_cast<int>(n);
        block_arrived = 0;
        warp_live.assign(warps, 0);
        warp_arrived.assign(warps, 0);
        warp_gen.assign(warps, 0);
        for (unsigned long t = 0; t < n; ++t) {
          Thread& th = threads[t];
          th.idx = dim3(t % block.x, (t / block.x) % block.y, t / (1ul * block.x * block.y));
          th.warp = static_cast<int>(t / 32);
          th.lane = static_cast<int>(t % 32);
          th.done = false;
          ++warp_live[th.warp];
          getcontext(&th.ctx);
          th.ctx.uc_stack.ss_sp = stacks[t].data();
          th.ctx.uc_stack.ss_size = stacks[t].size();
          th.ctx.uc_link = &scheduler;
          makecontext(&th.ctx, trampoline, 0);
          order[t] = t;
        }
        for (long round = 0;; ++round) {
          if (round > 100000000) {
            fprintf(stderr, "emu: deadlock\n");
            abort();
          }
          for (unsigned long i = n; i > 1; --i) {
            rng = rng * 6364136223846793005ull + 1442695040888963407ull;
            std::swap(order[i - 1], order[(rng >> 33) % i]);
          }
          bool any = false;
          for (unsigned long i = 0; i < n; ++i) {
            Thread& th = threads[order[i]];
            if (th.done) continue;
            any = true;
            cur = &th;
            swapcontext(&scheduler, &th.ctx);
          }
          if (!any) break;
        }
      }
}

}  // namespace emu

// For tests: the next launch fails with `error` (a cudaError_t), as the device would refuse
// it. Emitted in every unit that includes this header, merged at link time.
extern "C" __attribute__((used)) inline void emu_fail_next_launch(int error) {
  emu::injected_error = error;
}

inline cudaError_t cudaGetLastError() {
  const int e = emu::last_error;
  emu::last_error = 0;
  return e;
}

#define threadIdx (::emu::cur->idx)
#define blockIdx (::emu::block_idx)
#define blockDim (::emu::block_dim)
#define gridDim (::emu::grid_dim)
#define __syncthreads() ::emu::syncthreads()
#define __shfl_down_sync(mask, v, offset) ::emu::shfl_down(mask, v, offset)

#endif  // GN_MXNET_TESTS_CUDA_HOST_EMULATION_H_
