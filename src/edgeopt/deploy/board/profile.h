/* Force-included (-include) into every file of an MCU build: generated code that calls
   EDGEOPT_LAYER_END(index) after each layer gets per-layer instruction counts from main.c. */
#ifndef EDGEOPT_PROFILE_H
#define EDGEOPT_PROFILE_H
void eo_layer_end(int index);
#define EDGEOPT_LAYER_END(index) eo_layer_end(index)
#endif
