/* Boot, the core's timer loop, and the ops table.  All decisions are in ../core/proplet.c. */
#include <zephyr/drivers/hwinfo.h>
#include <zephyr/kernel.h>
#include <zephyr/logging/log.h>
#include <zephyr/random/random.h>

#include "platform.h"

LOG_MODULE_REGISTER(prop, LOG_LEVEL_DBG);

prop_t g_core;
static K_MUTEX_DEFINE(core_mutex);
static K_SEM_DEFINE(main_wake, 0, 1);

void core_lock(void) { k_mutex_lock(&core_mutex, K_FOREVER); }

void core_unlock(void)
{
    k_mutex_unlock(&core_mutex);
    k_sem_give(&main_wake);
}

uint64_t core_now(void) { return (uint64_t)k_uptime_get(); }

static void log_line(void *ctx, prop_level_t level, const char *line)
{
    ARG_UNUSED(ctx);
    switch (level) {
    case PROP_LOG_DBG: LOG_DBG("%s", line); break;
    case PROP_LOG_INF: LOG_INF("%s", line); break;
    case PROP_LOG_WRN: LOG_WRN("%s", line); break;
    default: LOG_ERR("%s", line); break;
    }
}

static uint32_t rand32(void *ctx)
{
    ARG_UNUSED(ctx);
    return sys_rand32_get();
}

static const char *reset_cause(void)
{
    uint32_t cause = 0;
    if (hwinfo_get_reset_cause(&cause) != 0) {
        return "power_on";
    }
    (void)hwinfo_clear_reset_cause();
    if (cause & RESET_WATCHDOG) {
        return "wdt";
    }
    if (cause & RESET_BROWNOUT) {
        return "brownout";
    }
    if (cause & RESET_SOFTWARE) {
        return "sw";
    }
    if (cause & RESET_PIN) {
        return "ext";
    }
    return "power_on";
}

static const prop_ops_t ops = {
    .ctx = NULL,
    .log = log_line,
    .wifi_connect = platform_wifi_connect,
    .mqtt_connect = platform_mqtt_connect,
    .mqtt_close = platform_mqtt_close,
    .subscribe = platform_mqtt_subscribe,
    .publish = platform_mqtt_publish,
    .run_task = platform_wamr_run,
    .cancel_task = platform_wamr_cancel,
    .heap_stats = platform_wamr_heap,
    .rand32 = rand32,
};

int main(void)
{
    static prop_config_t cfg;
    prop_config_defaults(&cfg);
    cfg.wamr_budget_bytes = APP_WAMR_POOL_BYTES;
    cfg.thread_stack_bytes = APP_WORKER_STACK_BYTES;
    cfg.max_instances = APP_MAX_INSTANCES;
    cfg.total_memory_bytes = 512u * 1024u; /* ESP32-S3 internal SRAM */

    if (platform_wamr_init() != 0) {
        LOG_ERR("wamr init failed");
    }
    if (platform_settings_load(&cfg) != 0) {
        LOG_WRN("settings unavailable: starting unprovisioned");
    }
    (void)platform_wifi_init();
    (void)platform_mqtt_init();

    core_lock();
    prop_boot(&g_core, &cfg, &ops, reset_cause(), core_now());
    core_unlock();

    for (;;) {
        core_lock();
        uint64_t due = prop_next_deadline(&g_core);
        k_mutex_unlock(&core_mutex);
        uint64_t now = core_now();
        k_timeout_t wait = due == UINT64_MAX ? K_FOREVER : due <= now ? K_NO_WAIT : K_MSEC(due - now);
        (void)k_sem_take(&main_wake, wait);
        core_lock();
        prop_tick(&g_core, core_now());
        k_mutex_unlock(&core_mutex);
    }
    return 0;
}
