// sc_half.h -- fp16 bit conversions shared by the kernels (round to nearest
// even, like the C core's sc_f2h / sc_h2f).
#pragma once

namespace sc {
inline ushort f2h_bits(float x) { return as_type<ushort>(half(x)); }
inline float h2f_bits(ushort h) { return float(as_type<half>(h)); }
}  // namespace sc
