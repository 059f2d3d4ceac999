/* matmul_kpanel.h — repacking the k-quant types into K panels
 * (matmul_kpanel.c); the kernels on them have their own files. */
#ifndef PPD_MATMUL_KPANEL_H
#define PPD_MATMUL_KPANEL_H

#include <stdint.h>

#include "matmul_layout.h"

int kq_kpanel_repack(struct kq_weight *w);    /* KQ_OK, or KQ_E_NOMEM */

#endif
