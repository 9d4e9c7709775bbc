/* Recording fake of the platform ops, for unit tests and the fuzzer (pure-core tests only). */
#ifndef FAKE_OPS_H
#define FAKE_OPS_H

#include "proplet.h"

#define FAKE_MAX 64

typedef struct {
    char lines[FAKE_MAX][256];
    int nlines;
    char pub_topic[FAKE_MAX][PROP_TOPIC_MAX];
    char pub_payload[FAKE_MAX][640];
    int npub;
    char subs[8][PROP_TOPIC_MAX];
    int nsubs;
    int wifi_connects;
    int mqtt_connects;
    int mqtt_closes;
    prop_mqtt_params_t last_params;
    char last_will[160];
    prop_run_t runs[FAKE_MAX];
    char run_entry[FAKE_MAX][PROP_NAME_MAX];
    int nruns;
    int cancels[FAKE_MAX];
    int ncancels;
    int publish_fails;  /* publish returns -1 while set */
    int run_refuses;    /* run_task returns -1 while set */
    uint32_t rand_value;
    prop_heap_t heap;
} fake_t;

void fake_ops(fake_t *f, prop_ops_t *ops);
/* Index of the first log line containing s, or -1. */
int fake_find_line(const fake_t *f, const char *s);
int fake_count_lines(const fake_t *f, const char *s);
/* Index of the last publish to a topic ending in suffix, or -1. */
int fake_last_pub(const fake_t *f, const char *suffix);
int fake_count_pub(const fake_t *f, const char *suffix);
void fake_clear(fake_t *f);

#endif
