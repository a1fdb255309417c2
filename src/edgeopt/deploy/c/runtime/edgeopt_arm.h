/* edgeopt int8 kernels: the Cortex-M DSP-extension path (M4, M7, M33...), included by edgeopt_kernels.c
   when EO_ARM_DSP is set. Same weight layout as the portable C, same sums, so bit-exact with it.

   A 32-bit load brings four int8 values; SXTB16 sign-extends bytes 0 and 2 (and, on the value rotated by
   8, bytes 1 and 3) into two int16 halves; SADD16 adds the input offset -in_zp to both halves (x - zp
   stays within int16); SMLAD multiplies the two half pairs and adds both products to an accumulator:
   four multiply-accumulates in two instructions, after the unpacking is shared by four output channels. */
#ifndef EDGEOPT_ARM_H
#define EDGEOPT_ARM_H
#include <arm_acle.h>

static inline uint32_t arm_load4(const int8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4); /* one LDR: Cortex-M3 and later load unaligned words */
    return v;
}

/* bytes 1 and 3 as int16 halves: SXTB16 with its built-in rotation (one instruction; gcc 12 does not fuse
   a separate rotate into it) */
static inline uint32_t arm_sxtb16_ror8(uint32_t v) {
    uint32_t r;
    __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(v));
    return r;
}

/* acc[0..3] = sum_i (x[i] - zp) * w[r * k + i] for four weight rows r. Two row pointers and the row
   length address the four rows, so the loop's pointers, sums and unpacked inputs fit the 13 registers. */
__attribute__((noinline)) static void arm_dot4(const int8_t *x, const int8_t *w, int32_t k, int32_t in_off, int32_t *acc) {
    const uint32_t off2 = ((uint32_t)in_off & 0xFFFFu) | ((uint32_t)in_off << 16); /* -zp in both halves */
    const int8_t *wa = w, *wb = w + 2 * k, *end = x + (k & ~3);
    int32_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (; x < end; x += 4, wa += 4, wb += 4) {
        uint32_t xv = arm_load4(x);
        uint32_t x02 = __sadd16(__sxtb16(xv), off2), x13 = __sadd16(arm_sxtb16_ror8(xv), off2);
        uint32_t wv = arm_load4(wa);
        a0 = __smlad(__sxtb16(wv), x02, a0);
        a0 = __smlad(arm_sxtb16_ror8(wv), x13, a0);
        wv = arm_load4(wa + k);
        a1 = __smlad(__sxtb16(wv), x02, a1);
        a1 = __smlad(arm_sxtb16_ror8(wv), x13, a1);
        wv = arm_load4(wb);
        a2 = __smlad(__sxtb16(wv), x02, a2);
        a2 = __smlad(arm_sxtb16_ror8(wv), x13, a2);
        wv = arm_load4(wb + k);
        a3 = __smlad(__sxtb16(wv), x02, a3);
        a3 = __smlad(arm_sxtb16_ror8(wv), x13, a3);
    }
    for (int32_t i = 0; i < (k & 3); i++) {
        int32_t xv = x[i] + in_off;
        a0 += xv * wa[i]; a1 += xv * wa[k + i]; a2 += xv * wb[i]; a3 += xv * wb[k + i];
    }
    acc[0] = a0; acc[1] = a1; acc[2] = a2; acc[3] = a3;
}

static int32_t arm_dot(const int8_t *x, const int8_t *w, int32_t k, int32_t in_off) {
    const uint32_t off2 = ((uint32_t)in_off & 0xFFFFu) | ((uint32_t)in_off << 16);
    int32_t acc = 0, i = 0;
    for (; i + 4 <= k; i += 4) {
        uint32_t xv = arm_load4(x + i), wv = arm_load4(w + i);
        acc = __smlad(__sxtb16(wv), __sadd16(__sxtb16(xv), off2), acc);
        acc = __smlad(arm_sxtb16_ror8(wv), __sadd16(arm_sxtb16_ror8(xv), off2), acc);
    }
    for (; i < k; i++) acc += (x[i] + in_off) * w[i];
    return acc;
}
/* acc[c] += (x[c] - zp) * w[c] (depthwise): four channels per word, the even ones in the bottom halves
   after SXTB16, the odd ones after SXTB16 of the word rotated by 8; SMLABB / SMLATT take one half each */
static void arm_mac_channels(int32_t *acc, const int8_t *x, const int8_t *w, int32_t n, int32_t in_off) {
    const uint32_t off2 = ((uint32_t)in_off & 0xFFFFu) | ((uint32_t)in_off << 16);
    int32_t c = 0;
    for (; c + 4 <= n; c += 4) {
        uint32_t xv = arm_load4(x + c), wv = arm_load4(w + c);
        uint32_t x02 = __sadd16(__sxtb16(xv), off2), x13 = __sadd16(arm_sxtb16_ror8(xv), off2);
        uint32_t w02 = __sxtb16(wv), w13 = arm_sxtb16_ror8(wv);
        acc[c] = __smlabb(x02, w02, acc[c]);
        acc[c + 1] = __smlabb(x13, w13, acc[c + 1]);
        acc[c + 2] = __smlatt(x02, w02, acc[c + 2]);
        acc[c + 3] = __smlatt(x13, w13, acc[c + 3]);
    }
    for (; c < n; c++) acc[c] += (x[c] + in_off) * w[c];
}
#endif
