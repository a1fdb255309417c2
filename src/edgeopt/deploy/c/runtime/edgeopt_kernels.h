/* edgeopt int8 kernels: C99, no heap, no stdio. NHWC activations, batch 1.
   Requantization follows TFLite's int8 reference kernels bit for bit (MultiplyByQuantizedMultiplier:
   SaturatingRoundingDoublingHighMul then RoundingDivideByPOT); a NULL multiplier array selects the
   power-of-two mode, where `shift` is the exponent of the scale and requantization is one rounding shift. */
#ifndef EDGEOPT_KERNELS_H
#define EDGEOPT_KERNELS_H
#include <stdint.h>

/* Hand-written SIMD paths, chosen by the compiler's target macros (EDGEOPT_PORTABLE forces plain C):
   x86 with AVX-512 VNNI (-march=native on a host that has it) reads weights the emitter reordered for it
   (`xw`, `xb`; EO_X86_FIELDS adds them to a layer's initializer only there); Cortex-M cores with the DSP
   extension (M4, M7, M33) use SMLAD dual 16-bit multiply-accumulates on the portable weight layout. */
#if defined(__AVX512VNNI__) && defined(__AVX512BW__) && defined(__AVX512VL__) && !defined(EDGEOPT_PORTABLE)
#define EO_X86_VNNI 1
#define EO_X86_FIELDS(xw, xb) , xw, xb
#else
#define EO_X86_VNNI 0
#define EO_X86_FIELDS(xw, xb)
#endif
#if defined(__ARM_FEATURE_DSP) && !defined(EDGEOPT_PORTABLE)
#define EO_ARM_DSP 1
#else
#define EO_ARM_DSP 0
#endif

typedef struct {
    int16_t in_h, in_w, in_c, out_h, out_w, out_c;
    int16_t k_h, k_w, stride_h, stride_w, dil_h, dil_w, pad_t, pad_l;
    int16_t depth_multiplier; /* depthwise only */
    int16_t weight_bits;      /* 8, or 4: two weights per byte, low nibble first */
    int32_t in_zp, out_zp, act_min, act_max;
    const void *weights;      /* conv OHWI, depthwise 1HWC, fully connected [out][in] */
    const int32_t *bias, *mult, *shift; /* per output channel; mult NULL: power-of-two mode */
#if EO_X86_VNNI
    const int8_t *xw;  /* conv / fully connected, 8-bit: [out_c/16][k/4][16][4] (edgeopt_x86.h); NULL: none */
    const int32_t *xb; /* bias - (128 + in_zp) * sum(w) per output channel */
#endif
} eo_linear_t;

typedef struct {
    int16_t in_h, in_w, c, out_h, out_w, k_h, k_w, stride_h, stride_w, pad_t, pad_l;
    int32_t act_min, act_max;
} eo_pool_t;

typedef struct {
    int32_t size, in1_zp, in2_zp, out_zp, act_min, act_max;
    int32_t m1, s1, m2, s2, mo, so; /* TFLite ADD multipliers (left shift 20); pow2: shifts in s1, s2, so */
    int32_t pow2;
} eo_add_t;

typedef struct {
    int32_t hw, c, in_zp, out_zp, mult, shift; /* 1/hw folded into mult, shift (TFLite Micro MEAN) */
} eo_mean_t;

int32_t eo_requantize(int32_t acc, int32_t mult, int32_t shift); /* TFLite MultiplyByQuantizedMultiplier */

/* sum of (x - in_zp) * w over the window of output pixel (oy, ox), w one output channel's k_h x k_w x in_c
   weights; taps in the padding are skipped ((zp - zp) * w = 0). For the kernels that take one weight row at
   a time (4-bit and compressed weights). */
static inline int32_t eo_window_dot(const eo_linear_t *p, const int8_t *in, const int8_t *w, int32_t oy, int32_t ox) {
    const int32_t ic = p->in_c, in_off = -p->in_zp;
    int32_t acc = 0;
    for (int32_t ky = 0; ky < p->k_h; ky++) {
        int32_t iy = oy * p->stride_h - p->pad_t + ky * p->dil_h;
        if (iy < 0 || iy >= p->in_h) continue;
        for (int32_t kx = 0; kx < p->k_w; kx++) {
            int32_t ix = ox * p->stride_w - p->pad_l + kx * p->dil_w;
            if (ix < 0 || ix >= p->in_w) continue;
            const int8_t *x = in + (iy * p->in_w + ix) * ic, *wk = w + (ky * p->k_w + kx) * ic;
            for (int32_t i = 0; i < ic; i++) acc += (x[i] + in_off) * wk[i];
        }
    }
    return acc;
}
void eo_conv2d(const eo_linear_t *p, const int8_t *in, int8_t *out, int8_t *scratch);
void eo_depthwise_conv2d(const eo_linear_t *p, const int8_t *in, int8_t *out, int8_t *scratch);
void eo_depthwise_conv2d_inplace(const eo_linear_t *p, int8_t *data, int8_t *scratch);
void eo_fully_connected(const eo_linear_t *p, const int8_t *in, int8_t *out, int8_t *scratch);
void eo_max_pool2d(const eo_pool_t *p, const int8_t *in, int8_t *out);
void eo_avg_pool2d(const eo_pool_t *p, const int8_t *in, int8_t *out);
void eo_mean(const eo_mean_t *p, const int8_t *in, int8_t *out);
void eo_add(const eo_add_t *p, const int8_t *a, const int8_t *b, int8_t *out);
void eo_copy(const int8_t *in, int8_t *out, int32_t size);
/* concat: `outer` rows; input i contributes inner[i] contiguous values to each row */
void eo_concat(int32_t outer, int32_t n, const int8_t *const *ins, const int32_t *inner, int8_t *out);
#endif
