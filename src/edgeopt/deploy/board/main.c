/* Runs the compiled-in inputs through edgeopt_model_invoke and prints, per input, the timer
   ticks of the inference and the output bytes as hex; then the stack high-water mark.
   inputs.h (written by edgeopt) defines EO_NUM_INPUTS and eo_inputs. */
#include "board.h"
#include "inputs.h"
#include "model.h"

static int8_t output[EDGEOPT_OUTPUT_SIZE];

int main(void) {
    board_puts("EO-BEGIN\n");
    board_timer_start();
    uint32_t empty = board_timer_ticks(); /* cost of reading the timer itself */
    empty = board_timer_ticks() - empty;
    for (int i = 0; i < EO_NUM_INPUTS; i++) {
        uint32_t start = board_timer_ticks();
        int status = edgeopt_model_invoke(eo_inputs[i], output);
        uint32_t ticks = board_timer_ticks() - start - empty;
        if (status != 0) {
            board_puts("EO-ERROR\n");
            return 1;
        }
        board_puts("EO-RUN ");
        board_put_u32(ticks);
        board_puts(" ");
        board_put_hex((const uint8_t *)output, EDGEOPT_OUTPUT_SIZE);
        board_puts("\n");
    }
    board_puts("EO-STACK ");
    board_put_u32(board_stack_used());
    board_puts("\nEO-END\n");
    return 0;
}
