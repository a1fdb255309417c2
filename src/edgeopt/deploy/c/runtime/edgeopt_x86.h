/* edgeopt int8 kernels: the x86 AVX-512 VNNI path, included by edgeopt_kernels.c when EO_X86_VNNI is set.
   Bit-exact with the portable C: the same integer sums and TFLite's requantization, 16 lanes at a time.

   VPDPBUSD multiplies unsigned by signed bytes, so the input goes in as u = x + 128 (x ^ 0x80) and each
   output channel's bias carries -(128 + in_zp) * sum(w), folded in at codegen (`xb`): then
   sum(u * w) + xb = sum((x - in_zp) * w) + bias, exactly, in wrapping int32 arithmetic. The weights (`xw`)
   are reordered at codegen to [out_c / 16][ceil(k / 4)][16][4]: one 64-byte load feeds 16 output channels
   four input values deep, and the input's four bytes are broadcast to every lane. */
#ifndef EDGEOPT_X86_H
#define EDGEOPT_X86_H
#include <immintrin.h>

/* gemmlowp SaturatingRoundingDoublingHighMul for mult >= 0 (TFLite's multipliers): with the nudge and
   C's truncating division both cases reduce to (a * b + 2^30) >> 31 (the INT32_MIN^2 case needs b < 0). */
static inline __m512i x86_srdhm(__m512i a, __m512i b) {
    const __m512i half = _mm512_set1_epi64((int64_t)1 << 30);
    __m512i even = _mm512_srai_epi64(_mm512_add_epi64(_mm512_mul_epi32(a, b), half), 31);
    __m512i odd = _mm512_srai_epi64(_mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(a, 32),
                                                                       _mm512_srli_epi64(b, 32)), half), 31);
    return _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

/* gemmlowp RoundingDivideByPOT with a per-lane exponent: half away from zero */
static inline __m512i x86_rdpot(__m512i x, __m512i exponent) {
    const __m512i one = _mm512_set1_epi32(1);
    __m512i mask = _mm512_sub_epi32(_mm512_sllv_epi32(one, exponent), one);
    __m512i remainder = _mm512_and_si512(x, mask);
    __m512i threshold = _mm512_srai_epi32(mask, 1);
    threshold = _mm512_mask_add_epi32(threshold, _mm512_cmplt_epi32_mask(x, _mm512_setzero_si512()), threshold,
                                      one);
    __m512i up = _mm512_maskz_mov_epi32(_mm512_cmpgt_epi32_mask(remainder, threshold), one);
    return _mm512_add_epi32(_mm512_srav_epi32(x, exponent), up);
}

/* 16 accumulators of output channels oc.. (lanes past `lanes` are ignored) to int8, stored at o */
static inline void x86_requant_store(const eo_linear_t *p, __m512i acc, int32_t oc, __mmask16 lanes, int8_t *o) {
    const __m512i zero = _mm512_setzero_si512();
    __m512i shift = _mm512_maskz_loadu_epi32(lanes, p->shift + oc);
    __m512i left = _mm512_max_epi32(shift, zero), right = _mm512_max_epi32(_mm512_sub_epi32(zero, shift), zero);
    __m512i v = _mm512_sllv_epi32(acc, left);
    if (p->mult) v = x86_srdhm(v, _mm512_maskz_loadu_epi32(lanes, p->mult + oc));
    v = _mm512_add_epi32(x86_rdpot(v, right), _mm512_set1_epi32(p->out_zp));
    v = _mm512_min_epi32(_mm512_max_epi32(v, _mm512_set1_epi32(p->act_min)), _mm512_set1_epi32(p->act_max));
    _mm_mask_storeu_epi8(o, lanes, _mm512_cvtepi32_epi8(v));
}

static inline __m512i x86_dp(__m512i acc, uint32_t u, const int8_t *w) {
    return _mm512_dpbusd_epi32(acc, _mm512_set1_epi32((int32_t)u), _mm512_loadu_si512((const void *)w));
}

/* One output pixel of a conv / fully connected layer from its input window x (k int8 values): every
   output channel, 16 at a time, four partial sums per block to hide VPDPBUSD's latency. */
static void x86_conv_pixel(const eo_linear_t *p, const int8_t *x, int8_t *o) {
    const int32_t k = p->k_h * p->k_w * p->in_c, words = (k + 3) / 4;
    uint32_t u[words];
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int32_t i = 0; i < k; i += 64) { /* u = x ^ 0x80, 64 bytes at a time; padding bytes meet zero weights */
        int32_t n = k - i < 64 ? k - i : 64, padded = 4 * words - i < 64 ? 4 * words - i : 64;
        __m512i v = _mm512_xor_si512(_mm512_maskz_loadu_epi8(_cvtu64_mask64(~0ull >> (64 - n)), x + i), flip);
        _mm512_mask_storeu_epi8((char *)u + i, _cvtu64_mask64(~0ull >> (64 - padded)), v);
    }
    for (int32_t oc = 0; oc < p->out_c; oc += 16) {
        const int32_t n = p->out_c - oc < 16 ? p->out_c - oc : 16;
        const __mmask16 lanes = (__mmask16)((1u << n) - 1);
        const int8_t *w = p->xw + (int64_t)oc * words * 4;
        __m512i a0 = _mm512_maskz_loadu_epi32(lanes, p->xb + oc), a1 = _mm512_setzero_si512(), a2 = a1, a3 = a1;
        int32_t i = 0;
        for (; i + 4 <= words; i += 4, w += 256) {
            a0 = x86_dp(a0, u[i], w);
            a1 = x86_dp(a1, u[i + 1], w + 64);
            a2 = x86_dp(a2, u[i + 2], w + 128);
            a3 = x86_dp(a3, u[i + 3], w + 192);
        }
        for (; i < words; i++, w += 64) a0 = x86_dp(a0, u[i], w);
        __m512i acc = _mm512_add_epi32(_mm512_add_epi32(a0, a1), _mm512_add_epi32(a2, a3));
        x86_requant_store(p, acc, oc, lanes, o + oc);
    }
}
/* (x - zp) * w for 16 channels: int32 lanes whose values fit int16, and weights with a zero upper half,
   so VPMADDWD's pair sum is the one product (|x - zp| <= 255, |w| <= 128: no int16 overflow) */
static inline __m512i x86_mac16(__m512i acc, const int8_t *x, const int32_t *w, __m512i off, __mmask16 lanes) {
    __m512i xv = _mm512_add_epi32(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(lanes, x)), off);
    return _mm512_add_epi32(acc, _mm512_madd_epi16(xv, _mm512_maskz_loadu_epi32(lanes, w)));
}

/* a depthwise layer's weights (n values) as int32 lanes with a zero upper half, once per call */
static void x86_widen_weights(const int8_t *w, int32_t n, int32_t *out) {
    for (int32_t i = 0; i < n; i++) out[i] = (uint16_t)(int16_t)w[i];
}

/* One output pixel of a depthwise conv (multiplier 1): rows[ky] is input row iy (NULL outside the image), w
   the 1HWC weights widened by x86_widen_weights. The taps inside the image are listed once; then 64
   channels at a time run through them with four accumulators in registers. */
static void x86_depthwise_pixel(const eo_linear_t *p, const int8_t *const *rows, int32_t ox, const int32_t *w,
                                int8_t *o) {
    const int32_t c_n = p->out_c;
    const __m512i off = _mm512_set1_epi32(-p->in_zp);
    const int8_t *xs[p->k_h * p->k_w];
    const int32_t *ws[p->k_h * p->k_w];
    int32_t taps = 0;
    for (int32_t ky = 0; ky < p->k_h; ky++) {
        if (!rows[ky]) continue;
        for (int32_t kx = 0; kx < p->k_w; kx++) {
            int32_t ix = ox * p->stride_w - p->pad_l + kx * p->dil_w;
            if (ix < 0 || ix >= p->in_w) continue;
            xs[taps] = rows[ky] + ix * c_n;
            ws[taps++] = w + (ky * p->k_w + kx) * c_n;
        }
    }
    for (int32_t c = 0; c < c_n; c += 64) {
        __mmask16 lanes[4];
        __m512i acc[4];
        for (int32_t j = 0; j < 4; j++) {
            int32_t left = c_n - c - 16 * j;
            lanes[j] = (__mmask16)(left >= 16 ? 0xFFFF : left > 0 ? (1u << left) - 1 : 0);
            acc[j] = p->bias ? _mm512_maskz_loadu_epi32(lanes[j], p->bias + c + 16 * j) : _mm512_setzero_si512();
        }
        for (int32_t t = 0; t < taps; t++)
            for (int32_t j = 0; j < 4; j++)
                acc[j] = x86_mac16(acc[j], xs[t] + c + 16 * j, ws[t] + c + 16 * j, off, lanes[j]);
        for (int32_t j = 0; j < 4 && lanes[j]; j++) x86_requant_store(p, acc[j], c + 16 * j, lanes[j], o + c + 16 * j);
    }
}

/* TFLite ADD, 16 elements at a time (see eo_add) */
static void x86_add(const eo_add_t *p, const int8_t *a, const int8_t *b, int8_t *out) {
    for (int32_t i = 0; i < p->size; i += 16) {
        const __mmask16 lanes = (__mmask16)(p->size - i < 16 ? (1u << (p->size - i)) - 1 : 0xFFFF);
        __m512i x = _mm512_sub_epi32(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(lanes, a + i)),
                                     _mm512_set1_epi32(p->in1_zp));
        __m512i y = _mm512_sub_epi32(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(lanes, b + i)),
                                     _mm512_set1_epi32(p->in2_zp));
        __m512i total;
        if (p->pow2) {
            total = _mm512_add_epi32(_mm512_slli_epi32(x, (unsigned)p->s1), _mm512_slli_epi32(y, (unsigned)p->s2));
            total = p->so >= 0 ? _mm512_slli_epi32(total, (unsigned)p->so)
                               : x86_rdpot(total, _mm512_set1_epi32(-p->so));
        } else {
            __m512i sx = x86_rdpot(x86_srdhm(_mm512_slli_epi32(x, 20), _mm512_set1_epi32(p->m1)),
                                   _mm512_set1_epi32(-p->s1));
            __m512i sy = x86_rdpot(x86_srdhm(_mm512_slli_epi32(y, 20), _mm512_set1_epi32(p->m2)),
                                   _mm512_set1_epi32(-p->s2));
            total = x86_rdpot(x86_srdhm(_mm512_add_epi32(sx, sy), _mm512_set1_epi32(p->mo)),
                              _mm512_set1_epi32(-p->so));
        }
        total = _mm512_add_epi32(total, _mm512_set1_epi32(p->out_zp));
        total = _mm512_min_epi32(_mm512_max_epi32(total, _mm512_set1_epi32(p->act_min)),
                                 _mm512_set1_epi32(p->act_max));
        _mm_mask_storeu_epi8(out + i, lanes, _mm512_cvtepi32_epi8(total));
    }
}
#endif
