/* The proplet state machine, sans-I/O.
 *
 * Every entry point takes `now_ms` (a monotonic millisecond clock, e.g. k_uptime_get()) and an
 * event; effects leave through the `prop_ops_t` callbacks.  The core never blocks and never calls
 * back into the platform for time: Wasm runs on a platform worker thread that reports completion
 * through prop_task_done(), so heartbeats and MQTT keepalive keep going while a module runs.
 *
 * Not thread-safe: the platform serialises every prop_* call (one mutex).  The worker thread may
 * read the `prop_run_t` it was handed until it calls prop_task_done() for that slot.
 */
#ifndef PROPLET_H
#define PROPLET_H

#include <stddef.h>
#include <stdint.h>

#include "pjson.h"

#define PROP_VERSION "0.1.0"

#ifndef PROP_PAYLOAD_MAX
#define PROP_PAYLOAD_MAX 1024 /* receive buffer: payloads of PROP_PAYLOAD_MAX bytes or more are rejected */
#endif
#define PROP_WASM_MAX ((PROP_PAYLOAD_MAX / 4) * 3)
#define PROP_ID_MAX 64
#define PROP_NAME_MAX 64
#define PROP_URL_MAX 256
#define PROP_ERR_MAX 128
#define PROP_TOPIC_MAX 192
#define PROP_MAX_INPUTS 16
#define PROP_MAX_RESULTS 16
#define PROP_MAX_SLOTS 4
#define PROP_TOK_MAX 160
#define PROP_OUTBOX 4
#define PROP_RESULT_MAX 512

#define PROP_WASM_STACK_BYTES (16u * 1024u)
#define PROP_EXEC_ENV_BYTES (16u * 1024u)
#define PROP_WASM_PAGE (64u * 1024u)

typedef enum { PROP_LOG_DBG, PROP_LOG_INF, PROP_LOG_WRN, PROP_LOG_ERR } prop_level_t;

typedef enum {
    PROP_UNPROVISIONED,
    PROP_WIFI_CONNECTING,
    PROP_WIFI_BACKOFF,
    PROP_MQTT_CONNECTING,
    PROP_MQTT_BACKOFF,
    PROP_ONLINE
} prop_conn_t;

typedef struct {
    char ssid[33];
    char psk[65];
    char broker_host[128];
    uint16_t broker_port;
    char proplet_id[PROP_ID_MAX];
    char api_key[PROP_ID_MAX];
    char domain[PROP_ID_MAX];
    char channel[PROP_ID_MAX];

    uint32_t heartbeat_ms;       /* 10000, as upstream */
    uint32_t heap_report_ms;     /* 10000 */
    uint32_t backoff_base_ms;    /* first reconnect delay, doubled per attempt */
    uint32_t backoff_cap_ms;     /* ceiling before jitter */
    uint32_t connect_timeout_ms; /* a CONNECT or Wi-Fi association that takes longer is abandoned */
    uint32_t fetch_timeout_ms;   /* registry/server answer for an image_url start */
    uint16_t keepalive_s;

    uint32_t wamr_budget_bytes;  /* bytes WAMR may use for instances (admission budget) */
    uint32_t thread_stack_bytes; /* worker thread stack per running instance */
    uint8_t max_instances;       /* <= PROP_MAX_SLOTS */
    uint32_t total_memory_bytes; /* announced in discovery */
    const char *os;              /* "zephyr" */
    const char *cpu_arch;        /* "xtensa" */
    const char *board;           /* "esp32s3_devkitc" */
} prop_config_t;

typedef struct {
    const char *host;
    uint16_t port;
    const char *client_id; /* = proplet_id */
    const char *username;  /* = proplet_id */
    const char *password;  /* = api_key, NULL when empty */
    uint16_t keepalive_s;
    int clean_session;
    const char *will_topic;
    const char *will_payload;
    int will_qos;
} prop_mqtt_params_t;

typedef struct {
    uint32_t free_bytes;
    uint32_t used_bytes;
    uint32_t max_used_bytes;
} prop_heap_t;

/* What the worker thread runs.  `entry` is already resolved (see README: the task name when the
 * module exports a function of that name, else "main"). */
typedef struct {
    int slot;
    const char *id;
    const char *entry;
    const int32_t *args;
    uint8_t nargs;
    const uint8_t *wasm;
    size_t wasm_len;
    uint32_t wasm_stack_bytes;
    uint32_t exec_env_bytes;
    uint32_t thread_stack_bytes;
} prop_run_t;

typedef struct {
    int ok;
    const int32_t *results; /* ok: the i32 return values */
    uint8_t nresults;
    const char *error; /* !ok: why (WAMR exception text, ...) */
} prop_outcome_t;

typedef struct {
    void *ctx;
    void (*log)(void *ctx, prop_level_t level, const char *line);
    void (*wifi_connect)(void *ctx, const char *ssid, const char *psk);
    void (*mqtt_connect)(void *ctx, const prop_mqtt_params_t *params);
    void (*mqtt_close)(void *ctx); /* drop the session; no prop_mqtt_disconnected expected */
    int (*subscribe)(void *ctx, const char *topic, int qos);
    int (*publish)(void *ctx, const char *topic, const char *payload, size_t len, int qos);
    int (*run_task)(void *ctx, const prop_run_t *run); /* 0 when the worker took it */
    void (*cancel_task)(void *ctx, int slot);
    void (*heap_stats)(void *ctx, prop_heap_t *out);
    uint32_t (*rand32)(void *ctx);
} prop_ops_t;

typedef enum { SLOT_FREE, SLOT_FETCHING, SLOT_RUNNING } prop_slot_state_t;

typedef struct {
    prop_slot_state_t state;
    int stopping;
    uint32_t attempt; /* the start's `attempt` (our manager's extension); 0 = not given */
    char id[PROP_ID_MAX];
    char name[PROP_NAME_MAX];
    char entry[PROP_NAME_MAX];
    char image_url[PROP_URL_MAX];
    int32_t args[PROP_MAX_INPUTS];
    uint8_t nargs;
    uint8_t wasm[PROP_WASM_MAX];
    size_t wasm_len;
    uint32_t cost;
    uint64_t start_ms;
    uint64_t deadline_ms; /* fetch timeout */
    prop_run_t run;
} prop_slot_t;

typedef struct {
    char topic[PROP_TOPIC_MAX];
    char payload[PROP_RESULT_MAX];
    size_t len;
} prop_msg_t;

typedef struct {
    prop_config_t cfg;
    prop_ops_t ops;
    prop_conn_t conn;
    int wifi_up;
    char ip[16];
    uint32_t attempt;        /* consecutive failed connects, for backoff */
    uint64_t conn_deadline;  /* connect timeout or end of backoff */
    uint64_t next_heartbeat; /* valid while ONLINE */
    uint64_t next_heap;
    uint32_t heartbeat_seq;
    uint32_t tasks_done;
    uint32_t reserved_bytes; /* admission: sum of running instances' cost */
    prop_slot_t slots[PROP_MAX_SLOTS];
    prop_msg_t outbox[PROP_OUTBOX];
    uint8_t outbox_len;
    char topics[8][PROP_TOPIC_MAX]; /* see topic_suffix in proplet.c */
    char will[160];
    char scratch[PROP_PAYLOAD_MAX];
    pj_tok_t toks[PROP_TOK_MAX];
} prop_t;

void prop_config_defaults(prop_config_t *cfg);
int prop_config_provisioned(const prop_config_t *cfg);

/* Resets the core and logs `boot`; logs `provisioned` and starts Wi-Fi when the config is complete.
 * reset is one of power_on|sw|wdt|brownout|ext. */
void prop_boot(prop_t *p, const prop_config_t *cfg, const prop_ops_t *ops, const char *reset,
               uint64_t now_ms);

/* New credentials (from `prop provision`): logs `provisioned` and reconnects from scratch. */
void prop_reprovision(prop_t *p, const prop_config_t *cfg, uint64_t now_ms);

void prop_wifi_up(prop_t *p, uint64_t now_ms, const char *ip, int rssi);
void prop_wifi_down(prop_t *p, uint64_t now_ms, const char *reason);
void prop_mqtt_connected(prop_t *p, uint64_t now_ms);
/* A dropped session or a failed CONNECT. */
void prop_mqtt_disconnected(prop_t *p, uint64_t now_ms, const char *reason);

/* An inbound PUBLISH.  `payload` holds the first `len` bytes of a message of `total_len` bytes
 * (the platform's buffer may be smaller than the message: such a start is refused with an error
 * result when its id is in the first `len` bytes). */
void prop_message(prop_t *p, uint64_t now_ms, const char *topic, const char *payload, size_t len,
                  size_t total_len);

/* The worker finished slot `slot` (from prop_run_t.slot). */
void prop_task_done(prop_t *p, uint64_t now_ms, int slot, const prop_outcome_t *outcome);

/* Runs due timers.  Call at prop_next_deadline() (or earlier: it is idempotent). */
void prop_tick(prop_t *p, uint64_t now_ms);
uint64_t prop_next_deadline(const prop_t *p); /* UINT64_MAX when nothing is scheduled */

int prop_running(const prop_t *p); /* instances running or fetching */
/* "status state=idle|running wifi=up|down mqtt=connected|disconnected tasks=N heap_free=B uptime_ms=N"
 * where tasks counts tasks finished since boot. */
void prop_status_line(const prop_t *p, uint64_t now_ms, char *buf, size_t cap);

/* Parses `prop provision` arguments (key=value words) over *cfg.  Returns 0, or -1 with a reason
 * naming the bad key in err. */
int prop_provision_parse(prop_config_t *cfg, int argc, const char *const *argv, char *err, size_t errcap);

/* The reconnect delay for attempt n (1-based): min(cap, base * 2^(n-1)), then jittered to
 * [d/2, d] so a fleet that lost the same broker does not come back in lockstep. */
uint32_t prop_backoff_ms(const prop_config_t *cfg, uint32_t attempt, uint32_t rand);

#endif
