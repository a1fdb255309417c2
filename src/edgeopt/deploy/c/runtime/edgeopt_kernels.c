/* edgeopt int8 kernels (see edgeopt_kernels.h). Integer arithmetic only; one rounding rule everywhere. */
#include "edgeopt_kernels.h"

#include <string.h>
#if EO_X86_VNNI
#include "edgeopt_x86.h"
#endif
#if EO_ARM_DSP
#include "edgeopt_arm.h"
#endif

/* gemmlowp SaturatingRoundingDoublingHighMul */
static int32_t srdhm(int32_t a, int32_t b) {
    if (a == INT32_MIN && b == INT32_MIN) return INT32_MAX;
    /* the nudge (2^30, or 1 - 2^30 below zero) and the division truncating toward zero together are
       floor((a * b + 2^30) / 2^31) for either sign: one multiply, add and shift */
    return (int32_t)(((int64_t)a * b + ((int64_t)1 << 30)) >> 31);
}

/* gemmlowp RoundingDivideByPOT: half away from zero */
static int32_t rdpot(int32_t x, int32_t exponent) {
    int32_t mask = (int32_t)((((int64_t)1) << exponent) - 1);
    int32_t remainder = x & mask;
    int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
    return (x >> exponent) + (remainder > threshold ? 1 : 0);
}

int32_t eo_requantize(int32_t acc, int32_t mult, int32_t shift) {
    int32_t left = shift > 0 ? shift : 0, right = shift > 0 ? 0 : -shift;
    return rdpot(srdhm((int32_t)((uint32_t)acc << left), mult), right);
}

/* power-of-two mode: acc * 2^exponent, rounding half away from zero */
static int32_t shift_round(int32_t acc, int32_t exponent) {
    return exponent >= 0 ? (int32_t)((uint32_t)acc << exponent) : rdpot(acc, -exponent);
}

static int32_t requant_ch(const eo_linear_t *p, int32_t acc, int ch) {
    int32_t v = p->mult ? eo_requantize(acc, p->mult[ch], p->shift[ch]) : shift_round(acc, p->shift[ch]);
    v += p->out_zp;
    if (v < p->act_min) v = p->act_min;
    if (v > p->act_max) v = p->act_max;
    return v;
}

/* Weights of output channel `row` (n values) as int8: in place for 8-bit, unpacked into scratch for 4-bit. */
static const int8_t *weight_row(const eo_linear_t *p, int32_t row, int32_t n, int8_t *scratch) {
    if (p->weight_bits == 8) return (const int8_t *)p->weights + (int64_t)row * n;
    const uint8_t *packed = (const uint8_t *)p->weights;
    int64_t start = (int64_t)row * n;
    for (int32_t i = 0; i < n; i++) {
        int64_t k = start + i;
        int32_t nib = (packed[k >> 1] >> ((k & 1) * 4)) & 0xF;
        scratch[i] = (int8_t)(nib >= 8 ? nib - 16 : nib);
    }
    return scratch;
}

/* acc[c] += (x[c] - zp) * w[c] over n channels; restrict and blocks of 16 let -O2 vectorize it */
static void mac_channels(int32_t *restrict acc, const int8_t *restrict x, const int8_t *restrict w, int32_t n,
                         int16_t off) {
#if EO_ARM_DSP
    arm_mac_channels(acc, x, w, n, off);
    return;
#endif
    int32_t c = 0;
    for (; c + 16 <= n; c += 16)
        for (int32_t j = 0; j < 16; j++) acc[c + j] += (int16_t)(x[c + j] + off) * (int16_t)w[c + j];
    for (; c < n; c++) acc[c] += (int16_t)(x[c] + off) * (int16_t)w[c];
}

/* 4-bit weights: output channel outermost, its row unpacked once into scratch */
static void conv_rows(const eo_linear_t *p, const int8_t *in, int8_t *out, int8_t *scratch) {
    const int32_t oc_n = p->out_c, k = p->k_h * p->k_w * p->in_c;
    for (int32_t oc = 0; oc < oc_n; oc++) {
        const int8_t *w = weight_row(p, oc, k, scratch);
        for (int32_t oy = 0; oy < p->out_h; oy++)
            for (int32_t ox = 0; ox < p->out_w; ox++)
                out[(oy * p->out_w + ox) * oc_n + oc] =
                    (int8_t)requant_ch(p, (p->bias ? p->bias[oc] : 0) + eo_window_dot(p, in, w, oy, ox), oc);
    }
}

/* short runs as byte loops (a library call costs more than a few bytes), long ones through the library */
static void copy_or_fill(int8_t *dst, const int8_t *src, int8_t fill, int32_t n) {
#if EO_X86_VNNI
    if (n <= 64) { /* one masked load and store */
        if (n <= 0) return;
        const __mmask64 m = _cvtu64_mask64(~0ull >> (64 - n));
        _mm512_mask_storeu_epi8(dst, m, src ? _mm512_maskz_loadu_epi8(m, src) : _mm512_set1_epi8(fill));
        return;
    }
#endif
    if (n >= 32) {
        if (src) memcpy(dst, src, (size_t)n);
        else memset(dst, fill, (size_t)n);
        return;
    }
    for (int32_t i = 0; i < n; i++) dst[i] = src ? src[i] : fill;
}

/* The input window of one output pixel as a contiguous row (HWC order); padding holds the zero point,
   which contributes (zp - zp) * w = 0, exactly as TFLite skips it. Rows above `ring_from` come from the
   ring of saved input rows (in-place convolution), the others from `in`. */
static const int8_t *gather_patch(const eo_linear_t *p, const int8_t *in, int32_t oy, int32_t ox, int8_t *patch,
                                  const int8_t *ring, int32_t ring_rows) {
    const int32_t ic = p->in_c, row = p->in_w * ic;
    int8_t *dst = patch;
    for (int32_t ky = 0; ky < p->k_h; ky++) {
        int32_t iy = oy * p->stride_h - p->pad_t + ky * p->dil_h;
        if (iy < 0 || iy >= p->in_h) {
            memset(dst, (int8_t)p->in_zp, (size_t)(p->k_w * ic));
            dst += p->k_w * ic;
            continue;
        }
        const int8_t *src = ring && iy < oy ? ring + (iy % ring_rows) * row : in + iy * row;
        if (p->dil_w == 1) { /* the row's taps are contiguous: zero-point fill, one run, zero-point fill */
            int32_t ix0 = ox * p->stride_w - p->pad_l;
            int32_t lo = ix0 < 0 ? -ix0 : 0, hi = p->in_w - ix0 < p->k_w ? p->in_w - ix0 : p->k_w;
            if (hi < lo) hi = lo;
            copy_or_fill(dst, 0, (int8_t)p->in_zp, lo * ic);
            copy_or_fill(dst + lo * ic, src + (ix0 + lo) * ic, 0, (hi - lo) * ic);
            copy_or_fill(dst + hi * ic, 0, (int8_t)p->in_zp, (p->k_w - hi) * ic);
            dst += p->k_w * ic;
            continue;
        }
        for (int32_t kx = 0; kx < p->k_w; kx++, dst += ic) {
            int32_t ix = ox * p->stride_w - p->pad_l + kx * p->dil_w;
            if (ix < 0 || ix >= p->in_w) memset(dst, (int8_t)p->in_zp, (size_t)ic);
            else memcpy(dst, src + ix * ic, (size_t)ic);
        }
    }
    return patch;
}

/* Blocks of 16 with a known trip count let compilers vectorize at -O2; the tail runs scalar. x - zp fits
   int16 ([-255, 255]) and so does its product with a weight: int16 x int16 summed in int32 is the dot-product
   pattern compilers map to multiply-add instructions (pmaddwd, SMLAD). */
static int32_t dot(const int8_t *x, const int8_t *w, int32_t n, int32_t in_off) {
#if EO_ARM_DSP
    return arm_dot(x, w, n, in_off);
#endif
    int32_t acc = 0, i = 0;
    const int16_t off = (int16_t)in_off;
    for (; i + 16 <= n; i += 16) {
        int32_t block = 0;
        for (int32_t j = 0; j < 16; j++) block += (int16_t)(x[i + j] + off) * (int16_t)w[i + j];
        acc += block;
    }
    for (; i < n; i++) acc += (x[i] + in_off) * w[i];
    return acc;
}

/* four output channels at once: each input value is loaded once for four weight rows */
static void dot4(const int8_t *restrict x, const int8_t *restrict w, int32_t k, int16_t off, int32_t *restrict acc) {
#if EO_ARM_DSP
    arm_dot4(x, w, k, off, acc);
    return;
#endif
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0, i = 0;
    for (; i + 16 <= k; i += 16) {
        int32_t b0 = 0, b1 = 0, b2 = 0, b3 = 0;
        for (int32_t j = 0; j < 16; j++) {
            int16_t xv = (int16_t)(x[i + j] + off);
            b0 += xv * (int16_t)w[i + j];
            b1 += xv * (int16_t)w[k + i + j];
            b2 += xv * (int16_t)w[2 * k + i + j];
            b3 += xv * (int16_t)w[3 * k + i + j];
        }
        a0 += b0; a1 += b1; a2 += b2; a3 += b3;
    }
    for (; i < k; i++) {
        int16_t xv = (int16_t)(x[i] + off);
        a0 += xv * w[i]; a1 += xv * w[k + i]; a2 += xv * w[2 * k + i]; a3 += xv * w[3 * k + i];
    }
    acc[0] = a0; acc[1] = a1; acc[2] = a2; acc[3] = a3;
}

static void conv_pixel(const eo_linear_t *p, const int8_t *x, int8_t *o) {
#if EO_X86_VNNI
    if (p->xw && p->k_h == 1 && p->k_w == 1) { /* a window of one run: the VNNI layout is [16][k] blocks */
        x86_conv_pixel(p, x, o);
        return;
    }
#endif
    const int32_t k = p->k_h * p->k_w * p->in_c, in_off = -p->in_zp;
    const int8_t *weights = (const int8_t *)p->weights;
    int32_t oc = 0, acc4[4];
    for (; oc + 4 <= p->out_c; oc += 4) {
        dot4(x, weights + oc * k, k, (int16_t)in_off, acc4);
        for (int32_t j = 0; j < 4; j++)
            o[oc + j] = (int8_t)requant_ch(p, (p->bias ? p->bias[oc + j] : 0) + acc4[j], oc + j);
    }
    for (; oc < p->out_c; oc++) {
        int32_t acc = (p->bias ? p->bias[oc] : 0) + dot(x, weights + oc * k, k, in_off);
        o[oc] = (int8_t)requant_ch(p, acc, oc);
    }
}

/* In place (stride 1, same grid, out_c <= in_c) row by row: output row y goes to a row buffer, input row y
   into a ring of the last pad_t rows (those later rows still read), then the row buffer over row y; writes
   stay below the rows not yet read. Scratch: input window, row buffer, ring. */
static void conv_in_place(const eo_linear_t *p, int8_t *data, int8_t *scratch) {
    const int32_t k = p->k_h * p->k_w * p->in_c, in_row = p->in_w * p->in_c, out_row = p->out_w * p->out_c;
    int8_t *patch = scratch, *row_out = scratch + k, *ring = row_out + out_row;
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        for (int32_t ox = 0; ox < p->out_w; ox++)
            conv_pixel(p, gather_patch(p, data, oy, ox, patch, ring, p->pad_t), row_out + ox * p->out_c);
        if (p->pad_t > 0) memcpy(ring + (oy % p->pad_t) * in_row, data + oy * in_row, (size_t)in_row);
        memcpy(data + oy * out_row, row_out, (size_t)out_row);
    }
}

void eo_conv2d(const eo_linear_t *p, const int8_t *in, int8_t *out, int8_t *scratch) {
    if (p->weight_bits != 8) {
        conv_rows(p, in, out, scratch);
        return;
    }
#if EO_X86_VNNI
    if (p->xw && x86_conv(p, in, out)) return;
#endif
    const int32_t ic = p->in_c, oc_n = p->out_c;
    const int pointwise = p->k_h == 1 && p->k_w == 1 && p->pad_t == 0 && p->pad_l == 0;
    if ((const int8_t *)out == in && !pointwise) {
        conv_in_place(p, out, scratch);
        return;
    }
    /* in place pointwise (stride 1, out_c <= in_c): each pixel's outputs go to scratch first, then over
       bytes whose inputs are already consumed */
    const int in_place = (const int8_t *)out == in;
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            const int8_t *x = pointwise ? in + (oy * p->stride_h * p->in_w + ox * p->stride_w) * ic
                                        : gather_patch(p, in, oy, ox, scratch, 0, 0);
            int8_t *o = in_place ? scratch : out + (oy * p->out_w + ox) * oc_n;
            conv_pixel(p, x, o);
            if (in_place) memcpy(out + (oy * p->out_w + ox) * oc_n, scratch, (size_t)oc_n);
        }
    }
}

/* Per output pixel, int32 accumulators for every channel (scratch), filled tap by tap: contiguous loops. */
void eo_depthwise_conv2d(const eo_linear_t *p, const int8_t *in, int8_t *out, int8_t *scratch) {
    const int32_t ic = p->in_c, oc_n = p->out_c, m = p->depth_multiplier, in_off = -p->in_zp;
    int32_t *acc = (int32_t *)(void *)scratch;
    const int8_t *w = weight_row(p, 0, p->k_h * p->k_w * oc_n, scratch + 4 * oc_n); /* 1HWC */
#if EO_X86_VNNI
    if (p->xw && x86_depthwise(p, in, out)) return;
#endif
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            for (int32_t oc = 0; oc < oc_n; oc++) acc[oc] = p->bias ? p->bias[oc] : 0;
            for (int32_t ky = 0; ky < p->k_h; ky++) {
                int32_t iy = oy * p->stride_h - p->pad_t + ky * p->dil_h;
                if (iy < 0 || iy >= p->in_h) continue;
                for (int32_t kx = 0; kx < p->k_w; kx++) {
                    int32_t ix = ox * p->stride_w - p->pad_l + kx * p->dil_w;
                    if (ix < 0 || ix >= p->in_w) continue;
                    const int8_t *x = in + (iy * p->in_w + ix) * ic;
                    const int8_t *wk = w + (ky * p->k_w + kx) * oc_n;
                    if (m == 1) {
                        mac_channels(acc, x, wk, oc_n, (int16_t)in_off);
                    } else {
                        for (int32_t c = 0; c < oc_n; c++) acc[c] += (x[c / m] + in_off) * wk[c];
                    }
                }
            }
            int8_t *o = out + (oy * p->out_w + ox) * oc_n;
            for (int32_t oc = 0; oc < oc_n; oc++) o[oc] = (int8_t)requant_ch(p, acc[oc], oc);
        }
    }
}

/* In place (out == in, same shape, stride 1, multiplier 1, 8-bit weights), row by row: output row y is
   computed into a row buffer, input row y is saved into a ring of the last pad_t rows (the rows above that
   later outputs still read), then row y is overwritten. Scratch: int32 accumulators, row buffer, ring. */
void eo_depthwise_conv2d_inplace(const eo_linear_t *p, int8_t *data, int8_t *scratch) {
    const int32_t c_n = p->out_c, row = p->in_w * c_n, ring_rows = p->pad_t, in_off = -p->in_zp;
    int32_t *acc = (int32_t *)(void *)scratch;
    int8_t *row_out = scratch + 4 * c_n, *ring = row_out + row;
    const int8_t *w = (const int8_t *)p->weights;
#if EO_X86_VNNI
    if (p->xw && x86_depthwise(p, data, data)) return;
#endif
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            for (int32_t c = 0; c < c_n; c++) acc[c] = p->bias ? p->bias[c] : 0;
            for (int32_t ky = 0; ky < p->k_h; ky++) {
                int32_t iy = oy - p->pad_t + ky * p->dil_h;
                if (iy < 0 || iy >= p->in_h) continue;
                const int8_t *src = iy < oy ? ring + (iy % ring_rows) * row : data + iy * row;
                for (int32_t kx = 0; kx < p->k_w; kx++) {
                    int32_t ix = ox - p->pad_l + kx * p->dil_w;
                    if (ix < 0 || ix >= p->in_w) continue;
                    const int8_t *x = src + ix * c_n;
                    const int8_t *wk = w + (ky * p->k_w + kx) * c_n;
                    mac_channels(acc, x, wk, c_n, (int16_t)in_off);
                }
            }
            for (int32_t c = 0; c < c_n; c++) row_out[ox * c_n + c] = (int8_t)requant_ch(p, acc[c], c);
        }
        if (ring_rows > 0) memcpy(ring + (oy % ring_rows) * row, data + oy * row, (size_t)row);
        memcpy(data + oy * row, row_out, (size_t)row);
    }
}

void eo_fully_connected(const eo_linear_t *p, const int8_t *in, int8_t *out, int8_t *scratch) {
    const int32_t n = p->in_c, in_off = -p->in_zp;
    if (p->weight_bits == 8) {
        conv_pixel(p, in, out); /* a fully connected layer is a 1x1 conv on one pixel */
        return;
    }
    for (int32_t o = 0; o < p->out_c; o++) {
        const int8_t *w = weight_row(p, o, n, scratch);
        int32_t acc = (p->bias ? p->bias[o] : 0) + dot(in, w, n, in_off);
        out[o] = (int8_t)requant_ch(p, acc, o);
    }
}

static int32_t clamp(int32_t v, int32_t lo, int32_t hi) { return v < lo ? lo : (v > hi ? hi : v); }

/* per output pixel, 64 channels at a time over the window's taps: the inner loops run along contiguous bytes */
static void pool(const eo_pool_t *p, const int8_t *in, int8_t *out, int is_max) {
    int32_t acc[64];
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            for (int32_t c0 = 0; c0 < p->c; c0 += 64) {
                const int32_t n = p->c - c0 < 64 ? p->c - c0 : 64;
                int32_t count = 0;
                for (int32_t j = 0; j < n; j++) acc[j] = is_max ? -128 : 0;
                for (int32_t ky = 0; ky < p->k_h; ky++) {
                    int32_t iy = oy * p->stride_h - p->pad_t + ky;
                    if (iy < 0 || iy >= p->in_h) continue;
                    for (int32_t kx = 0; kx < p->k_w; kx++) {
                        int32_t ix = ox * p->stride_w - p->pad_l + kx;
                        if (ix < 0 || ix >= p->in_w) continue;
                        const int8_t *x = in + (iy * p->in_w + ix) * p->c + c0;
                        if (is_max) {
                            for (int32_t j = 0; j < n; j++) acc[j] = x[j] > acc[j] ? x[j] : acc[j];
                        } else {
                            for (int32_t j = 0; j < n; j++) acc[j] += x[j];
                        }
                        count++;
                    }
                }
                int8_t *o = out + (oy * p->out_w + ox) * p->c + c0;
                for (int32_t j = 0; j < n; j++) {
                    int32_t v = acc[j];
                    if (!is_max && count) v = v > 0 ? (v + count / 2) / count : (v - count / 2) / count;
                    o[j] = (int8_t)clamp(v, p->act_min, p->act_max);
                }
            }
        }
    }
}

void eo_max_pool2d(const eo_pool_t *p, const int8_t *in, int8_t *out) { pool(p, in, out, 1); }
void eo_avg_pool2d(const eo_pool_t *p, const int8_t *in, int8_t *out) { pool(p, in, out, 0); }

/* sums over pixels for 64 channels at a time: the inner loop runs along contiguous channels */
void eo_mean(const eo_mean_t *p, const int8_t *in, int8_t *out) {
    int32_t sums[64];
    for (int32_t c0 = 0; c0 < p->c; c0 += 64) {
        const int32_t n = p->c - c0 < 64 ? p->c - c0 : 64;
        for (int32_t c = 0; c < n; c++) sums[c] = -p->in_zp * p->hw;
        for (int32_t i = 0; i < p->hw; i++)
            for (int32_t c = 0; c < n; c++) sums[c] += in[i * p->c + c0 + c];
        for (int32_t c = 0; c < n; c++)
            out[c0 + c] = (int8_t)clamp(eo_requantize(sums[c], p->mult, p->shift) + p->out_zp, -128, 127);
    }
}

void eo_add(const eo_add_t *p, const int8_t *a, const int8_t *b, int8_t *out) {
#if EO_X86_VNNI
    if (p->pow2 || (p->s1 <= 0 && p->s2 <= 0 && p->so <= 0)) { /* right shifts only, as TFLite's ADD has */
        x86_add(p, a, b, out);
        return;
    }
#endif
    for (int32_t i = 0; i < p->size; i++) {
        int32_t x = a[i] - p->in1_zp, y = b[i] - p->in2_zp, total;
        if (p->pow2) {
            total = shift_round((int32_t)((uint32_t)x << p->s1) + (int32_t)((uint32_t)y << p->s2), p->so);
        } else {
            int32_t sx = rdpot(srdhm(x * (1 << 20), p->m1), -p->s1);
            int32_t sy = rdpot(srdhm(y * (1 << 20), p->m2), -p->s2);
            total = rdpot(srdhm(sx + sy, p->mo), -p->so);
        }
        out[i] = (int8_t)clamp(total + p->out_zp, p->act_min, p->act_max);
    }
}

void eo_copy(const int8_t *in, int8_t *out, int32_t size) {
    if (in != out) memmove(out, in, (size_t)size);
}

void eo_concat(int32_t outer, int32_t n, const int8_t *const *ins, const int32_t *inner, int8_t *out) {
    for (int32_t r = 0; r < outer; r++) {
        for (int32_t i = 0; i < n; i++) {
            memcpy(out, ins[i] + (int64_t)r * inner[i], (size_t)inner[i]);
            out += inner[i];
        }
    }
}
