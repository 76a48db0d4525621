// CPU emulation of the CUDA device environment used by the kernels in ngp_cli/cuda (docs/kernels.md).
//
// Force-included (g++ -include cpu_emu.h -DNGP_CPU) when a .cu kernel source is compiled for the CPU target by
// ngp_cli/cuda/runtime.py. It provides the CUDA names the kernels use: execution-space qualifiers, the built-in index
// variables, static and dynamic shared memory, __syncthreads and warp intrinsics (threads of a block run as fibers
// when the launch asks for sync_threads), atomics, __half/__half2 with the cuda_fp16 functions, CUDA math functions,
// vector types, and nvcuda::wmma m16n16k16 fragments with whole-tile semantics (every lane holds the whole tile).
//
// It also holds the block runner: runtime.py appends, per kernel, `NGP_EMU_EXPORT_KERNEL(name)`, which instantiates
// ngp_emu::launch_kernel<&name> — the launch parameters are unpacked once and the kernel is called directly (inlined)
// in a loop over the threads of each block. Blocks are spread over worker threads by the pool in cpu_launch.cpp,
// whose entry point comes in through the LaunchDesc.
//
// The parts live in emu/, one header each, included here in order (each relies on the ones before it).
#pragma once

#include "emu/prelude.h"
#include "emu/qualifiers.h"
#include "emu/vector_types.h"
#include "emu/launch_context.h"
#include "emu/device_math.h"
#include "emu/half.h"
#include "emu/atomics.h"
#include "emu/fibers.h"
#include "emu/wmma.h"
#include "emu/block_runner.h"
