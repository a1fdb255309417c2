/* edgeopt kernels for compressed weights (see edgeopt_kernels_compressed.c): an eo_linear_t whose
   weight_bits is 0 points `weights` at one eo_compressed_t. */
#ifndef EDGEOPT_KERNELS_COMPRESSED_H
#define EDGEOPT_KERNELS_COMPRESSED_H
#include "edgeopt_kernels.h"

typedef struct {
    const uint8_t *values;   /* `bits`-bit fields, LSB first, one per stored weight in row order; a pad byte */
    const uint8_t *bitmap;   /* NULL: every weight stored; else bit r*n+i set where weight [r][i] is (nonzero) */
    const int8_t *codebook;  /* NULL: fields are signed values; else indices into the row's codebook */
    int16_t bits;            /* 1..8 */
    int16_t codebook_stride; /* entries per row's codebook; 0: one codebook for every row */
} eo_compressed_t;

void eo_conv2d_compressed(const eo_linear_t *p, const int8_t *in, int8_t *out, int8_t *scratch);
void eo_fully_connected_compressed(const eo_linear_t *p, const int8_t *in, int8_t *out, int8_t *scratch);
#endif
