// WMMA m16n16k8 TF32 fragment loads and accumulator stores on shared memory, with the shared state space and
// a 32-bit address. nvcc emits wmma.load and wmma.store with generic addresses wherever it cannot prove a
// pointer shared, which it does not for the per-chunk kernels' operands: 64-bit address arithmetic and
// generic loads were a third of those kernels' instructions (Nsight Compute). These are the same loads and
// stores, told where the data is.
#pragma once

#include <mma.h>

#include <type_traits>

#include "shared_address.cuh"

namespace dla::ops::kernels {

/// nvcuda::wmma::load_matrix_sync of an A fragment from shared memory (rows, or columns, ld entries apart).
template <class Layout>
__device__ inline void load_shared(
    nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 8, nvcuda::wmma::precision::tf32, Layout>& f,
    const float* p, unsigned ld) {
  auto* r = reinterpret_cast<unsigned*>(f.x);
  if constexpr (std::is_same_v<Layout, nvcuda::wmma::row_major>) {
    asm volatile("wmma.load.a.sync.aligned.row.m16n16k8.shared.tf32 {%0, %1, %2, %3}, [%4], %5;\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(p)), "r"(ld)
                 : "memory");
  } else {
    asm volatile("wmma.load.a.sync.aligned.col.m16n16k8.shared.tf32 {%0, %1, %2, %3}, [%4], %5;\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(p)), "r"(ld)
                 : "memory");
  }
}

/// The same for a B fragment.
template <class Layout>
__device__ inline void load_shared(
    nvcuda::wmma::fragment<nvcuda::wmma::matrix_b, 16, 16, 8, nvcuda::wmma::precision::tf32, Layout>& f,
    const float* p, unsigned ld) {
  auto* r = reinterpret_cast<unsigned*>(f.x);
  if constexpr (std::is_same_v<Layout, nvcuda::wmma::row_major>) {
    asm volatile("wmma.load.b.sync.aligned.row.m16n16k8.shared.tf32 {%0, %1, %2, %3}, [%4], %5;\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(p)), "r"(ld)
                 : "memory");
  } else {
    asm volatile("wmma.load.b.sync.aligned.col.m16n16k8.shared.tf32 {%0, %1, %2, %3}, [%4], %5;\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(p)), "r"(ld)
                 : "memory");
  }
}

/// nvcuda::wmma::load_matrix_sync of an accumulator from shared memory, row-major with rows ld entries apart.
__device__ inline void load_shared(nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 8, float>& f,
                                   const float* p, unsigned ld) {
  asm volatile(
      "wmma.load.c.sync.aligned.row.m16n16k8.shared.f32 {%0, %1, %2, %3, %4, %5, %6, %7}, [%8], %9;\n"
      : "=f"(f.x[0]), "=f"(f.x[1]), "=f"(f.x[2]), "=f"(f.x[3]), "=f"(f.x[4]), "=f"(f.x[5]), "=f"(f.x[6]),
        "=f"(f.x[7])
      : "r"(shared_address(p)), "r"(ld)
      : "memory");
}

/// nvcuda::wmma::store_matrix_sync of an accumulator to shared memory: row-major with rows ld entries apart,
/// or column-major.
__device__ inline void store_shared(
    float* p, const nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 8, float>& f, unsigned ld,
    nvcuda::wmma::layout_t layout = nvcuda::wmma::mem_row_major) {
  if (layout == nvcuda::wmma::mem_row_major) {
    asm volatile(
        "wmma.store.d.sync.aligned.row.m16n16k8.shared.f32 [%0], {%1, %2, %3, %4, %5, %6, %7, %8}, %9;\n" ::
            "r"(shared_address(p)),
        "f"(f.x[0]), "f"(f.x[1]), "f"(f.x[2]), "f"(f.x[3]), "f"(f.x[4]), "f"(f.x[5]), "f"(f.x[6]),
        "f"(f.x[7]), "r"(ld)
        : "memory");
  } else {
    asm volatile(
        "wmma.store.d.sync.aligned.col.m16n16k8.shared.f32 [%0], {%1, %2, %3, %4, %5, %6, %7, %8}, %9;\n" ::
            "r"(shared_address(p)),
        "f"(f.x[0]), "f"(f.x[1]), "f"(f.x[2]), "f"(f.x[3]), "f"(f.x[4]), "f"(f.x[5]), "f"(f.x[6]),
        "f"(f.x[7]), "r"(ld)
        : "memory");
  }
}

}  // namespace dla::ops::kernels
