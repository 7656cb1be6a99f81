// Every header the CPU kernels use, included ahead of the instruction-set target in
// isa_avx2.cpp so that what they define is compiled for the baseline in both builds (one
// definition of each inline function, whichever the linker keeps). Only paths.h's own files and
// ATen's vectorised types, which live in a namespace per instruction set, follow.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <vector>

#include "../common/box_code.h"
#include "../common/dispatch.h"
#include "../common/elementwise.h"
#include "../common/functors.h"
#include "../common/params.h"
#include "../common/philox.h"
#include "../ops/call.h"
#include "../ops/dynamic_kernels.h"
#include "eps_partials.h"
#include "kernel_table.h"
