/* Provisioning in NVS through the settings subsystem, subtree "prop/". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <zephyr/kernel.h>
#include <zephyr/settings/settings.h>

#include "platform.h"

static prop_config_t *loading;

static int read_str(char *dst, size_t cap, size_t len, settings_read_cb read_cb, void *cb_arg)
{
    if (len >= cap) {
        return -EINVAL;
    }
    ssize_t n = read_cb(cb_arg, dst, len);
    if (n < 0) {
        return (int)n;
    }
    dst[n] = '\0';
    return 0;
}

static int on_set(const char *key, size_t len, settings_read_cb read_cb, void *cb_arg)
{
    prop_config_t *c = loading;
    if (c == NULL) {
        return 0;
    }
    char port[8];
    if (strcmp(key, "ssid") == 0) {
        return read_str(c->ssid, sizeof(c->ssid), len, read_cb, cb_arg);
    }
    if (strcmp(key, "psk") == 0) {
        return read_str(c->psk, sizeof(c->psk), len, read_cb, cb_arg);
    }
    if (strcmp(key, "host") == 0) {
        return read_str(c->broker_host, sizeof(c->broker_host), len, read_cb, cb_arg);
    }
    if (strcmp(key, "port") == 0) {
        int rc = read_str(port, sizeof(port), len, read_cb, cb_arg);
        if (rc == 0) {
            c->broker_port = (uint16_t)strtoul(port, NULL, 10);
        }
        return rc;
    }
    if (strcmp(key, "id") == 0) {
        return read_str(c->proplet_id, sizeof(c->proplet_id), len, read_cb, cb_arg);
    }
    if (strcmp(key, "key") == 0) {
        return read_str(c->api_key, sizeof(c->api_key), len, read_cb, cb_arg);
    }
    if (strcmp(key, "domain") == 0) {
        return read_str(c->domain, sizeof(c->domain), len, read_cb, cb_arg);
    }
    if (strcmp(key, "channel") == 0) {
        return read_str(c->channel, sizeof(c->channel), len, read_cb, cb_arg);
    }
    return -ENOENT;
}

SETTINGS_STATIC_HANDLER_DEFINE(prop, "prop", NULL, on_set, NULL, NULL);

int platform_settings_load(prop_config_t *cfg)
{
    int rc = settings_subsys_init();
    if (rc != 0) {
        return rc;
    }
    loading = cfg;
    rc = settings_load_subtree("prop");
    loading = NULL;
    return rc;
}

int platform_settings_save(const prop_config_t *cfg)
{
    char port[8];
    snprintf(port, sizeof(port), "%u", (unsigned)cfg->broker_port);
    const struct {
        const char *key;
        const char *value;
    } items[] = {
        {"prop/ssid", cfg->ssid},     {"prop/psk", cfg->psk},       {"prop/host", cfg->broker_host},
        {"prop/port", port},          {"prop/id", cfg->proplet_id}, {"prop/key", cfg->api_key},
        {"prop/domain", cfg->domain}, {"prop/channel", cfg->channel},
    };
    for (size_t i = 0; i < ARRAY_SIZE(items); i++) {
        int rc = settings_save_one(items[i].key, items[i].value, strlen(items[i].value));
        if (rc != 0) {
            return rc;
        }
    }
    return 0;
}
