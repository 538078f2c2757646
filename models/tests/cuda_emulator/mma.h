// Stand-in for CUDA's <mma.h> under the CPU emulator.
#pragma once
#include "emulator.h"
