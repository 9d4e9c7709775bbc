/* WAMR embedding: one worker thread per instance slot; each task gets its own
 * wasm_runtime_load + wasm_runtime_instantiate on its worker and reports back through
 * prop_task_done().  WAMR allocates only from a static pool, whose stats are the "heap" events. */
#include <stdio.h>
#include <string.h>

#include <zephyr/kernel.h>

#include "platform.h"
#include "wasm_export.h"

#define WORKER_PRIO 10 /* below the MQTT and main threads: Wasm never starves keepalive */

static uint8_t __aligned(8) wamr_pool[APP_WAMR_POOL_BYTES];
K_THREAD_STACK_ARRAY_DEFINE(worker_stacks, PROP_MAX_SLOTS, APP_WORKER_STACK_BYTES);

typedef struct {
    struct k_thread thread;
    struct k_sem go;
    struct k_mutex lock; /* guards inst/cancel; a mutex, since wasm_runtime_terminate may block */
    const prop_run_t *run;
    wasm_module_inst_t inst;
    bool cancel;
} worker_t;

static worker_t workers[PROP_MAX_SLOTS];

static void finish(int slot, bool ok, const int32_t *res, uint8_t nres, const char *error)
{
    prop_outcome_t o = {.ok = ok, .results = res, .nresults = nres, .error = error};
    core_lock();
    prop_task_done(&g_core, core_now(), slot, &o);
    core_unlock();
}

static void execute(worker_t *w, const prop_run_t *run)
{
    char err[128] = "";
    int32_t results[PROP_MAX_RESULTS];
    uint32_t argv[PROP_MAX_INPUTS > PROP_MAX_RESULTS ? PROP_MAX_INPUTS : PROP_MAX_RESULTS] = {0};
    wasm_module_t mod = NULL;
    wasm_module_inst_t inst = NULL;
    wasm_exec_env_t env = NULL;
    wasm_function_inst_t fn = NULL;
    uint32_t nparams = 0;
    uint32_t nresults = 0;
    bool cancelled;
    bool ok = false;
    uint8_t nres = 0;

    /* The module buffer belongs to the core's slot until prop_task_done(); WAMR may patch it. */
    mod = wasm_runtime_load((uint8_t *)run->wasm, (uint32_t)run->wasm_len, err, sizeof(err));
    if (mod == NULL) {
        goto out;
    }
    inst = wasm_runtime_instantiate(mod, run->wasm_stack_bytes, 0, err, sizeof(err));
    if (inst == NULL) {
        goto out;
    }
    k_mutex_lock(&w->lock, K_FOREVER);
    w->inst = inst;
    cancelled = w->cancel;
    k_mutex_unlock(&w->lock);
    if (cancelled) {
        snprintf(err, sizeof(err), "stopped");
        goto out;
    }
    env = wasm_runtime_create_exec_env(inst, run->exec_env_bytes);
    if (env == NULL) {
        snprintf(err, sizeof(err), "out of memory: exec env");
        goto out;
    }
    fn = wasm_runtime_lookup_function(inst, run->entry);
    if (fn == NULL) {
        snprintf(err, sizeof(err), "export '%s' not found", run->entry);
        goto out;
    }
    nparams = wasm_func_get_param_count(fn, inst);
    nresults = wasm_func_get_result_count(fn, inst);
    if (nparams != run->nargs) {
        snprintf(err, sizeof(err), "'%s' takes %u inputs, got %u", run->entry, (unsigned)nparams,
                 (unsigned)run->nargs);
        goto out;
    }
    if (nresults == 0 || nresults > PROP_MAX_RESULTS) {
        snprintf(err, sizeof(err), "'%s' must return 1 to %d i32 values", run->entry, PROP_MAX_RESULTS);
        goto out;
    }
    wasm_valkind_t kinds[PROP_MAX_RESULTS > PROP_MAX_INPUTS ? PROP_MAX_RESULTS : PROP_MAX_INPUTS];
    wasm_func_get_param_types(fn, inst, kinds);
    for (uint32_t i = 0; i < nparams; i++) {
        if (kinds[i] != WASM_I32) {
            snprintf(err, sizeof(err), "'%s' input %u is not i32", run->entry, (unsigned)i);
            goto out;
        }
        argv[i] = (uint32_t)run->args[i];
    }
    wasm_func_get_result_types(fn, inst, kinds);
    for (uint32_t i = 0; i < nresults; i++) {
        if (kinds[i] != WASM_I32) {
            snprintf(err, sizeof(err), "'%s' result %u is not i32", run->entry, (unsigned)i);
            goto out;
        }
    }
    if (!wasm_runtime_call_wasm(env, fn, nparams, argv)) {
        const char *ex = wasm_runtime_get_exception(inst);
        snprintf(err, sizeof(err), "%s", ex != NULL ? ex : "trap");
        goto out;
    }
    for (uint32_t i = 0; i < nresults; i++) {
        results[i] = (int32_t)argv[i];
    }
    nres = (uint8_t)nresults;
    ok = true;
out:
    k_mutex_lock(&w->lock, K_FOREVER);
    w->inst = NULL;
    k_mutex_unlock(&w->lock);
    if (env != NULL) {
        wasm_runtime_destroy_exec_env(env);
    }
    if (inst != NULL) {
        wasm_runtime_deinstantiate(inst);
    }
    if (mod != NULL) {
        wasm_runtime_unload(mod);
    }
    finish(run->slot, ok, results, nres, ok ? NULL : err);
}

static void worker_main(void *a, void *b, void *c)
{
    ARG_UNUSED(b);
    ARG_UNUSED(c);
    worker_t *w = a;
    /* threads not created by WAMR must register with it before running Wasm */
    (void)wasm_runtime_init_thread_env();
    for (;;) {
        (void)k_sem_take(&w->go, K_FOREVER);
        execute(w, w->run);
    }
}

int platform_wamr_run(void *ctx, const prop_run_t *run)
{
    ARG_UNUSED(ctx);
    if (run->slot < 0 || run->slot >= PROP_MAX_SLOTS) {
        return -EINVAL;
    }
    worker_t *w = &workers[run->slot];
    k_mutex_lock(&w->lock, K_FOREVER);
    w->run = run;
    w->cancel = false;
    k_mutex_unlock(&w->lock);
    k_sem_give(&w->go);
    return 0;
}

void platform_wamr_cancel(void *ctx, int slot)
{
    ARG_UNUSED(ctx);
    if (slot < 0 || slot >= PROP_MAX_SLOTS) {
        return;
    }
    worker_t *w = &workers[slot];
    k_mutex_lock(&w->lock, K_FOREVER);
    w->cancel = true;
    if (w->inst != NULL) {
        /* sets the "terminated by user" exception; the interpreter checks it (THREAD_MGR=1) */
        wasm_runtime_terminate(w->inst);
    }
    k_mutex_unlock(&w->lock);
}

void platform_wamr_heap(void *ctx, prop_heap_t *out)
{
    ARG_UNUSED(ctx);
    mem_alloc_info_t info;
    memset(out, 0, sizeof(*out));
    if (wasm_runtime_get_mem_alloc_info(&info)) {
        out->free_bytes = info.total_free_size;
        out->used_bytes = info.total_size - info.total_free_size;
        out->max_used_bytes = info.highmark_size;
    }
}

int platform_wamr_init(void)
{
    RuntimeInitArgs init;
    memset(&init, 0, sizeof(init));
    init.mem_alloc_type = Alloc_With_Pool;
    init.mem_alloc_option.pool.heap_buf = wamr_pool;
    init.mem_alloc_option.pool.heap_size = sizeof(wamr_pool);
    if (!wasm_runtime_full_init(&init)) {
        return -ENOMEM;
    }
    for (int i = 0; i < PROP_MAX_SLOTS; i++) {
        worker_t *w = &workers[i];
        k_sem_init(&w->go, 0, 1);
        k_mutex_init(&w->lock);
        k_thread_create(&w->thread, worker_stacks[i], K_THREAD_STACK_SIZEOF(worker_stacks[i]), worker_main,
                        w, NULL, NULL, WORKER_PRIO, 0, K_NO_WAIT);
        k_thread_name_set(&w->thread, "wasm");
    }
    return 0;
}
