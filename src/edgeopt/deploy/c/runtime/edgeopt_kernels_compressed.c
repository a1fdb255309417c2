/* Convolution and fully connected layers reading sparse / clustered / narrow weights straight from flash
   (edgeopt.deploy.c.compress writes them): each output channel's weight row is decoded once, in order, into
   scratch; a sparse fully connected layer instead walks its bitmap and skips the zeros. Arithmetic and
   requantization as in edgeopt_kernels.c, bit for bit. */
#include "edgeopt_kernels_compressed.h"

/* Rounding right shift, half away from zero (gemmlowp RoundingDivideByPOT), for the power-of-two mode */
static int32_t rounding_shift(int32_t x, int32_t exponent) {
    int32_t mask = (int32_t)((((int64_t)1) << exponent) - 1);
    int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + ((x & mask) > threshold ? 1 : 0);
}

static int8_t requant(const eo_linear_t *p, int32_t acc, int32_t ch) {
    int32_t e = p->shift[ch];
    int32_t v = p->mult ? eo_requantize(acc, p->mult[ch], e)
                        : (e >= 0 ? (int32_t)((uint32_t)acc << e) : rounding_shift(acc, -e));
    v += p->out_zp;
    return (int8_t)(v < p->act_min ? p->act_min : (v > p->act_max ? p->act_max : v));
}

/* The stored fields in order: a bit buffer refilled a byte at a time (a field is at most 8 bits). */
typedef struct {
    const uint8_t *next;
    uint32_t buf;
    int32_t have;
} eo_bits_t;

static uint32_t take(eo_bits_t *r, int32_t bits) {
    if (r->have < bits) {
        r->buf |= (uint32_t)*r->next++ << r->have;
        r->have += 8;
    }
    uint32_t field = r->buf & ((1u << bits) - 1);
    r->buf >>= bits;
    r->have -= bits;
    return field;
}

/* A field as a weight: a codebook entry (`book`: the row's codebook) or a signed value. */
static int32_t weight_of(const eo_compressed_t *c, const int8_t *book, uint32_t field) {
    if (book) return book[field];
    return field >= (1u << (c->bits - 1)) ? (int32_t)field - (1 << c->bits) : (int32_t)field;
}

static const int8_t *row_book(const eo_compressed_t *c, int32_t row) {
    return c->codebook ? c->codebook + row * c->codebook_stride : 0;
}

/* Row `row` (n weights) into dst; rows are decoded in order from one reader. */
static void decode_row(const eo_compressed_t *c, int32_t row, int32_t n, int8_t *dst, eo_bits_t *r) {
    const int8_t *book = row_book(c, row);
    const uint32_t first = (uint32_t)row * (uint32_t)n;
    for (int32_t i = 0; i < n; i++) {
        uint32_t bit = first + (uint32_t)i;
        int kept = !c->bitmap || (c->bitmap[bit >> 3] >> (bit & 7)) & 1;
        dst[i] = (int8_t)(kept ? weight_of(c, book, take(r, c->bits)) : 0);
    }
}

#if defined(__GNUC__)
#define EO_CTZ(x) __builtin_ctz(x)
#else
static int32_t EO_CTZ(uint32_t x) {
    int32_t n = 0;
    while (!(x & 1u)) x >>= 1, n++;
    return n;
}
#endif

/* sum over the row's stored weights of (x - zp) * w, walking the bitmap a byte at a time (zeros skipped) */
static int32_t sparse_dot(const eo_compressed_t *c, int32_t row, int32_t n, const int8_t *x, int32_t in_off,
                          eo_bits_t *r) {
    const int8_t *book = row_book(c, row);
    const uint32_t first = (uint32_t)row * (uint32_t)n, end = first + (uint32_t)n;
    int32_t acc = 0;
    for (uint32_t bit = first; bit < end;) {
        uint32_t span = 8 - (bit & 7), mask = c->bitmap[bit >> 3] >> (bit & 7);
        if (span > end - bit) {
            span = end - bit;
            mask &= (1u << span) - 1;
        }
        for (; mask; mask &= mask - 1) {
            int32_t i = (int32_t)(bit - first) + EO_CTZ(mask);
            acc += (x[i] + in_off) * weight_of(c, book, take(r, c->bits));
        }
        bit += span;
    }
    return acc;
}

/* Whether every offset in a window (from its first input byte) fits 16 bits */
static int offsets_fit(const eo_linear_t *p) {
    return ((p->k_h - 1) * p->dil_h * p->in_w + (p->k_w - 1) * p->dil_w + 1) * p->in_c <= 65536;
}

/* A sparse row's nonzeros as (offset from the window's first input byte, weight); returns how many. */
static int32_t nonzero_taps(const eo_linear_t *p, const int8_t *w, uint16_t *offsets, int8_t *values) {
    const int32_t ic = p->in_c;
    int32_t n = 0;
    for (int32_t ky = 0, t = 0; ky < p->k_h; ky++)
        for (int32_t kx = 0; kx < p->k_w; kx++)
            for (int32_t i = 0; i < ic; i++, t++)
                if (w[t]) {
                    offsets[n] = (uint16_t)((ky * p->dil_h * p->in_w + kx * p->dil_w) * ic + i);
                    values[n++] = w[t];
                }
    return n;
}

/* Output channel outermost: its row decoded once into scratch, then every output pixel. Sparse rows also
   list their nonzeros (scratch: row, pad byte, 16-bit offsets, values: 4k + 2 bytes), and pixels whose
   window lies inside the input multiply only those (all pixels take the dense row when offsets_fit fails). */
void eo_conv2d_compressed(const eo_linear_t *p, const int8_t *in, int8_t *out, int8_t *scratch) {
    const eo_compressed_t *c = (const eo_compressed_t *)p->weights;
    const int32_t ic = p->in_c, k = p->k_h * p->k_w * ic, in_off = -p->in_zp;
    uint16_t *offsets = (uint16_t *)(void *)(scratch + ((k + 1) & ~1));
    int8_t *values = (int8_t *)(offsets + k);
    const int fast = c->bitmap && offsets_fit(p);
    eo_bits_t r = {c->values, 0, 0};
    for (int32_t oc = 0; oc < p->out_c; oc++) {
        decode_row(c, oc, k, scratch, &r);
        const int32_t taps = fast ? nonzero_taps(p, scratch, offsets, values) : 0;
        for (int32_t oy = 0; oy < p->out_h; oy++) {
            int32_t iy = oy * p->stride_h - p->pad_t;
            int rows_inside = iy >= 0 && iy + (p->k_h - 1) * p->dil_h < p->in_h;
            for (int32_t ox = 0; ox < p->out_w; ox++) {
                int32_t ix = ox * p->stride_w - p->pad_l, acc = p->bias ? p->bias[oc] : 0;
                if (fast && rows_inside && ix >= 0 && ix + (p->k_w - 1) * p->dil_w < p->in_w) {
                    const int8_t *x = in + (iy * p->in_w + ix) * ic;
                    for (int32_t t = 0; t < taps; t++) acc += (x[offsets[t]] + in_off) * values[t];
                } else {
                    acc += eo_window_dot(p, in, scratch, oy, ox);
                }
                out[(oy * p->out_w + ox) * p->out_c + oc] = requant(p, acc, oc);
            }
        }
    }
}

void eo_fully_connected_compressed(const eo_linear_t *p, const int8_t *in, int8_t *out, int8_t *scratch) {
    const eo_compressed_t *c = (const eo_compressed_t *)p->weights;
    const int32_t n = p->in_c, in_off = -p->in_zp;
    eo_bits_t r = {c->values, 0, 0};
    for (int32_t o = 0; o < p->out_c; o++) {
        int32_t acc = p->bias ? p->bias[o] : 0;
        if (c->bitmap) {
            acc += sparse_dot(c, o, n, in, in_off, &r);
        } else {
            decode_row(c, o, n, scratch, &r);
            for (int32_t i = 0; i < n; i++) acc += (in[i] + in_off) * scratch[i];
        }
        out[o] = requant(p, acc, o);
    }
}
