/* Startup, semihosting and the CMSDK APB timer of the MPS2 boards. */
#include "board.h"

extern uint32_t _sidata, _sdata, _edata, _sbss, _ebss, _sstack, _estack;
extern int main(void);

#define STACK_PAINT 0xA5A5A5A5u
/* CMSDK APB timer 0: a 32-bit down-counter clocked by the 25 MHz system clock. */
#define TIMER0_CTRL (*(volatile uint32_t *)0x40000000u)
#define TIMER0_VALUE (*(volatile uint32_t *)0x40000004u)
#define TIMER0_RELOAD (*(volatile uint32_t *)0x40000008u)
#define SCB_CPACR (*(volatile uint32_t *)0xE000ED88u)

static int semihost(int op, const void *arg) {
    register int r0 __asm__("r0") = op;
    register const void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void board_puts(const char *text) { semihost(0x04, text); }

void board_put_hex(const uint8_t *bytes, uint32_t n) {
    static const char digits[] = "0123456789abcdef";
    char chunk[65];
    uint32_t used = 0;
    for (uint32_t i = 0; i < n; i++) {
        chunk[used++] = digits[bytes[i] >> 4];
        chunk[used++] = digits[bytes[i] & 15];
        if (used == 64 || i + 1 == n) {
            chunk[used] = 0;
            board_puts(chunk);
            used = 0;
        }
    }
}

void board_put_u32(uint32_t value) {
    char text[11];
    int at = 10;
    text[at] = 0;
    do {
        text[--at] = (char)('0' + value % 10);
        value /= 10;
    } while (value);
    board_puts(&text[at]);
}

void board_exit(int code) {
    /* SYS_EXIT: ADP_Stopped_ApplicationExit (qemu exits 0), else RunTimeErrorUnknown (1). */
    semihost(0x18, (const void *)(code == 0 ? 0x20026u : 0x20023u));
    for (;;) {
    }
}

void board_timer_start(void) {
    TIMER0_CTRL = 0;
    TIMER0_RELOAD = 0xFFFFFFFFu;
    TIMER0_VALUE = 0xFFFFFFFFu;
    TIMER0_CTRL = 1;
}

uint32_t board_timer_ticks(void) { return 0xFFFFFFFFu - TIMER0_VALUE; }

uint32_t board_stack_used(void) {
    const uint32_t *word = &_sstack;
    while (word < &_estack && *word == STACK_PAINT) word++;
    return (uint32_t)((const uint8_t *)&_estack - (const uint8_t *)word);
}

void Reset_Handler(void) {
    const uint32_t *from = &_sidata;
    for (uint32_t *to = &_sdata; to < &_edata;) *to++ = *from++;
    for (uint32_t *to = &_sbss; to < &_ebss;) *to++ = 0;
    /* Paint the stack below the current frame for board_stack_used. */
    uint32_t *here;
    __asm__ volatile("mov %0, sp" : "=r"(here));
    for (uint32_t *to = &_sstack; to < here - 16;) *to++ = STACK_PAINT;
#if defined(__ARM_FP)
    SCB_CPACR |= 0xFu << 20; /* CP10, CP11 full access: the compiler may use FP registers */
    __asm__ volatile("dsb\n\tisb");
#endif
    board_exit(main());
}

static void Fault_Handler(void) {
    board_puts("EO-FAULT\n");
    board_exit(1);
}

__attribute__((section(".isr_vector"), used)) static const void *const vectors[16] = {
    &_estack, (const void *)Reset_Handler, (const void *)Fault_Handler,
    (const void *)Fault_Handler, (const void *)Fault_Handler, (const void *)Fault_Handler,
    (const void *)Fault_Handler,
};
