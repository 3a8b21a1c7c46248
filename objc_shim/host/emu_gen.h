/* emu_gen.h -- .metal source -> C++ translation unit for the host emulation */
#ifndef SC_EMU_GEN_H
#define SC_EMU_GEN_H
#include <string>

#include "emu_abi.h"

/* The rewritten source with launch thunks and the kernel table appended;
 * false with *err naming file:line when a kernel signature is outside the
 * emulated subset. */
bool sc_emu_generate(const std::string &src, const std::string &file, std::string *out, std::string *err);

#endif
