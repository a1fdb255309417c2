/* edgeopt int8 kernels: the Cortex-M DSP path (placeholder). */
