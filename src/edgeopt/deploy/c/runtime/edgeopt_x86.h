/* edgeopt int8 kernels: the x86 AVX-512 VNNI path, included by edgeopt_kernels.c when EO_X86_VNNI is set.
   Bit-exact with the portable C: the same integer sums and TFLite's requantization, 16 lanes at a time.

   VPDPBUSD multiplies unsigned by signed bytes, so the input goes in as u = x + 128 (x ^ 0x80) and each
   output channel's bias carries -(128 + in_zp) * sum(w), folded in at codegen (`xb`): then
   sum(u * w) + xb = sum((x - in_zp) * w) + bias, exactly, in wrapping int32 arithmetic. The weights (`xw`)
   are reordered at codegen (simd.py) to [out_c / 16][words][16][4]: one 64-byte load feeds 16 output
   channels four input values deep, and the input's four bytes are broadcast to every lane.

   Convolutions convert each input row to u8 once, into a ring of rows padded left and right with the zero
   point (whose products cancel against xb like any other input), so every output pixel reads its window
   straight from the ring with no bounds checks; tiles of up to 8 pixels x 4 blocks of 16 output channels
   keep their sums in registers while the weights stream past once per tile. */
#ifndef EDGEOPT_X86_H
#define EDGEOPT_X86_H
#include <immintrin.h>

#define X86_RING_MAX (128 * 1024) /* stack bytes for the ring; a larger layer takes the portable kernel */

/* TFLite's requantization of 16 lanes as one 64-bit rounding shift per lane (constants per channel):
   SaturatingRoundingDoublingHighMul is floor((v * m + 2^30) / 2^31) = t and RoundingDivideByPOT(t, e) is
   floor((t + h - [t < 0]) / 2^e) with h = 2^e / 2 (e > 0); the two floors nest, so the result is
   (v * m + 2^30 + (h - [t < 0]) 2^31) >> (31 + e), with t < 0 exactly when v * m < -2^30. The power-of-two
   mode uses m = 2^30 and no 2^30 nudge: (v 2^30 + (h - [v < 0]) 2^30) >> (30 + e). Even and odd lanes are
   the low and high halves of 64-bit lanes (VPMULDQ). */
typedef struct {
    __m512i m_even, m_odd, k_even, k_odd, d_even, d_odd, s_even, s_odd, left, negative_below;
} x86_rq_t;

/* The constants of 16 lanes from their multipliers and shifts (pow2: the power-of-two mode, mult unused) */
static inline void x86_rq_prep(x86_rq_t *r, __m512i mult, __m512i shift, int pow2) {
    const __m512i zero = _mm512_setzero_si512(), one = _mm512_set1_epi32(1), low = _mm512_set1_epi64(0xFFFFFFFF);
    const unsigned unit = pow2 ? 30 : 31; /* k, d in units of 2^unit */
    __m512i e = _mm512_max_epi32(_mm512_sub_epi32(zero, shift), zero);
    __m512i h = _mm512_srli_epi32(_mm512_sllv_epi32(one, e), 1), d = _mm512_min_epi32(e, one);
    __m512i s = _mm512_add_epi32(e, _mm512_set1_epi32((int32_t)unit));
    __m512i nudge = _mm512_set1_epi64(pow2 ? 0 : (int64_t)1 << 30);
    if (pow2) mult = _mm512_set1_epi32(1 << 30);
    r->m_even = mult;
    r->m_odd = _mm512_srli_epi64(mult, 32);
    r->k_even = _mm512_add_epi64(_mm512_slli_epi64(_mm512_and_si512(h, low), unit), nudge);
    r->k_odd = _mm512_add_epi64(_mm512_slli_epi64(_mm512_srli_epi64(h, 32), unit), nudge);
    r->d_even = _mm512_slli_epi64(_mm512_and_si512(d, low), unit);
    r->d_odd = _mm512_slli_epi64(_mm512_srli_epi64(d, 32), unit);
    r->s_even = _mm512_and_si512(s, low);
    r->s_odd = _mm512_srli_epi64(s, 32);
    r->left = _mm512_max_epi32(shift, zero);
    r->negative_below = _mm512_set1_epi64(pow2 ? 0 : -((int64_t)1 << 30));
}

/* the constants of the 16 output channels from oc (lanes past `lanes`: multiplier and shift 0) */
static inline void x86_rq_channels(x86_rq_t *r, const eo_linear_t *p, int32_t oc, __mmask16 lanes) {
    __m512i mult = p->mult ? _mm512_maskz_loadu_epi32(lanes, p->mult + oc) : _mm512_setzero_si512();
    x86_rq_prep(r, mult, _mm512_maskz_loadu_epi32(lanes, p->shift + oc), !p->mult);
}

/* the layer's output zero point and activation range, broadcast */
typedef struct {
    __m512i zp, lo, hi;
} x86_out_t;

static inline x86_out_t x86_out(const eo_linear_t *p) {
    x86_out_t o = {_mm512_set1_epi32(p->out_zp), _mm512_set1_epi32(p->act_min), _mm512_set1_epi32(p->act_max)};
    return o;
}

/* one half (even or odd lanes, in the low dwords of 64-bit lanes) of x86_rq */
static inline __m512i x86_rq_half(__m512i v, __m512i m, __m512i k, __m512i d, __m512i s, __m512i below) {
    __m512i prod = _mm512_mul_epi32(v, m), z = _mm512_add_epi64(prod, k);
    z = _mm512_mask_sub_epi64(z, _mm512_cmplt_epi64_mask(prod, below), z, d);
    return _mm512_srav_epi64(z, s);
}

/* 16 int32 values -> TFLite's MultiplyByQuantizedMultiplier of each (int32 lanes) */
static inline __m512i x86_rq_raw(const x86_rq_t *r, __m512i acc) {
    __m512i v = _mm512_sllv_epi32(acc, r->left);
    __m512i even = x86_rq_half(v, r->m_even, r->k_even, r->d_even, r->s_even, r->negative_below);
    __m512i odd = x86_rq_half(_mm512_srli_epi64(v, 32), r->m_odd, r->k_odd, r->d_odd, r->s_odd, r->negative_below);
    return _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
}

/* 16 int32 accumulators -> requantized, offset by the zero point and clamped (int32 lanes) */
static inline __m512i x86_rq(const x86_rq_t *r, __m512i acc, const x86_out_t *o) {
    __m512i v = _mm512_add_epi32(x86_rq_raw(r, acc), o->zp);
    return _mm512_min_epi32(_mm512_max_epi32(v, o->lo), o->hi);
}

static inline __mmask16 x86_lanes(int32_t n) { return (__mmask16)(n >= 16 ? 0xFFFF : n > 0 ? (1u << n) - 1 : 0); }

/* 16 accumulators of output channels oc.. (lanes past `lanes` are ignored) to int8, stored at o */
static void x86_requant_store(const eo_linear_t *p, __m512i acc, int32_t oc, __mmask16 lanes, int8_t *o) {
    x86_rq_t r;
    x86_rq_channels(&r, p, oc, lanes);
    const x86_out_t out = x86_out(p);
    _mm_mask_storeu_epi8(o, lanes, _mm512_cvtepi32_epi8(x86_rq(&r, acc, &out)));
}

/* acc += VPDPBUSD(u, 64 weight bytes at w), in asm: with the intrinsic gcc copies the depthwise sums between
   registers around every use (the tied accumulator operand) */
static inline __m512i x86_dpbusd(__m512i acc, __m512i u, const int8_t *w) {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(u), "m"(*(const struct { int8_t b[64]; } *)(const void *)w));
    return acc;
}

static inline __m512i x86_dp(__m512i acc, uint32_t u, const int8_t *w) {
    return _mm512_dpbusd_epi32(acc, _mm512_set1_epi32((int32_t)u), _mm512_loadu_si512((const void *)w));
}

/* One output pixel of a fully connected layer (or a 1x1 conv) from its input x (k int8 values): every
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
        const __mmask16 lanes = x86_lanes(p->out_c - oc);
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

/* The ring of input rows as u8, each padded to the columns the windows reach (zero point outside the
   image), and one row of zero point for the rows above and below it. Rows are converted in order, once. */
typedef struct {
    uint8_t *rows, *outside;
    int32_t slots, row_bytes, next;
} x86_ring_t;

/* bytes of one ring row: the padded columns and 64 bytes of slack for reads past the last window */
static int32_t x86_ring_row_bytes(const eo_linear_t *p) {
    int32_t right = (p->out_w - 1) * p->stride_w - p->pad_l + (p->k_w - 1) * p->dil_w - (p->in_w - 1);
    return ((p->pad_l + p->in_w + (right > 0 ? right : 0)) * p->in_c + 64 + 63) & ~63;
}

static int32_t x86_ring_slots(const eo_linear_t *p) { return (p->k_h - 1) * p->dil_h + 1; }

/* Points rows[ky] at input row oy * stride - pad_t + ky * dil_h in the ring (its column 0 is column -pad_l),
   converting the rows not yet there. Rows before `next` were converted earlier: an in-place layer may have
   written over them since. */
static void x86_ring_rows(const eo_linear_t *p, x86_ring_t *ring, const int8_t *in, int32_t oy, const uint8_t **rows) {
    const int32_t first = oy * p->stride_h - p->pad_t, width = p->in_w * p->in_c;
    const __m512i flip = _mm512_set1_epi8((char)0x80);
    for (int32_t ky = 0; ky < p->k_h; ky++) {
        int32_t iy = first + ky * p->dil_h;
        if (iy < 0 || iy >= p->in_h) {
            rows[ky] = ring->outside;
            continue;
        }
        uint8_t *dst = ring->rows + (iy % ring->slots) * ring->row_bytes;
        rows[ky] = dst;
        if (iy < ring->next) continue;
        const int8_t *src = in + iy * width;
        dst += p->pad_l * p->in_c;
        for (int32_t i = 0; i < width; i += 64) {
            __mmask64 m = _cvtu64_mask64(width - i >= 64 ? ~0ull : ~0ull >> (64 - (width - i)));
            _mm512_mask_storeu_epi8(dst + i, m, _mm512_xor_si512(_mm512_maskz_loadu_epi8(m, src + i), flip));
        }
        ring->next = iy + 1;
    }
}

/* What a conv tile reads: segments (kernel rows, or taps when dilated) of words 4-byte words each */
typedef struct {
    const eo_linear_t *p;
    const uint8_t **segment; /* this output row's segment starts at output column 0 */
    const x86_rq_t *rq;      /* per block of 16 output channels */
    x86_out_t out;
    int32_t segments, words_per_segment, words, step; /* step: input bytes between neighbouring output pixels */
} x86_conv_t;

/* P output pixels from column ox x NB blocks of 16 output channels from block `block`, sums in registers */
static inline __attribute__((always_inline)) void x86_tile(const x86_conv_t *c, int32_t ox, int32_t block,
                                                           int8_t *o, const int P, const int NB) {
    const eo_linear_t *p = c->p;
    const int64_t block_bytes = (int64_t)c->words * 64;
    __m512i acc[8][4];
#pragma GCC unroll 4
    for (int b = 0; b < NB; b++)
#pragma GCC unroll 8
        for (int i = 0; i < P; i++) acc[i][b] = _mm512_setzero_si512(); /* the bias after the loop: gcc then
                                                                       keeps each sum in one register */
    const int8_t *w = p->xw + block * block_bytes;
    for (int32_t s = 0; s < c->segments; s++) {
        const uint8_t *x = c->segment[s] + ox * c->step;
        for (int32_t j = 0; j < c->words_per_segment; j++, x += 4, w += 64) {
            __m512i wv[4];
#pragma GCC unroll 4
            for (int b = 0; b < NB; b++) wv[b] = _mm512_loadu_si512((const void *)(w + b * block_bytes));
#pragma GCC unroll 8
            for (int i = 0; i < P; i++) {
                uint32_t u4;
                memcpy(&u4, x + i * c->step, 4);
                const __m512i u = _mm512_set1_epi32((int32_t)u4);
#pragma GCC unroll 4
                for (int b = 0; b < NB; b++) acc[i][b] = _mm512_dpbusd_epi32(acc[i][b], u, wv[b]);
            }
        }
    }
    __mmask16 lanes[4];
    __m512i bias[4];
#pragma GCC unroll 4
    for (int b = 0; b < NB; b++) {
        lanes[b] = x86_lanes(p->out_c - 16 * (block + b));
        bias[b] = _mm512_maskz_loadu_epi32(lanes[b], p->xb + 16 * (block + b));
    }
#pragma GCC unroll 8
    for (int i = 0; i < P; i++)
#pragma GCC unroll 4
        for (int b = 0; b < NB; b++)
            _mm_mask_storeu_epi8(o + i * p->out_c + 16 * (block + b), lanes[b],
                                 _mm512_cvtepi32_epi8(x86_rq(&c->rq[block + b], _mm512_add_epi32(acc[i][b], bias[b]),
                                                             &c->out)));
}

typedef void (*x86_tile_fn)(const x86_conv_t *, int32_t, int32_t, int8_t *);
#define X86_TILE(P, NB) \
    static void x86_tile_##P##_##NB(const x86_conv_t *c, int32_t ox, int32_t b, int8_t *o) { x86_tile(c, ox, b, o, P, NB); }
X86_TILE(8, 1) X86_TILE(4, 1) X86_TILE(2, 1) X86_TILE(1, 1) X86_TILE(6, 2) X86_TILE(4, 2) X86_TILE(2, 2) X86_TILE(1, 2)
X86_TILE(4, 3) X86_TILE(2, 3) X86_TILE(1, 3) X86_TILE(4, 4) X86_TILE(2, 4) X86_TILE(1, 4)
/* per count of blocks, tile widths from the widest (sums and weights fill the 32 registers) down: a row is
   covered greedily, so every width exists once per block count (fewer copies: a faster build) */
static const x86_tile_fn x86_tiles[4][4] = {{x86_tile_8_1, x86_tile_4_1, x86_tile_2_1, x86_tile_1_1},
                                            {x86_tile_6_2, x86_tile_4_2, x86_tile_2_2, x86_tile_1_2},
                                            {x86_tile_4_3, x86_tile_2_3, x86_tile_1_3, 0},
                                            {x86_tile_4_4, x86_tile_2_4, x86_tile_1_4, 0}};
static const int32_t x86_tile_pixels[4][4] = {{8, 4, 2, 1}, {6, 4, 2, 1}, {4, 2, 1, 0}, {4, 2, 1, 0}};

/* A conv with 8-bit weights in the VNNI layout, out == in allowed (in-place layers: stride 1, same grid,
   out_c <= in_c, so output row y covers only input rows <= y, which the ring already holds). Returns 0,
   doing nothing, when the ring would not fit X86_RING_MAX. */
static int x86_conv(const eo_linear_t *p, const int8_t *in, int8_t *out) {
    const int32_t slots = x86_ring_slots(p), row_bytes = x86_ring_row_bytes(p), blocks = (p->out_c + 15) / 16;
    if ((int64_t)(slots + 1) * row_bytes > X86_RING_MAX) return 0;
    uint8_t ring_bytes[(slots + 1) * row_bytes];
    memset(ring_bytes, (uint8_t)(p->in_zp ^ 0x80), sizeof ring_bytes);
    x86_ring_t ring = {ring_bytes, ring_bytes + slots * row_bytes, slots, row_bytes, 0};
    x86_rq_t rq[blocks];
    for (int32_t b = 0; b < blocks; b++) x86_rq_channels(&rq[b], p, 16 * b, x86_lanes(p->out_c - 16 * b));
    const int dilated = p->dil_w != 1;
    const int32_t segments = dilated ? p->k_h * p->k_w : p->k_h;
    const int32_t per_segment = ((dilated ? 1 : p->k_w) * p->in_c + 3) / 4;
    const uint8_t *rows[p->k_h], *segment[segments];
    x86_conv_t c = {p, segment, rq, x86_out(p), segments, per_segment, segments * per_segment, p->stride_w * p->in_c};
    const int32_t nb = blocks < 4 ? blocks : 4;
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        x86_ring_rows(p, &ring, in, oy, rows);
        for (int32_t s = 0; s < segments; s++)
            segment[s] = rows[dilated ? s / p->k_w : s] + (dilated ? (s % p->k_w) * p->dil_w * p->in_c : 0);
        int8_t *o = out + (int64_t)oy * p->out_w * p->out_c;
        for (int32_t b = 0; b < blocks; b += nb) {
            const int32_t n = blocks - b < nb ? blocks - b : nb;
            for (int32_t t = 0, ox = 0; ox < p->out_w; t++)
                for (const int32_t wide = x86_tile_pixels[n - 1][t]; p->out_w - ox >= wide; ox += wide)
                    x86_tiles[n - 1][t](&c, ox, b, o + ox * p->out_c);
        }
    }
    return 1;
}

/* A depthwise conv (multiplier 1) with the VNNI layout (simd.vnni_depthwise_weights), out == in allowed
   (same shape, stride 1). Per output pixel and 64 channels, four taps' bytes are interleaved per channel
   (VPUNPCKLBW/HBW, then LWD/HWD) into the dwords VPDPBUSD sums: channel 16k + 4r + j of a group lands in
   vector r, 128-bit lane k, dword j, the order of the codegen's weights and bias, and two saturating packs
   (values already clamped) bring the bytes back into channel order. Returns 0 as x86_conv does. */
static int x86_depthwise(const eo_linear_t *p, const int8_t *in, int8_t *out) {
    const int32_t slots = x86_ring_slots(p), row_bytes = x86_ring_row_bytes(p), c_n = p->out_c;
    const int32_t groups = (c_n + 63) / 64, taps = p->k_h * p->k_w, quads = (taps + 3) / 4;
    if ((int64_t)(slots + 1) * row_bytes > X86_RING_MAX) return 0;
    uint8_t ring_bytes[(slots + 1) * row_bytes];
    memset(ring_bytes, (uint8_t)(p->in_zp ^ 0x80), sizeof ring_bytes);
    x86_ring_t ring = {ring_bytes, ring_bytes + slots * row_bytes, slots, row_bytes, 0};
    x86_rq_t rq[4 * groups];
    for (int32_t v = 0; v < 4 * groups; v++) { /* vector r of group g: channels 64g + 16k + 4r + j */
        int32_t mult[16], shift[16];
        for (int32_t i = 0; i < 16; i++) {
            int32_t ch = 64 * (v / 4) + 16 * (i / 4) + 4 * (v % 4) + i % 4;
            mult[i] = ch < c_n && p->mult ? p->mult[ch] : 0;
            shift[i] = ch < c_n ? p->shift[ch] : 0;
        }
        x86_rq_prep(&rq[v], _mm512_loadu_si512(mult), _mm512_loadu_si512(shift), !p->mult);
    }
    const x86_out_t o = x86_out(p);
    const uint8_t *rows[p->k_h], *tap[4 * quads];
    for (int32_t oy = 0; oy < p->out_h; oy++) {
        x86_ring_rows(p, &ring, in, oy, rows);
        for (int32_t t = 0; t < 4 * quads; t++) /* padding taps read tap 0 against zero weights */
            tap[t] = t < taps ? rows[t / p->k_w] + (t % p->k_w) * p->dil_w * c_n : tap[0];
        for (int32_t ox = 0; ox < p->out_w; ox++) {
            const int32_t at = ox * p->stride_w * c_n;
            int8_t *dst = out + ((int64_t)oy * p->out_w + ox) * c_n;
            for (int32_t g = 0; g < groups; g++) {
                const int8_t *w = p->xw + (int64_t)g * quads * 256;
                __m512i acc[4];
                for (int32_t r = 0; r < 4; r++) acc[r] = _mm512_setzero_si512(); /* bias after: no copies */
                for (int32_t q = 0; q < quads; q++, w += 256) {
                    const uint8_t *const *t4 = tap + 4 * q;
                    const int32_t c0 = at + 64 * g;
                    __m512i x0 = _mm512_loadu_si512(t4[0] + c0), x1 = _mm512_loadu_si512(t4[1] + c0);
                    __m512i x2 = _mm512_loadu_si512(t4[2] + c0), x3 = _mm512_loadu_si512(t4[3] + c0);
                    __m512i lo01 = _mm512_unpacklo_epi8(x0, x1), hi01 = _mm512_unpackhi_epi8(x0, x1);
                    __m512i lo23 = _mm512_unpacklo_epi8(x2, x3), hi23 = _mm512_unpackhi_epi8(x2, x3);
                    acc[0] = x86_dpbusd(acc[0], _mm512_unpacklo_epi16(lo01, lo23), w);
                    acc[1] = x86_dpbusd(acc[1], _mm512_unpackhi_epi16(lo01, lo23), w + 64);
                    acc[2] = x86_dpbusd(acc[2], _mm512_unpacklo_epi16(hi01, hi23), w + 128);
                    acc[3] = x86_dpbusd(acc[3], _mm512_unpackhi_epi16(hi01, hi23), w + 192);
                }
                for (int32_t r = 0; r < 4; r++)
                    acc[r] = _mm512_add_epi32(acc[r], _mm512_loadu_si512((const void *)(p->xb + 64 * g + 16 * r)));
                const x86_rq_t *r = rq + 4 * g;
                __m512i bytes = _mm512_packs_epi16(_mm512_packs_epi32(x86_rq(r, acc[0], &o), x86_rq(r + 1, acc[1], &o)),
                                                   _mm512_packs_epi32(x86_rq(r + 2, acc[2], &o), x86_rq(r + 3, acc[3], &o)));
                const int32_t n = c_n - 64 * g;
                _mm512_mask_storeu_epi8(dst + 64 * g, _cvtu64_mask64(n >= 64 ? ~0ull : ~0ull >> (64 - n)), bytes);
            }
        }
    }
    return 1;
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

/* TFLite ADD, 16 elements at a time (see eo_add): each rescaling is one x86_rq_raw (right shifts only) */
static void x86_add(const eo_add_t *p, const int8_t *a, const int8_t *b, int8_t *out) {
    const int32_t m[3] = {p->m1, p->m2, p->mo}, shift[3] = {p->s1, p->s2, p->so};
    x86_rq_t rq[3];
    for (int32_t j = 0; j < 3; j++) x86_rq_prep(&rq[j], _mm512_set1_epi32(m[j]), _mm512_set1_epi32(shift[j]), 0);
    const __m512i zp1 = _mm512_set1_epi32(p->in1_zp), zp2 = _mm512_set1_epi32(p->in2_zp);
    const __m512i zp = _mm512_set1_epi32(p->out_zp), lo = _mm512_set1_epi32(p->act_min), hi = _mm512_set1_epi32(p->act_max);
    for (int32_t i = 0; i < p->size; i += 16) {
        const __mmask16 lanes = x86_lanes(p->size - i);
        __m512i x = _mm512_sub_epi32(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(lanes, a + i)), zp1);
        __m512i y = _mm512_sub_epi32(_mm512_cvtepi8_epi32(_mm_maskz_loadu_epi8(lanes, b + i)), zp2);
        __m512i total;
        if (p->pow2) {
            total = _mm512_add_epi32(_mm512_slli_epi32(x, (unsigned)p->s1), _mm512_slli_epi32(y, (unsigned)p->s2));
            total = p->so >= 0 ? _mm512_slli_epi32(total, (unsigned)p->so)
                               : x86_rdpot(total, _mm512_set1_epi32(-p->so));
        } else {
            __m512i sx = x86_rq_raw(&rq[0], _mm512_slli_epi32(x, 20)), sy = x86_rq_raw(&rq[1], _mm512_slli_epi32(y, 20));
            total = x86_rq_raw(&rq[2], _mm512_add_epi32(sx, sy));
        }
        total = _mm512_min_epi32(_mm512_max_epi32(_mm512_add_epi32(total, zp), lo), hi);
        _mm_mask_storeu_epi8(out + i, lanes, _mm512_cvtepi32_epi8(total));
    }
}
#endif
