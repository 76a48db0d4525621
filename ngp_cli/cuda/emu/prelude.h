// Prelude of the CPU emulation: defines NGP_CPU, includes the host headers every later part uses, and chooses the
// fiber context switch (the hand-written x86-64 one, or ucontext elsewhere or with NGP_EMU_UCONTEXT). Part of the
// CUDA emulation that cpu_emu.h assembles for the CPU target (docs/kernels.md): cpu_emu.h includes the parts in
// order, and each relies on the ones before it.
#pragma once

#ifndef NGP_CPU
#define NGP_CPU 1
#endif

#include <algorithm>
#include <atomic>
#include <cassert>
#include <climits>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <math.h>
#include <setjmp.h>
#include <sys/mman.h>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

#if !defined(__x86_64__) || defined(NGP_EMU_UCONTEXT)
#include <ucontext.h>
#define NGP_EMU_USE_UCONTEXT 1
#endif
