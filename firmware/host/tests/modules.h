/* Hand-assembled Wasm modules (validated with wasmtime when written).  Each exports the listed
 * functions as (func (result i32) (i32.const 42)). */
#ifndef MODULES_H
#define MODULES_H

/* (memory 1), export main */
#define B64_MAIN_MEM1 "AGFzbQEAAAABBQFgAAF/AwIBAAUDAQABBwgBBG1haW4AAAoGAQQAQSoL"
/* no memory, exports add and main */
#define B64_ADD_MAIN "AGFzbQEAAAABBQFgAAF/AwIBAAcOAgNhZGQAAARtYWluAAAKBgEEAEEqCw=="
/* (memory 3), export main */
#define B64_MAIN_MEM3 "AGFzbQEAAAABBQFgAAF/AwIBAAUDAQADBwgBBG1haW4AAAoGAQQAQSoL"
/* (import "env" "mem" (memory 2)), export main */
#define B64_IMPORTED_MEM2 "AGFzbQEAAAABBQFgAAF/AgwBA2VudgNtZW0CAAIDAgEABwgBBG1haW4AAAoGAQQAQSoL"
/* no memory, export compute only */
#define B64_COMPUTE_ONLY "AGFzbQEAAAABBQFgAAF/AwIBAAcLAQdjb21wdXRlAAAKBgEEAEEqCw=="
#define LEN_MAIN_MEM1 42
#define LEN_ADD_MAIN 43

#endif
