/* Reads just enough of a Wasm binary to decide admission and the entry point before handing the
 * module to WAMR: the initial linear memory size and the exported function names. */
#ifndef WASM_INFO_H
#define WASM_INFO_H

#include <stddef.h>
#include <stdint.h>

enum {
    WI_OK = 0,
    WI_ERR_MAGIC = -1,    /* not "\0asm" version 1 */
    WI_ERR_TRUNC = -2,    /* a section or field runs past the end */
    WI_ERR_MALFORMED = -3 /* unknown import kind, bad LEB128, ... */
};

typedef struct {
    uint32_t memory_min_pages; /* of the first memory (imported or defined); 0 when none */
    int has_memory;
} wasm_info_t;

int wasm_info_read(const uint8_t *mod, size_t len, wasm_info_t *out);

/* 1 when `name` is exported as a function, 0 when not, or a WI_ERR_* code. */
int wasm_has_func_export(const uint8_t *mod, size_t len, const char *name);

#endif
