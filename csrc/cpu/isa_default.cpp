// The CPU kernels for any processor.
#define CPU_CAPABILITY DEFAULT
#include "paths.h"
