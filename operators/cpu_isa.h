// Which build of the CPU kernels runs (gn_mxnet/operator/build.py compiles them once per
// instruction set, into gn::generic and gn::avx2; see cpu_common.h): one answer for every op of
// the library, taken once (group_norm_cpu.cc) and reported by gn_cpu_isa().
#ifndef GN_MXNET_CPU_ISA_H_
#define GN_MXNET_CPU_ISA_H_

namespace gn {
// AVX2 + FMA + F16C where the CPU has all three and GN_MXNET_CPU_ISA does not say generic;
// false where the library has no AVX2 build.
bool use_avx2();
}  // namespace gn

// GN_CPU_DISPATCH(entry, args...): gn::avx2::entry(args...) where use_avx2(), else
// gn::generic::entry(args...). A macro because the two builds are namespaces, not values; the
// avx2 name is left out of builds without it, so that nothing links against a missing build.
#ifdef GN_MXNET_WITH_AVX2
#define GN_CPU_DISPATCH(entry, ...) \
  (::gn::use_avx2() ? ::gn::avx2::entry(__VA_ARGS__) : ::gn::generic::entry(__VA_ARGS__))
#else
#define GN_CPU_DISPATCH(entry, ...) ::gn::generic::entry(__VA_ARGS__)
#endif

#endif  // GN_MXNET_CPU_ISA_H_
