/* Runs the compiled-in inputs through edgeopt_model_invoke and prints, per input, the timer
   ticks of the inference and the output bytes as hex; then the stack high-water mark.
   inputs.h (written by edgeopt) defines EO_NUM_INPUTS and eo_inputs. */
#include "board.h"
#include "inputs.h"
#include "model.h"

static int8_t output[EDGEOPT_OUTPUT_SIZE];

/* Per-layer timer ticks of the current inference, when the model calls EDGEOPT_LAYER_END. */
#define EO_MAX_LAYERS 256
static uint32_t layer_ticks[EO_MAX_LAYERS];
static int layers_seen;
static uint32_t layer_start;

void eo_layer_end(int index) {
    uint32_t now = board_timer_ticks();
    if (index >= 0 && index < EO_MAX_LAYERS) {
        layer_ticks[index] = now - layer_start;
        if (index + 1 > layers_seen) layers_seen = index + 1;
    }
    layer_start = board_timer_ticks();
}

static void print_layers(void) {
    if (layers_seen == 0) return;
    board_puts("EO-LAYERS");
    for (int k = 0; k < layers_seen; k++) {
        board_puts(" ");
        board_put_u32(layer_ticks[k]);
    }
    board_puts("\n");
}

int main(void) {
    board_puts("EO-BEGIN\n");
    board_timer_start();
    uint32_t empty = board_timer_ticks(); /* cost of reading the timer itself */
    empty = board_timer_ticks() - empty;
    for (int i = 0; i < EO_NUM_INPUTS; i++) {
#ifdef EDGEOPT_INPUT_IN_ARENA /* an application writes its input into the arena, as here (not timed) */
        int8_t *input = edgeopt_model_input();
        for (int k = 0; k < EDGEOPT_INPUT_SIZE; k++) input[k] = eo_inputs[i][k];
#else
        const int8_t *input = eo_inputs[i];
#endif
        uint32_t start = board_timer_ticks();
        layer_start = start;
        int status = edgeopt_model_invoke(input, output);
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
        print_layers();
    }
    board_puts("EO-STACK ");
    board_put_u32(board_stack_used());
    board_puts("\nEO-END\n");
    return 0;
}
