/* Board services for the emulated MPS2 boards: semihosting output and exit, an instruction
   counter. No heap, no stdio. */
#ifndef EDGEOPT_BOARD_H
#define EDGEOPT_BOARD_H
#include <stdint.h>

void board_puts(const char *text);            /* to the host's stdout (semihosting SYS_WRITE0) */
void board_put_hex(const uint8_t *bytes, uint32_t n);
void board_put_u32(uint32_t value);
void board_exit(int code) __attribute__((noreturn));   /* ends qemu: status 0 on code 0 */
void board_timer_start(void);
uint32_t board_timer_ticks(void);             /* ticks since board_timer_start */
uint32_t board_stack_used(void);              /* high-water mark of the painted stack, bytes */
#endif
