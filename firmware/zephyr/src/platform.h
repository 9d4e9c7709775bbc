/* Glue between Zephyr and the portable core.  Every prop_* call happens between core_lock() and
 * core_unlock(); core_unlock() also wakes the main loop so it re-reads prop_next_deadline(). */
#ifndef PLATFORM_H
#define PLATFORM_H

#include <stddef.h>
#include <stdint.h>

#include "proplet.h"

/* Tunables for this board (see README "Memory budget"). */
#define APP_WAMR_POOL_BYTES (128u * 1024u)
#define APP_WORKER_STACK_BYTES (8u * 1024u)
#define APP_MAX_INSTANCES 2

extern prop_t g_core;

void core_lock(void);
void core_unlock(void);
uint64_t core_now(void);

/* platform_wifi.c */
int platform_wifi_init(void);
void platform_wifi_connect(void *ctx, const char *ssid, const char *psk);

/* platform_mqtt.c */
int platform_mqtt_init(void);
void platform_mqtt_connect(void *ctx, const prop_mqtt_params_t *params);
void platform_mqtt_close(void *ctx);
int platform_mqtt_subscribe(void *ctx, const char *topic, int qos);
int platform_mqtt_publish(void *ctx, const char *topic, const char *payload, size_t len, int qos);

/* platform_wamr.c */
int platform_wamr_init(void);
int platform_wamr_run(void *ctx, const prop_run_t *run);
void platform_wamr_cancel(void *ctx, int slot);
void platform_wamr_heap(void *ctx, prop_heap_t *out);

/* platform_settings.c: NVS-backed provisioning under the settings subtree "prop/" */
int platform_settings_load(prop_config_t *cfg);
int platform_settings_save(const prop_config_t *cfg);

#endif
