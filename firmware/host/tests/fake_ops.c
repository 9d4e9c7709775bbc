#include "fake_ops.h"

#include <stdio.h>
#include <string.h>

static void f_log(void *ctx, prop_level_t level, const char *line)
{
    fake_t *f = ctx;
    (void)level;
    if (f->nlines < FAKE_MAX) {
        snprintf(f->lines[f->nlines++], sizeof f->lines[0], "%s", line);
    }
}

static void f_wifi(void *ctx, const char *ssid, const char *psk)
{
    fake_t *f = ctx;
    (void)ssid;
    (void)psk;
    f->wifi_connects++;
}

static void f_connect(void *ctx, const prop_mqtt_params_t *mp)
{
    fake_t *f = ctx;
    f->mqtt_connects++;
    f->last_params = *mp;
    snprintf(f->last_will, sizeof f->last_will, "%s", mp->will_payload);
}

static void f_close(void *ctx)
{
    fake_t *f = ctx;
    f->mqtt_closes++;
}

static int f_sub(void *ctx, const char *topic, int qos)
{
    fake_t *f = ctx;
    (void)qos;
    if (f->nsubs < 8) {
        snprintf(f->subs[f->nsubs++], sizeof f->subs[0], "%s", topic);
    }
    return 0;
}

static int f_pub(void *ctx, const char *topic, const char *payload, size_t len, int qos)
{
    fake_t *f = ctx;
    (void)qos;
    if (f->publish_fails) {
        return -1;
    }
    if (f->npub < FAKE_MAX) {
        snprintf(f->pub_topic[f->npub], sizeof f->pub_topic[0], "%s", topic);
        snprintf(f->pub_payload[f->npub], sizeof f->pub_payload[0], "%.*s", (int)len, payload);
        f->npub++;
    }
    return 0;
}

static int f_run(void *ctx, const prop_run_t *run)
{
    fake_t *f = ctx;
    if (f->run_refuses) {
        return -1;
    }
    if (f->nruns < FAKE_MAX) {
        f->runs[f->nruns] = *run;
        snprintf(f->run_entry[f->nruns], sizeof f->run_entry[0], "%s", run->entry);
        f->nruns++;
    }
    return 0;
}

static void f_cancel(void *ctx, int slot)
{
    fake_t *f = ctx;
    if (f->ncancels < FAKE_MAX) {
        f->cancels[f->ncancels++] = slot;
    }
}

static void f_heap(void *ctx, prop_heap_t *out)
{
    fake_t *f = ctx;
    *out = f->heap;
}

static uint32_t f_rand(void *ctx)
{
    fake_t *f = ctx;
    return f->rand_value;
}

void fake_ops(fake_t *f, prop_ops_t *ops)
{
    memset(f, 0, sizeof *f);
    f->heap.free_bytes = 150000;
    f->heap.used_bytes = 50000;
    f->heap.max_used_bytes = 60000;
    *ops = (prop_ops_t){f,      f_log, f_wifi,   f_connect, f_close, f_sub,
                        f_pub,  f_run, f_cancel, f_heap,    f_rand};
}

int fake_find_line(const fake_t *f, const char *s)
{
    for (int i = 0; i < f->nlines; i++) {
        if (strstr(f->lines[i], s) != NULL) {
            return i;
        }
    }
    return -1;
}

int fake_count_lines(const fake_t *f, const char *s)
{
    int n = 0;
    for (int i = 0; i < f->nlines; i++) {
        n += strstr(f->lines[i], s) != NULL;
    }
    return n;
}

static int ends_with(const char *s, const char *suffix)
{
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

int fake_last_pub(const fake_t *f, const char *suffix)
{
    for (int i = f->npub - 1; i >= 0; i--) {
        if (ends_with(f->pub_topic[i], suffix)) {
            return i;
        }
    }
    return -1;
}

int fake_count_pub(const fake_t *f, const char *suffix)
{
    int n = 0;
    for (int i = 0; i < f->npub; i++) {
        n += ends_with(f->pub_topic[i], suffix);
    }
    return n;
}

void fake_clear(fake_t *f)
{
    f->nlines = 0;
    f->npub = 0;
    f->nsubs = 0;
    f->nruns = 0;
    f->ncancels = 0;
}
