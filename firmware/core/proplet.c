#include "proplet.h"

#include <stdio.h>
#include <string.h>

#include "b64.h"
#include "console.h"
#include "wasm_info.h"

enum { T_CREATE, T_ALIVE, T_RESULTS, T_START, T_STOP, T_REG_REQ, T_REG_SRV, T_DISCOVER, T_COUNT };

static const char *const topic_suffix[T_COUNT] = {
    "control/proplet/create", "control/proplet/alive", "control/proplet/results",
    "control/manager/start",  "control/manager/stop",  "registry/proplet",
    "registry/server",
    /* Our manager's extension: "announce yourself again" (it started after us, or lost its registry).
     * Upstream managers never publish there, so subscribing costs nothing on their wire. */
    "control/manager/discover",
};

#define QOS 1

/* ---- small helpers ---------------------------------------------------------------------------- */

static void copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);
    if (n >= cap) {
        n = cap - 1;
    }
    memcpy(dst, src, n);
    dst[n] = '\0';
}

static void emit(prop_t *p, prop_level_t level, const con_line_t *l)
{
    if (p->ops.log != NULL) {
        p->ops.log(p->ops.ctx, level, l->buf);
    }
}

static void heap_stats(const prop_t *p, prop_heap_t *h)
{
    memset(h, 0, sizeof *h);
    if (p->ops.heap_stats != NULL) {
        p->ops.heap_stats(p->ops.ctx, h);
    }
}

static void log_heap(prop_t *p)
{
    prop_heap_t h;
    con_line_t l;
    heap_stats(p, &h);
    con_begin(&l, "heap");
    con_int(&l, "free", h.free_bytes);
    con_int(&l, "used", h.used_bytes);
    con_int(&l, "max_used", h.max_used_bytes);
    emit(p, PROP_LOG_INF, &l);
}

static uint32_t budget_free(const prop_t *p)
{
    return p->cfg.wamr_budget_bytes > p->reserved_bytes ? p->cfg.wamr_budget_bytes - p->reserved_bytes : 0;
}

int prop_running(const prop_t *p)
{
    int n = 0;
    for (int i = 0; i < PROP_MAX_SLOTS; i++) {
        n += p->slots[i].state != SLOT_FREE;
    }
    return n;
}

static int publish(prop_t *p, int topic, const char *payload, size_t len)
{
    if (p->conn != PROP_ONLINE || p->ops.publish == NULL) {
        return -1;
    }
    return p->ops.publish(p->ops.ctx, p->topics[topic], payload, len, QOS);
}

/* ---- configuration and provisioning ----------------------------------------------------------- */

void prop_config_defaults(prop_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->broker_port = 1883;
    cfg->heartbeat_ms = 10000;
    cfg->heap_report_ms = 10000;
    cfg->backoff_base_ms = 1000;
    cfg->backoff_cap_ms = 60000;
    cfg->connect_timeout_ms = 15000;
    cfg->fetch_timeout_ms = 60000;
    cfg->keepalive_s = 30;
    cfg->wamr_budget_bytes = 192u * 1024u;
    cfg->thread_stack_bytes = 8u * 1024u;
    cfg->max_instances = 2;
    cfg->total_memory_bytes = 512u * 1024u;
    cfg->os = "zephyr";
    cfg->cpu_arch = "xtensa";
    cfg->board = "esp32s3_devkitc";
}

int prop_config_provisioned(const prop_config_t *cfg)
{
    return cfg->ssid[0] != '\0' && cfg->broker_host[0] != '\0' && cfg->proplet_id[0] != '\0' &&
           cfg->domain[0] != '\0' && cfg->channel[0] != '\0' && cfg->broker_port != 0;
}

static int set_field(char *dst, size_t cap, const char *key, const char *v, int allow_empty,
                     int topic_level, char *err, size_t errcap)
{
    size_t n = strlen(v);
    if (n == 0 && !allow_empty) {
        snprintf(err, errcap, "%s: must not be empty", key);
        return -1;
    }
    if (n >= cap) {
        snprintf(err, errcap, "%s: longer than %u characters", key, (unsigned)(cap - 1));
        return -1;
    }
    if (topic_level && strpbrk(v, "/+#") != NULL) {
        snprintf(err, errcap, "%s: must not contain '/', '+' or '#'", key);
        return -1;
    }
    memcpy(dst, v, n + 1);
    return 0;
}

static int parse_broker(prop_config_t *cfg, const char *v, char *err, size_t errcap)
{
    const char *colon = strrchr(v, ':');
    if (colon == NULL || colon == v || colon[1] == '\0') {
        snprintf(err, errcap, "broker: expected HOST:PORT, got '%s'", v);
        return -1;
    }
    size_t hlen = (size_t)(colon - v);
    if (hlen >= sizeof cfg->broker_host) {
        snprintf(err, errcap, "broker: host longer than %u characters", (unsigned)sizeof cfg->broker_host - 1);
        return -1;
    }
    unsigned long port = 0;
    for (const char *q = colon + 1; *q != '\0'; q++) {
        if (*q < '0' || *q > '9' || port > 65535) {
            snprintf(err, errcap, "broker: port must be 1-65535, got '%s'", colon + 1);
            return -1;
        }
        port = port * 10 + (unsigned long)(*q - '0');
    }
    if (port == 0 || port > 65535) {
        snprintf(err, errcap, "broker: port must be 1-65535, got '%s'", colon + 1);
        return -1;
    }
    memcpy(cfg->broker_host, v, hlen);
    cfg->broker_host[hlen] = '\0';
    cfg->broker_port = (uint16_t)port;
    return 0;
}

int prop_provision_parse(prop_config_t *cfg, int argc, const char *const *argv, char *err, size_t errcap)
{
    static const char *const required[] = {"ssid", "broker", "proplet_id", "domain", "channel"};
    prop_config_t next = *cfg;
    unsigned seen = 0;
    for (int i = 0; i < argc; i++) {
        const char *eq = strchr(argv[i], '=');
        if (eq == NULL) {
            snprintf(err, errcap, "expected key=value, got '%s'", argv[i]);
            return -1;
        }
        size_t klen = (size_t)(eq - argv[i]);
        const char *v = eq + 1;
        int rc;
#define KEY(name) (klen == strlen(name) && strncmp(argv[i], name, klen) == 0)
        if (KEY("ssid")) {
            rc = set_field(next.ssid, sizeof next.ssid, "ssid", v, 0, 0, err, errcap);
            seen |= 1u;
        } else if (KEY("psk")) {
            rc = set_field(next.psk, sizeof next.psk, "psk", v, 1, 0, err, errcap);
        } else if (KEY("broker")) {
            rc = parse_broker(&next, v, err, errcap);
            seen |= 2u;
        } else if (KEY("proplet_id")) {
            rc = set_field(next.proplet_id, sizeof next.proplet_id, "proplet_id", v, 0, 0, err, errcap);
            seen |= 4u;
        } else if (KEY("api_key")) {
            rc = set_field(next.api_key, sizeof next.api_key, "api_key", v, 1, 0, err, errcap);
        } else if (KEY("domain")) {
            rc = set_field(next.domain, sizeof next.domain, "domain", v, 0, 1, err, errcap);
            seen |= 8u;
        } else if (KEY("channel")) {
            rc = set_field(next.channel, sizeof next.channel, "channel", v, 0, 1, err, errcap);
            seen |= 16u;
        } else {
            snprintf(err, errcap, "unknown key '%.*s'", (int)(klen > 32 ? 32 : klen), argv[i]);
            return -1;
        }
#undef KEY
        if (rc != 0) {
            return -1;
        }
    }
    for (unsigned b = 0; b < 5; b++) {
        if ((seen & (1u << b)) == 0) {
            snprintf(err, errcap, "missing %s=", required[b]);
            return -1;
        }
    }
    *cfg = next;
    return 0;
}

uint32_t prop_backoff_ms(const prop_config_t *cfg, uint32_t attempt, uint32_t rand)
{
    uint64_t d = cfg->backoff_base_ms;
    for (uint32_t i = 1; i < attempt && d < cfg->backoff_cap_ms; i++) {
        d *= 2u;
    }
    if (d > cfg->backoff_cap_ms) {
        d = cfg->backoff_cap_ms;
    }
    uint32_t half = (uint32_t)(d / 2u);
    uint32_t span = (uint32_t)d - half + 1u;
    return half + rand % span;
}

/* ---- connection state machine ---------------------------------------------------------------- */

static void build_topics(prop_t *p)
{
    for (int i = 0; i < T_COUNT; i++) {
        snprintf(p->topics[i], sizeof p->topics[i], "m/%s/c/%s/%s", p->cfg.domain, p->cfg.channel,
                 topic_suffix[i]);
    }
    pj_writer_t w;
    pj_w_init(&w, p->will, sizeof p->will);
    pj_w_raw(&w, "{\"status\":\"offline\",\"proplet_id\":");
    pj_w_str(&w, p->cfg.proplet_id);
    pj_w_raw(&w, ",\"namespace\":\"embedded\"}");
}

static void start_wifi(prop_t *p, uint64_t now)
{
    p->conn = PROP_WIFI_CONNECTING;
    p->conn_deadline = now + p->cfg.connect_timeout_ms;
    if (p->ops.wifi_connect != NULL) {
        p->ops.wifi_connect(p->ops.ctx, p->cfg.ssid, p->cfg.psk);
    }
}

static void start_mqtt(prop_t *p, uint64_t now)
{
    prop_mqtt_params_t mp = {
        .host = p->cfg.broker_host,
        .port = p->cfg.broker_port,
        .client_id = p->cfg.proplet_id,
        .username = p->cfg.proplet_id,
        .password = p->cfg.api_key[0] != '\0' ? p->cfg.api_key : NULL,
        .keepalive_s = p->cfg.keepalive_s,
        /* Clean session: we resubscribe on every connect, and a start queued by the broker while we
         * were away may already have been re-dispatched elsewhere by the manager. */
        .clean_session = 1,
        .will_topic = p->topics[T_ALIVE],
        .will_payload = p->will,
        .will_qos = QOS,
    };
    p->conn = PROP_MQTT_CONNECTING;
    p->conn_deadline = now + p->cfg.connect_timeout_ms;
    if (p->ops.mqtt_connect != NULL) {
        p->ops.mqtt_connect(p->ops.ctx, &mp);
    }
}

static uint32_t next_backoff(prop_t *p)
{
    p->attempt++;
    uint32_t r = p->ops.rand32 != NULL ? p->ops.rand32(p->ops.ctx) : 0u;
    return prop_backoff_ms(&p->cfg, p->attempt, r);
}

static void mqtt_lost(prop_t *p, uint64_t now, const char *reason)
{
    con_line_t l;
    con_begin(&l, "mqtt_disconnected");
    con_str(&l, "reason", reason);
    emit(p, PROP_LOG_WRN, &l);
    uint32_t d = next_backoff(p);
    con_begin(&l, "mqtt_reconnect");
    con_int(&l, "attempt", p->attempt);
    con_int(&l, "backoff_ms", d);
    emit(p, PROP_LOG_INF, &l);
    p->conn = PROP_MQTT_BACKOFF;
    p->conn_deadline = now + d;
}

static void log_provisioned(prop_t *p)
{
    con_line_t l;
    char broker[160];
    snprintf(broker, sizeof broker, "%s:%u", p->cfg.broker_host, (unsigned)p->cfg.broker_port);
    con_begin(&l, "provisioned");
    con_str(&l, "proplet_id", p->cfg.proplet_id);
    con_str(&l, "broker", broker);
    con_str(&l, "domain", p->cfg.domain);
    con_str(&l, "channel", p->cfg.channel);
    emit(p, PROP_LOG_INF, &l);
}

void prop_boot(prop_t *p, const prop_config_t *cfg, const prop_ops_t *ops, const char *reset,
               uint64_t now_ms)
{
    memset(p, 0, sizeof *p);
    p->cfg = *cfg;
    p->ops = *ops;
    if (p->cfg.max_instances == 0 || p->cfg.max_instances > PROP_MAX_SLOTS) {
        p->cfg.max_instances = PROP_MAX_SLOTS;
    }
    p->conn = PROP_UNPROVISIONED;
    p->next_heap = now_ms + p->cfg.heap_report_ms;
    con_line_t l;
    con_begin(&l, "boot");
    con_str(&l, "version", PROP_VERSION);
    con_str(&l, "reset", reset);
    con_str(&l, "board", p->cfg.board != NULL ? p->cfg.board : "unknown");
    emit(p, PROP_LOG_INF, &l);
    if (!prop_config_provisioned(&p->cfg)) {
        con_begin(&l, "not provisioned: use prop provision");
        emit(p, PROP_LOG_WRN, &l);
        return;
    }
    build_topics(p);
    log_provisioned(p);
    start_wifi(p, now_ms);
}

void prop_reprovision(prop_t *p, const prop_config_t *cfg, uint64_t now_ms)
{
    if (p->conn == PROP_MQTT_CONNECTING || p->conn == PROP_ONLINE) {
        if (p->ops.mqtt_close != NULL) {
            p->ops.mqtt_close(p->ops.ctx);
        }
    }
    /* Keep the runtime tunables; take the identity and network settings. */
    memcpy(p->cfg.ssid, cfg->ssid, sizeof p->cfg.ssid);
    memcpy(p->cfg.psk, cfg->psk, sizeof p->cfg.psk);
    memcpy(p->cfg.broker_host, cfg->broker_host, sizeof p->cfg.broker_host);
    p->cfg.broker_port = cfg->broker_port;
    memcpy(p->cfg.proplet_id, cfg->proplet_id, sizeof p->cfg.proplet_id);
    memcpy(p->cfg.api_key, cfg->api_key, sizeof p->cfg.api_key);
    memcpy(p->cfg.domain, cfg->domain, sizeof p->cfg.domain);
    memcpy(p->cfg.channel, cfg->channel, sizeof p->cfg.channel);
    p->attempt = 0;
    p->wifi_up = 0;
    if (!prop_config_provisioned(&p->cfg)) {
        p->conn = PROP_UNPROVISIONED;
        return;
    }
    build_topics(p);
    log_provisioned(p);
    start_wifi(p, now_ms);
}

void prop_wifi_up(prop_t *p, uint64_t now_ms, const char *ip, int rssi)
{
    con_line_t l;
    copy_str(p->ip, sizeof p->ip, ip != NULL ? ip : "");
    p->wifi_up = 1;
    con_begin(&l, "wifi_up");
    con_str(&l, "ip", p->ip[0] != '\0' ? p->ip : "0.0.0.0");
    con_int(&l, "rssi", rssi);
    emit(p, PROP_LOG_INF, &l);
    if (p->conn == PROP_WIFI_CONNECTING || p->conn == PROP_WIFI_BACKOFF) {
        p->attempt = 0;
        start_mqtt(p, now_ms);
    }
}

void prop_wifi_down(prop_t *p, uint64_t now_ms, const char *reason)
{
    con_line_t l;
    int was_up = p->wifi_up;
    p->wifi_up = 0;
    if (p->conn == PROP_UNPROVISIONED) {
        return;
    }
    con_begin(&l, "wifi_down");
    con_str(&l, "reason", reason != NULL ? reason : "unknown");
    emit(p, PROP_LOG_WRN, &l);
    if (p->conn == PROP_MQTT_CONNECTING || p->conn == PROP_ONLINE) {
        if (p->ops.mqtt_close != NULL) {
            p->ops.mqtt_close(p->ops.ctx);
        }
        con_begin(&l, "mqtt_disconnected");
        con_str(&l, "reason", "wifi_down");
        emit(p, PROP_LOG_WRN, &l);
    }
    if (was_up) {
        p->attempt = 0; /* a fresh loss, not another failed association: start the backoff over */
    }
    p->conn = PROP_WIFI_BACKOFF;
    p->conn_deadline = now_ms + next_backoff(p);
}

static void flush_outbox(prop_t *p)
{
    uint8_t sent = 0;
    while (sent < p->outbox_len) {
        prop_msg_t *m = &p->outbox[sent];
        if (p->ops.publish(p->ops.ctx, m->topic, m->payload, m->len, QOS) != 0) {
            break;
        }
        sent++;
    }
    if (sent > 0) {
        memmove(&p->outbox[0], &p->outbox[sent], (size_t)(p->outbox_len - sent) * sizeof p->outbox[0]);
        p->outbox_len = (uint8_t)(p->outbox_len - sent);
    }
}

static void send_heartbeat(prop_t *p)
{
    /* 4 slots x 64-byte ids fit easily: well under the manager's 1023-byte embedded budget. */
    char buf[512];
    pj_writer_t w;
    pj_w_init(&w, buf, sizeof buf);
    pj_w_raw(&w, "{\"status\":\"alive\",\"proplet_id\":");
    pj_w_str(&w, p->cfg.proplet_id);
    /* Our extension (upstream's firmware has no such key): the tasks we are running, so the manager
     * notices a start or a result that got lost and dispatches the task again. */
    pj_w_raw(&w, ",\"namespace\":\"embedded\",\"running\":[");
    int listed = 0;
    for (int i = 0; i < PROP_MAX_SLOTS; i++) {
        if (p->slots[i].state == SLOT_FREE) {
            continue;
        }
        if (listed++ > 0) {
            pj_w_raw(&w, ",");
        }
        pj_w_str(&w, p->slots[i].id);
    }
    pj_w_raw(&w, "]}");
    int n = pj_w_end(&w);
    if (n > 0 && publish(p, T_ALIVE, buf, (size_t)n) == 0) {
        con_line_t l;
        con_begin(&l, "heartbeat");
        con_int(&l, "seq", ++p->heartbeat_seq);
        emit(p, PROP_LOG_INF, &l);
    }
}

static void send_discovery(prop_t *p)
{
    char buf[640];
    pj_writer_t w;
    pj_w_init(&w, buf, sizeof buf);
    pj_w_raw(&w, "{");
    pj_w_key(&w, "proplet_id");
    pj_w_str(&w, p->cfg.proplet_id);
    pj_w_key(&w, "namespace");
    pj_w_str(&w, "embedded");
    pj_w_key(&w, "metadata");
    pj_w_raw(&w, "{");
    pj_w_key(&w, "description");
    pj_w_str(&w, "ESP32-S3 proplet (propeller-continuum firmware)");
    pj_w_key(&w, "tags");
    pj_w_raw(&w, "[\"embedded\",\"esp32s3\",\"zephyr\"]");
    pj_w_key(&w, "ip");
    pj_w_str(&w, p->ip);
    pj_w_key(&w, "environment");
    pj_w_str(&w, "embedded");
    pj_w_key(&w, "os");
    pj_w_str(&w, p->cfg.os != NULL ? p->cfg.os : "zephyr");
    pj_w_key(&w, "hostname");
    pj_w_str(&w, "");
    pj_w_key(&w, "cpu_arch");
    pj_w_str(&w, p->cfg.cpu_arch != NULL ? p->cfg.cpu_arch : "xtensa");
    pj_w_key(&w, "total_memory_bytes");
    pj_w_int(&w, p->cfg.total_memory_bytes);
    pj_w_key(&w, "proplet_version");
    pj_w_str(&w, PROP_VERSION);
    pj_w_key(&w, "wasm_runtime");
    pj_w_str(&w, "wamr");
    pj_w_key(&w, "free_memory_bytes");
    pj_w_int(&w, budget_free(p));
    pj_w_key(&w, "max_instances");
    pj_w_int(&w, p->cfg.max_instances);
    pj_w_raw(&w, "}}");
    int n = pj_w_end(&w);
    if (n > 0 && publish(p, T_CREATE, buf, (size_t)n) == 0) {
        con_line_t l;
        con_begin(&l, "discovery_sent");
        con_str(&l, "proplet_id", p->cfg.proplet_id);
        emit(p, PROP_LOG_INF, &l);
    }
}

void prop_mqtt_connected(prop_t *p, uint64_t now_ms)
{
    if (p->conn != PROP_MQTT_CONNECTING) {
        return; /* a late CONNACK for a session we already gave up on */
    }
    con_line_t l;
    char broker[160];
    snprintf(broker, sizeof broker, "%s:%u", p->cfg.broker_host, (unsigned)p->cfg.broker_port);
    con_begin(&l, "mqtt_connected");
    con_str(&l, "broker", broker);
    emit(p, PROP_LOG_INF, &l);
    p->conn = PROP_ONLINE;
    p->attempt = 0;
    if (p->ops.subscribe != NULL) {
        (void)p->ops.subscribe(p->ops.ctx, p->topics[T_START], QOS);
        (void)p->ops.subscribe(p->ops.ctx, p->topics[T_STOP], QOS);
        (void)p->ops.subscribe(p->ops.ctx, p->topics[T_REG_SRV], QOS);
        (void)p->ops.subscribe(p->ops.ctx, p->topics[T_DISCOVER], QOS);
    }
    send_discovery(p);
    /* Heartbeat at once (upstream waits a full interval): the manager marks us alive sooner. */
    send_heartbeat(p);
    p->next_heartbeat = now_ms + p->cfg.heartbeat_ms;
    flush_outbox(p);
}

void prop_mqtt_disconnected(prop_t *p, uint64_t now_ms, const char *reason)
{
    if (p->conn != PROP_MQTT_CONNECTING && p->conn != PROP_ONLINE) {
        return;
    }
    mqtt_lost(p, now_ms, reason != NULL ? reason : "unknown");
}

/* ---- results ---------------------------------------------------------------------------------- */

static void queue_result(prop_t *p, const char *payload, size_t len)
{
    if (len >= PROP_RESULT_MAX) {
        return; /* cannot happen: results are built in a PROP_RESULT_MAX buffer */
    }
    if (publish(p, T_RESULTS, payload, len) == 0) {
        return;
    }
    /* Offline: keep it for the next session, so a result is not lost to a reconnect. */
    if (p->outbox_len == PROP_OUTBOX) {
        con_line_t l;
        con_begin(&l, "result_dropped");
        con_str(&l, "reason", "outbox_full");
        emit(p, PROP_LOG_WRN, &l);
        memmove(&p->outbox[0], &p->outbox[1], (PROP_OUTBOX - 1) * sizeof p->outbox[0]);
        p->outbox_len--;
    }
    prop_msg_t *m = &p->outbox[p->outbox_len++];
    copy_str(m->topic, sizeof m->topic, p->topics[T_RESULTS]);
    memcpy(m->payload, payload, len);
    m->payload[len] = '\0';
    m->len = len;
}

static void send_result(prop_t *p, const char *id, const char *results, const char *error)
{
    char buf[PROP_RESULT_MAX];
    pj_writer_t w;
    pj_w_init(&w, buf, sizeof buf);
    pj_w_raw(&w, "{");
    pj_w_key(&w, "task_id");
    pj_w_str(&w, id);
    pj_w_key(&w, "proplet_id");
    pj_w_str(&w, p->cfg.proplet_id);
    pj_w_key(&w, "results");
    pj_w_str(&w, results);
    if (error != NULL) {
        pj_w_key(&w, "error");
        pj_w_str(&w, error);
    }
    pj_w_raw(&w, "}");
    int n = pj_w_end(&w);
    if (n > 0) {
        queue_result(p, buf, (size_t)n);
    }
}

/* Refuses a task before it ran: console task_end ok=0 plus an error result. */
static void refuse(prop_t *p, const char *id, const char *error)
{
    con_line_t l;
    con_begin(&l, "task_end");
    con_str(&l, "id", id);
    con_int(&l, "ok", 0);
    con_quoted(&l, "error", error);
    con_int(&l, "duration_ms", 0);
    emit(p, PROP_LOG_WRN, &l);
    send_result(p, id, "", error);
}

static void release(prop_t *p, prop_slot_t *s)
{
    if (s->state == SLOT_RUNNING) {
        p->reserved_bytes -= s->cost;
    }
    memset(s, 0, sizeof *s);
}

/* ---- starting tasks --------------------------------------------------------------------------- */

static int slot_index(const prop_t *p, const prop_slot_t *s) { return (int)(s - p->slots); }

static prop_slot_t *find_slot(prop_t *p, const char *id)
{
    for (int i = 0; i < PROP_MAX_SLOTS; i++) {
        if (p->slots[i].state != SLOT_FREE && strcmp(p->slots[i].id, id) == 0) {
            return &p->slots[i];
        }
    }
    return NULL;
}

static void admit_and_run(prop_t *p, prop_slot_t *s, uint64_t now)
{
    char err[PROP_ERR_MAX];
    wasm_info_t info;
    int rc = wasm_info_read(s->wasm, s->wasm_len, &info);
    if (rc != WI_OK) {
        snprintf(err, sizeof err, "invalid module: %s",
                 rc == WI_ERR_MAGIC ? "not a wasm binary" : rc == WI_ERR_TRUNC ? "truncated" : "malformed");
        refuse(p, s->id, err);
        release(p, s);
        return;
    }
    if (s->name[0] != '\0' && wasm_has_func_export(s->wasm, s->wasm_len, s->name) == 1) {
        copy_str(s->entry, sizeof s->entry, s->name);
    } else if (wasm_has_func_export(s->wasm, s->wasm_len, "main") == 1) {
        copy_str(s->entry, sizeof s->entry, "main");
    } else {
        snprintf(err, sizeof err, "module exports neither '%.40s' nor 'main'", s->name);
        refuse(p, s->id, err);
        release(p, s);
        return;
    }
    uint64_t need = (uint64_t)s->wasm_len + (uint64_t)info.memory_min_pages * PROP_WASM_PAGE +
                    PROP_WASM_STACK_BYTES + PROP_EXEC_ENV_BYTES + p->cfg.thread_stack_bytes;
    uint32_t free_b = budget_free(p);
    if (need > free_b) {
        con_line_t l;
        con_begin(&l, "oom");
        con_str(&l, "id", s->id);
        con_int(&l, "need", (int64_t)need);
        con_int(&l, "free", free_b);
        emit(p, PROP_LOG_WRN, &l);
        snprintf(err, sizeof err, "out of memory: need %llu bytes, free %lu", (unsigned long long)need,
                 (unsigned long)free_b);
        refuse(p, s->id, err);
        release(p, s);
        return;
    }
    s->cost = (uint32_t)need;
    s->state = SLOT_RUNNING;
    s->start_ms = now;
    p->reserved_bytes += s->cost;
    s->run = (prop_run_t){
        .slot = slot_index(p, s),
        .id = s->id,
        .entry = s->entry,
        .args = s->args,
        .nargs = s->nargs,
        .wasm = s->wasm,
        .wasm_len = s->wasm_len,
        .wasm_stack_bytes = PROP_WASM_STACK_BYTES,
        .exec_env_bytes = PROP_EXEC_ENV_BYTES,
        .thread_stack_bytes = p->cfg.thread_stack_bytes,
    };
    con_line_t l;
    con_begin(&l, "task_start");
    con_str(&l, "id", s->id);
    con_str(&l, "name", s->entry);
    con_int(&l, "inputs", s->nargs);
    emit(p, PROP_LOG_INF, &l);
    if (p->ops.run_task == NULL || p->ops.run_task(p->ops.ctx, &s->run) != 0) {
        char id[PROP_ID_MAX];
        copy_str(id, sizeof id, s->id);
        release(p, s);
        refuse(p, id, "runtime refused the task: no worker available");
    }
}

/* Targeting: a start/stop naming another proplet is not ours unless it is a broadcast (the Rust
 * proplet's rule; upstream firmware runs every start on the channel). */
static int not_for_us(prop_t *p, const pj_doc_t *d)
{
    int t = pj_find(d, 0, "proplet_id");
    if (t < 0 || d->toks[t].type != PJ_STRING || d->toks[t].end == d->toks[t].start) {
        return 0;
    }
    if (pj_bool(d, pj_find(d, 0, "broadcast")) == 1) {
        return 0;
    }
    return !pj_str_eq(d, t, p->cfg.proplet_id);
}

static void log_ignored(prop_t *p, const char *id, const char *reason)
{
    con_line_t l;
    con_begin(&l, "task_ignored");
    con_str(&l, "id", id);
    con_str(&l, "reason", reason);
    emit(p, PROP_LOG_INF, &l);
}

static void log_rejected(prop_t *p, const char *what, const char *reason)
{
    con_line_t l;
    con_begin(&l, "message_rejected");
    con_str(&l, "topic", what);
    con_quoted(&l, "reason", reason);
    emit(p, PROP_LOG_WRN, &l);
}

/* Reads the optional `attempt` (our manager's extension, a non-negative i32; absent or null = 0,
 * unknown). Returns 0, or -1 when it is present but not such an integer. */
static int read_attempt(const pj_doc_t *d, uint32_t *attempt)
{
    int t = pj_find(d, 0, "attempt");
    int64_t v = 0;
    *attempt = 0;
    if (t < 0 || pj_is_null(d, t)) {
        return 0;
    }
    if (pj_int(d, t, &v) != 0 || v < 0 || v > INT32_MAX) {
        return -1;
    }
    *attempt = (uint32_t)v;
    return 0;
}

/* Reads `id`; returns 0 or -1 (then logs why: without an id there is nobody to answer). */
static int read_id(prop_t *p, const pj_doc_t *d, const char *what, char *id)
{
    int t = pj_find(d, 0, "id");
    if (t < 0) {
        log_rejected(p, what, "missing id");
        return -1;
    }
    int n = pj_str(d, t, id, PROP_ID_MAX);
    if (n <= 0) {
        log_rejected(p, what, n == 0 ? "id: empty" : "id: expected a string of at most 63 bytes");
        return -1;
    }
    return 0;
}

static int read_inputs(const pj_doc_t *d, prop_slot_t *s, char *err, size_t errcap)
{
    int arr = pj_find(d, 0, "inputs");
    if (arr < 0 || pj_is_null(d, arr)) {
        return 0;
    }
    if (d->toks[arr].type != PJ_ARRAY) {
        snprintf(err, errcap, "inputs: expected an array of integers");
        return -1;
    }
    if (d->toks[arr].size > PROP_MAX_INPUTS) {
        snprintf(err, errcap, "inputs: %d values, at most %d", d->toks[arr].size, PROP_MAX_INPUTS);
        return -1;
    }
    for (int i = 0; i < d->toks[arr].size; i++) {
        int e = pj_elem(d, arr, i);
        int64_t v;
        int ok = pj_int(d, e, &v) == 0;
        if (!ok && e >= 0 && d->toks[e].type == PJ_STRING) {
            /* Rust-profile starts carry inputs as strings: accept decimal ones. */
            char tmp[24];
            pj_tok_t tk = {PJ_PRIMITIVE, 0, 0, 0, -1};
            pj_doc_t sub = {tmp, 0, &tk, 1, 1};
            int n = pj_str(d, e, tmp, sizeof tmp);
            if (n > 0) {
                sub.len = (size_t)n;
                tk.end = n;
                ok = pj_int(&sub, 0, &v) == 0;
            }
        }
        if (!ok || v < INT32_MIN || v > (int64_t)UINT32_MAX) {
            snprintf(err, errcap, "inputs[%d]: expected an integer in the i32 range", i);
            return -1;
        }
        s->args[i] = (int32_t)(uint32_t)(v & 0xFFFFFFFF);
    }
    s->nargs = (uint8_t)d->toks[arr].size;
    return 0;
}

/* Decodes a base64 string token into the slot's module buffer. */
static int read_module(prop_t *p, const pj_doc_t *d, int t, prop_slot_t *s, const char *field, char *err,
                       size_t errcap)
{
    int n = pj_str(d, t, p->scratch, sizeof p->scratch);
    if (n < 0) {
        snprintf(err, errcap, "%s: expected a base64 string", field);
        return -1;
    }
    int m = b64_decode(p->scratch, (size_t)n, s->wasm, sizeof s->wasm);
    if (m == B64_ERR_SPACE) {
        snprintf(err, errcap, "%s: module larger than %u bytes", field, (unsigned)sizeof s->wasm);
        return -1;
    }
    if (m < 0) {
        snprintf(err, errcap, "%s: invalid base64", field);
        return -1;
    }
    if (m == 0) {
        snprintf(err, errcap, "%s: empty", field);
        return -1;
    }
    s->wasm_len = (size_t)m;
    return 0;
}

static void handle_oversize_start(prop_t *p, const char *payload, size_t len, size_t total)
{
    pj_doc_t d;
    char id[PROP_ID_MAX];
    char err[PROP_ERR_MAX];
    (void)pj_parse(&d, payload, len, p->toks, PROP_TOK_MAX);
    snprintf(err, sizeof err, "start payload too large: %lu bytes, limit %u", (unsigned long)total,
             (unsigned)(PROP_PAYLOAD_MAX - 1));
    if (d.ntok == 0 || d.toks[0].type != PJ_OBJECT || read_id(p, &d, "start", id) != 0) {
        log_rejected(p, "start", err);
        return;
    }
    if (not_for_us(p, &d)) {
        log_ignored(p, id, "not_target");
        return;
    }
    refuse(p, id, err);
}

static void handle_start(prop_t *p, uint64_t now, const char *payload, size_t len, size_t total)
{
    if (total >= PROP_PAYLOAD_MAX || len < total) {
        handle_oversize_start(p, payload, len, total);
        return;
    }
    pj_doc_t d;
    char id[PROP_ID_MAX];
    char err[PROP_ERR_MAX];
    int rc = pj_parse(&d, payload, len, p->toks, PROP_TOK_MAX);
    if (rc < 0 || d.toks[0].type != PJ_OBJECT) {
        log_rejected(p, "start", rc == PJ_ERR_NOMEM ? "too many JSON tokens" : "not a JSON object");
        return;
    }
    if (read_id(p, &d, "start", id) != 0) {
        return;
    }
    if (not_for_us(p, &d)) {
        log_ignored(p, id, "not_target");
        return;
    }
    if (find_slot(p, id) != NULL) {
        log_ignored(p, id, "duplicate");
        return;
    }
    prop_slot_t *s = NULL;
    if (prop_running(p) < p->cfg.max_instances) {
        for (int i = 0; i < PROP_MAX_SLOTS && s == NULL; i++) {
            if (p->slots[i].state == SLOT_FREE) {
                s = &p->slots[i];
            }
        }
    }
    if (s == NULL) {
        snprintf(err, sizeof err, "busy: %u of %u instances in use", (unsigned)prop_running(p),
                 (unsigned)p->cfg.max_instances);
        refuse(p, id, err);
        return;
    }
    memset(s, 0, sizeof *s);
    copy_str(s->id, sizeof s->id, id);
    int t = pj_find(&d, 0, "name");
    if (t >= 0 && !pj_is_null(&d, t) && pj_str(&d, t, s->name, sizeof s->name) < 0) {
        refuse(p, id, "name: expected a string of at most 63 bytes");
        memset(s, 0, sizeof *s);
        return;
    }
    if (read_inputs(&d, s, err, sizeof err) != 0) {
        refuse(p, id, err);
        memset(s, 0, sizeof *s);
        return;
    }
    if (read_attempt(&d, &s->attempt) != 0) {
        refuse(p, id, "attempt: expected a non-negative integer");
        memset(s, 0, sizeof *s);
        return;
    }
    int file = pj_find(&d, 0, "file");
    int url = pj_find(&d, 0, "image_url");
    if (file >= 0 && !pj_is_null(&d, file) && d.toks[file].end > d.toks[file].start) {
        if (read_module(p, &d, file, s, "file", err, sizeof err) != 0) {
            refuse(p, id, err);
            memset(s, 0, sizeof *s);
            return;
        }
        admit_and_run(p, s, now);
        return;
    }
    if (url >= 0 && pj_str(&d, url, s->image_url, sizeof s->image_url) > 0) {
        char req[PROP_URL_MAX + 32];
        pj_writer_t w;
        pj_w_init(&w, req, sizeof req);
        pj_w_raw(&w, "{\"app_name\":");
        pj_w_str(&w, s->image_url);
        pj_w_raw(&w, "}");
        int n = pj_w_end(&w);
        s->state = SLOT_FETCHING;
        s->deadline_ms = now + p->cfg.fetch_timeout_ms;
        if (n < 0 || publish(p, T_REG_REQ, req, (size_t)n) != 0) {
            refuse(p, id, "image_url: could not request the module from the registry");
            memset(s, 0, sizeof *s);
        }
        return;
    }
    refuse(p, id, "either file or image_url must be provided");
    memset(s, 0, sizeof *s);
}

/* registry/server: {"app_name","chunk_idx","total_chunks","data"}; the device takes one chunk. */
static void handle_chunk(prop_t *p, uint64_t now, const char *payload, size_t len, size_t total)
{
    pj_doc_t d;
    char app[PROP_URL_MAX];
    char err[PROP_ERR_MAX];
    if (total >= PROP_PAYLOAD_MAX || len < total) {
        /* too big for us; if it is ours the fetch times out with a clear error */
        log_rejected(p, "registry/server", "chunk larger than the receive buffer");
        return;
    }
    if (pj_parse(&d, payload, len, p->toks, PROP_TOK_MAX) < 0 || d.toks[0].type != PJ_OBJECT ||
        pj_str(&d, pj_find(&d, 0, "app_name"), app, sizeof app) <= 0) {
        log_rejected(p, "registry/server", "expected {\"app_name\":...,\"data\":...}");
        return;
    }
    prop_slot_t *s = NULL;
    for (int i = 0; i < PROP_MAX_SLOTS; i++) {
        if (p->slots[i].state == SLOT_FETCHING && strcmp(p->slots[i].image_url, app) == 0) {
            s = &p->slots[i];
            break; /* one chunk answers the oldest waiting task for that module */
        }
    }
    if (s == NULL) {
        return; /* chunks are broadcast to every proplet: most are for someone else */
    }
    int64_t chunks = 1;
    int tc = pj_find(&d, 0, "total_chunks");
    if (tc >= 0 && (pj_int(&d, tc, &chunks) != 0 || chunks != 1)) {
        snprintf(err, sizeof err, "image_url: module arrives in %lld chunks, the device takes 1",
                 (long long)chunks);
        refuse(p, s->id, err);
        release(p, s);
        return;
    }
    int data = pj_find(&d, 0, "data");
    if (read_module(p, &d, data, s, "data", err, sizeof err) != 0) {
        refuse(p, s->id, err);
        release(p, s);
        return;
    }
    s->state = SLOT_FREE; /* admit_and_run takes it from here */
    admit_and_run(p, s, now);
}

static void handle_stop(prop_t *p, const char *payload, size_t len)
{
    pj_doc_t d;
    char id[PROP_ID_MAX];
    /* Only `id` is required: the manager's stops carry id, broadcast and proplet_id (and ours add
     * name and state); upstream firmware demanded name and state and so rejected them all. */
    if (pj_parse(&d, payload, len, p->toks, PROP_TOK_MAX) < 0 || d.toks[0].type != PJ_OBJECT) {
        log_rejected(p, "stop", "not a JSON object");
        return;
    }
    if (read_id(p, &d, "stop", id) != 0 || not_for_us(p, &d)) {
        return;
    }
    uint32_t attempt;
    if (read_attempt(&d, &attempt) != 0) {
        log_rejected(p, "stop", "attempt: expected a non-negative integer");
        return;
    }
    prop_slot_t *s = find_slot(p, id);
    if (s == NULL) {
        return;
    }
    /* A stop naming another attempt of this task than the one we run (the manager gave up on ours
     * while we were away, or ours is newer) is stale: not ours to act on. Either side unknown (0):
     * stop, as upstream does. The Python proplet applies the same rule. */
    if (attempt != 0 && s->attempt != 0 && attempt != s->attempt) {
        log_ignored(p, id, "stale_attempt");
        return;
    }
    con_line_t l;
    con_begin(&l, "task_stop");
    con_str(&l, "id", id);
    emit(p, PROP_LOG_INF, &l);
    if (s->state == SLOT_FETCHING) {
        refuse(p, id, "stopped");
        release(p, s);
        return;
    }
    if (!s->stopping) {
        s->stopping = 1;
        if (p->ops.cancel_task != NULL) {
            p->ops.cancel_task(p->ops.ctx, slot_index(p, s));
        }
    }
}

/* control/manager/discover: {"proplet_id": ID or ""} (empty = everyone). Ours → announce again. */
static void handle_discover(prop_t *p, const char *payload, size_t len, size_t total)
{
    pj_doc_t d;
    if (total >= PROP_PAYLOAD_MAX || len < total) {
        log_rejected(p, "discover", "payload larger than the receive buffer");
        return;
    }
    if (pj_parse(&d, payload, len, p->toks, PROP_TOK_MAX) < 0 || d.toks[0].type != PJ_OBJECT) {
        log_rejected(p, "discover", "not a JSON object");
        return;
    }
    int t = pj_find(&d, 0, "proplet_id");
    if (t >= 0 && !pj_is_null(&d, t)) {
        if (d.toks[t].type != PJ_STRING) {
            log_rejected(p, "discover", "proplet_id: expected a string");
            return;
        }
        if (d.toks[t].end > d.toks[t].start && !pj_str_eq(&d, t, p->cfg.proplet_id)) {
            return; /* asked of another proplet */
        }
    }
    if (p->conn == PROP_ONLINE) {
        send_discovery(p);
    }
}

void prop_message(prop_t *p, uint64_t now_ms, const char *topic, const char *payload, size_t len,
                  size_t total_len)
{
    if (p->conn == PROP_UNPROVISIONED || topic == NULL || payload == NULL) {
        return;
    }
    if (len > total_len) {
        total_len = len;
    }
    if (strcmp(topic, p->topics[T_START]) == 0) {
        handle_start(p, now_ms, payload, len, total_len);
    } else if (strcmp(topic, p->topics[T_STOP]) == 0) {
        if (total_len >= PROP_PAYLOAD_MAX || len < total_len) {
            log_rejected(p, "stop", "payload larger than the receive buffer");
            return;
        }
        handle_stop(p, payload, len);
    } else if (strcmp(topic, p->topics[T_REG_SRV]) == 0) {
        handle_chunk(p, now_ms, payload, len, total_len);
    } else if (strcmp(topic, p->topics[T_DISCOVER]) == 0) {
        handle_discover(p, payload, len, total_len);
    }
}

void prop_task_done(prop_t *p, uint64_t now_ms, int slot, const prop_outcome_t *o)
{
    if (slot < 0 || slot >= PROP_MAX_SLOTS || p->slots[slot].state != SLOT_RUNNING || o == NULL) {
        return;
    }
    prop_slot_t *s = &p->slots[slot];
    char results[PROP_MAX_RESULTS * 12 + 1];
    char error[PROP_ERR_MAX];
    int ok = o->ok && !s->stopping;
    results[0] = '\0';
    error[0] = '\0';
    if (ok) {
        size_t n = 0;
        uint8_t count = o->nresults > PROP_MAX_RESULTS ? PROP_MAX_RESULTS : o->nresults;
        for (uint8_t i = 0; i < count; i++) {
            n += (size_t)snprintf(results + n, sizeof results - n, i == 0 ? "%ld" : ",%ld",
                                  (long)o->results[i]);
        }
    } else {
        copy_str(error, sizeof error,
                 s->stopping ? "stopped" : (o->error != NULL && o->error[0] != '\0') ? o->error : "failed");
    }
    uint64_t dur = now_ms >= s->start_ms ? now_ms - s->start_ms : 0;
    con_line_t l;
    con_begin(&l, "task_end");
    con_str(&l, "id", s->id);
    con_int(&l, "ok", ok);
    if (ok) {
        con_quoted(&l, "result", results);
    } else {
        con_quoted(&l, "error", error);
    }
    con_int(&l, "duration_ms", (int64_t)dur);
    emit(p, ok ? PROP_LOG_INF : PROP_LOG_WRN, &l);
    send_result(p, s->id, ok ? results : "", ok ? NULL : error);
    release(p, s);
    p->tasks_done++;
    log_heap(p);
}

/* ---- timers ----------------------------------------------------------------------------------- */

uint64_t prop_next_deadline(const prop_t *p)
{
    uint64_t d = p->next_heap;
    if (p->conn != PROP_UNPROVISIONED && p->conn != PROP_ONLINE && p->conn_deadline < d) {
        d = p->conn_deadline;
    }
    if (p->conn == PROP_ONLINE && p->next_heartbeat < d) {
        d = p->next_heartbeat;
    }
    for (int i = 0; i < PROP_MAX_SLOTS; i++) {
        if (p->slots[i].state == SLOT_FETCHING && p->slots[i].deadline_ms < d) {
            d = p->slots[i].deadline_ms;
        }
    }
    return d;
}

void prop_tick(prop_t *p, uint64_t now)
{
    if (now >= p->next_heap) {
        log_heap(p);
        p->next_heap = now + p->cfg.heap_report_ms;
    }
    switch (p->conn) {
    case PROP_WIFI_CONNECTING:
        if (now >= p->conn_deadline) {
            prop_wifi_down(p, now, "timeout");
        }
        break;
    case PROP_WIFI_BACKOFF:
        if (now >= p->conn_deadline) {
            start_wifi(p, now);
        }
        break;
    case PROP_MQTT_CONNECTING:
        if (now >= p->conn_deadline) {
            if (p->ops.mqtt_close != NULL) {
                p->ops.mqtt_close(p->ops.ctx);
            }
            mqtt_lost(p, now, "connect_timeout");
        }
        break;
    case PROP_MQTT_BACKOFF:
        if (now >= p->conn_deadline) {
            start_mqtt(p, now);
        }
        break;
    case PROP_ONLINE:
        if (now >= p->next_heartbeat) {
            send_heartbeat(p);
            /* keep the cadence, but do not burst to catch up after a stall */
            p->next_heartbeat += p->cfg.heartbeat_ms;
            if (p->next_heartbeat <= now) {
                p->next_heartbeat = now + p->cfg.heartbeat_ms;
            }
        }
        break;
    case PROP_UNPROVISIONED:
        break;
    }
    for (int i = 0; i < PROP_MAX_SLOTS; i++) {
        prop_slot_t *s = &p->slots[i];
        if (s->state == SLOT_FETCHING && now >= s->deadline_ms) {
            char id[PROP_ID_MAX];
            copy_str(id, sizeof id, s->id);
            release(p, s);
            refuse(p, id, "image_url: timeout waiting for the module from the registry");
        }
    }
}

void prop_status_line(const prop_t *p, uint64_t now_ms, char *buf, size_t cap)
{
    prop_heap_t h;
    heap_stats(p, &h);
    snprintf(buf, cap, "status state=%s wifi=%s mqtt=%s tasks=%lu heap_free=%lu uptime_ms=%llu",
             prop_running(p) > 0 ? "running" : "idle", p->wifi_up ? "up" : "down",
             p->conn == PROP_ONLINE ? "connected" : "disconnected", (unsigned long)p->tasks_done,
             (unsigned long)h.free_bytes, (unsigned long long)now_ms);
}
