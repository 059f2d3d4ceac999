/* backend_cuda_stub.c — the CUDA entry points of backend.h in a build without
 * CUDA (no nvcc, or CUDA=0): the Makefile compiles this file instead of
 * backend_cuda.c.  It does nothing but say so.
 */
#include <stdio.h>

#include "engine/model/backend.h"
#include "engine/err.h"

int eng_backend_cuda_init(struct eng_backend *be, int device, char *err, size_t cap) {
    (void)device;
    be->iface = NULL;
    be->ctx = NULL;
    if (err && cap) snprintf(err, cap, "this ppd was built without CUDA (no nvcc found, or CUDA=0)");
    return ENG_E_UNSUPPORTED;
}

int eng_backend_cuda_count(void) { return 0; }
int eng_backend_cuda_built(void) { return 0; }
