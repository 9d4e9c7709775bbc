/* MQTT 3.1.1 over Zephyr's MQTT library, serviced by its own thread: keepalive (PINGREQ) and input
 * keep flowing while Wasm runs on a worker thread.  Connect/close requests from the core are
 * handed to this thread (the core calls us with its lock held, so nothing here may block). */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include <zephyr/kernel.h>
#include <zephyr/net/mqtt.h>
#include <zephyr/net/socket.h>

#include "platform.h"

#define MQTT_STACK 6144
#define MQTT_PRIO 5
#define POLL_MS 100

static struct mqtt_client client;
static struct sockaddr_storage broker;
static uint8_t rx_buf[PROP_PAYLOAD_MAX + 256];
static uint8_t tx_buf[PROP_PAYLOAD_MAX + 256];
static char in_topic[PROP_TOPIC_MAX];
static char in_payload[PROP_PAYLOAD_MAX];

/* Copies of the connect parameters: the core's strings may change when it is re-provisioned. */
static struct {
    char host[128];
    uint16_t port;
    char client_id[PROP_ID_MAX];
    char password[PROP_ID_MAX];
    int has_password;
    uint16_t keepalive_s;
    char will_topic[PROP_TOPIC_MAX];
    char will_payload[160];
} req;
static struct mqtt_utf8 user_utf8, pass_utf8, will_msg;
static struct mqtt_topic will_topic;

static K_MUTEX_DEFINE(req_mutex);
static K_SEM_DEFINE(mqtt_wake, 0, 1);
static atomic_t want_connect;
static atomic_t want_close;
static bool session_open;   /* only touched by the MQTT thread */
static bool ignore_events;  /* set while we abort a session ourselves */
static int64_t last_rx_ms;
static atomic_t msg_id = ATOMIC_INIT(1);

static uint16_t next_id(void)
{
    uint16_t id = (uint16_t)atomic_inc(&msg_id);
    return id == 0 ? (uint16_t)atomic_inc(&msg_id) : id;
}

static void report_down(const char *reason)
{
    session_open = false;
    core_lock();
    prop_mqtt_disconnected(&g_core, core_now(), reason);
    core_unlock();
}

static void handle_publish(struct mqtt_client *c, const struct mqtt_publish_param *pub)
{
    size_t total = pub->message.payload.len;
    size_t take = MIN(total, sizeof(in_payload) - 1);
    size_t tlen = MIN(pub->message.topic.topic.size, sizeof(in_topic) - 1);
    memcpy(in_topic, pub->message.topic.topic.utf8, tlen);
    in_topic[tlen] = '\0';
    if (mqtt_readall_publish_payload(c, (uint8_t *)in_payload, take) != 0) {
        return;
    }
    /* Drain what does not fit: the core answers oversize starts from the prefix it got. */
    for (size_t left = total - take; left > 0;) {
        uint8_t sink[64];
        size_t n = MIN(left, sizeof(sink));
        if (mqtt_readall_publish_payload(c, sink, n) != 0) {
            return;
        }
        left -= n;
    }
    if (pub->message.topic.qos == MQTT_QOS_1_AT_LEAST_ONCE) {
        struct mqtt_puback_param ack = {.message_id = pub->message_id};
        (void)mqtt_publish_qos1_ack(c, &ack);
    }
    core_lock();
    prop_message(&g_core, core_now(), in_topic, in_payload, take, total);
    core_unlock();
}

static void on_event(struct mqtt_client *c, const struct mqtt_evt *evt)
{
    last_rx_ms = k_uptime_get();
    if (ignore_events) {
        return;
    }
    switch (evt->type) {
    case MQTT_EVT_CONNACK:
        if (evt->result != 0) {
            report_down("connack_refused");
        } else {
            core_lock();
            prop_mqtt_connected(&g_core, core_now());
            core_unlock();
        }
        break;
    case MQTT_EVT_DISCONNECT:
        report_down("closed");
        break;
    case MQTT_EVT_PUBLISH:
        handle_publish(c, &evt->param.publish);
        break;
    default:
        break; /* PUBACK, SUBACK, PINGRESP: last_rx_ms is all we need */
    }
}

static void abort_session(void)
{
    if (session_open) {
        ignore_events = true;
        (void)mqtt_abort(&client);
        ignore_events = false;
        session_open = false;
    }
}

static int resolve(void)
{
    struct zsock_addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    struct zsock_addrinfo *res = NULL;
    char port[8];
    snprintf(port, sizeof(port), "%u", (unsigned)req.port);
    if (zsock_getaddrinfo(req.host, port, &hints, &res) != 0 || res == NULL) {
        return -EHOSTUNREACH;
    }
    memcpy(&broker, res->ai_addr, MIN(sizeof(broker), (size_t)res->ai_addrlen));
    zsock_freeaddrinfo(res);
    return 0;
}

static void start_session(void)
{
    k_mutex_lock(&req_mutex, K_FOREVER);
    if (resolve() != 0) {
        k_mutex_unlock(&req_mutex);
        report_down("dns_failed");
        return;
    }
    mqtt_client_init(&client);
    client.broker = &broker;
    client.evt_cb = on_event;
    client.client_id.utf8 = (const uint8_t *)req.client_id;
    client.client_id.size = strlen(req.client_id);
    user_utf8.utf8 = (const uint8_t *)req.client_id;
    user_utf8.size = strlen(req.client_id);
    client.user_name = &user_utf8;
    pass_utf8.utf8 = (const uint8_t *)req.password;
    pass_utf8.size = strlen(req.password);
    client.password = req.has_password ? &pass_utf8 : NULL;
    will_topic.topic.utf8 = (const uint8_t *)req.will_topic;
    will_topic.topic.size = strlen(req.will_topic);
    will_topic.qos = MQTT_QOS_1_AT_LEAST_ONCE;
    will_msg.utf8 = (const uint8_t *)req.will_payload;
    will_msg.size = strlen(req.will_payload);
    client.will_topic = &will_topic;
    client.will_message = &will_msg;
    client.will_retain = 0;
    client.protocol_version = MQTT_VERSION_3_1_1;
    client.keepalive = req.keepalive_s;
    client.clean_session = 1;
    client.rx_buf = rx_buf;
    client.rx_buf_size = sizeof(rx_buf);
    client.tx_buf = tx_buf;
    client.tx_buf_size = sizeof(tx_buf);
    client.transport.type = MQTT_TRANSPORT_NON_SECURE;
    k_mutex_unlock(&req_mutex);

    int rc = mqtt_connect(&client); /* TCP connect + CONNECT; CONNACK arrives via mqtt_input */
    if (rc != 0) {
        report_down("connect_failed");
        return;
    }
    session_open = true;
    last_rx_ms = k_uptime_get();
}

static void mqtt_thread(void *a, void *b, void *c)
{
    ARG_UNUSED(a);
    ARG_UNUSED(b);
    ARG_UNUSED(c);
    for (;;) {
        if (atomic_cas(&want_close, 1, 0)) {
            abort_session();
        }
        if (atomic_cas(&want_connect, 1, 0)) {
            abort_session();
            start_session();
        }
        if (!session_open) {
            (void)k_sem_take(&mqtt_wake, K_FOREVER);
            continue;
        }
        struct zsock_pollfd pfd = {.fd = client.transport.tcp.sock, .events = ZSOCK_POLLIN};
        int wait = mqtt_keepalive_time_left(&client);
        int rc = zsock_poll(&pfd, 1, MIN(wait, POLL_MS));
        if (rc > 0 && (pfd.revents & ZSOCK_POLLIN)) {
            if (mqtt_input(&client) < 0 && session_open) {
                abort_session();
                report_down("input_error");
                continue;
            }
        }
        if (rc > 0 && (pfd.revents & (ZSOCK_POLLERR | ZSOCK_POLLHUP | ZSOCK_POLLNVAL)) && session_open) {
            abort_session();
            report_down("socket_closed");
            continue;
        }
        if (!session_open) {
            continue;
        }
        rc = mqtt_live(&client);
        if (rc != 0 && rc != -EAGAIN) {
            abort_session();
            report_down("ping_failed");
            continue;
        }
        /* Half-open link: nothing (not even PINGRESP) for 1.5 keepalives. */
        if (req.keepalive_s > 0 && k_uptime_get() - last_rx_ms > (int64_t)req.keepalive_s * 1500) {
            abort_session();
            report_down("keepalive_timeout");
        }
    }
}

K_THREAD_DEFINE(mqtt_tid, MQTT_STACK, mqtt_thread, NULL, NULL, NULL, MQTT_PRIO, 0, 0);

void platform_mqtt_connect(void *ctx, const prop_mqtt_params_t *p)
{
    ARG_UNUSED(ctx);
    k_mutex_lock(&req_mutex, K_FOREVER);
    strncpy(req.host, p->host, sizeof(req.host) - 1);
    req.port = p->port;
    strncpy(req.client_id, p->client_id, sizeof(req.client_id) - 1);
    req.has_password = p->password != NULL;
    strncpy(req.password, p->password != NULL ? p->password : "", sizeof(req.password) - 1);
    req.keepalive_s = p->keepalive_s;
    strncpy(req.will_topic, p->will_topic, sizeof(req.will_topic) - 1);
    strncpy(req.will_payload, p->will_payload, sizeof(req.will_payload) - 1);
    k_mutex_unlock(&req_mutex);
    atomic_set(&want_connect, 1);
    k_sem_give(&mqtt_wake);
}

void platform_mqtt_close(void *ctx)
{
    ARG_UNUSED(ctx);
    atomic_set(&want_close, 1);
    k_sem_give(&mqtt_wake);
}

int platform_mqtt_subscribe(void *ctx, const char *topic, int qos)
{
    ARG_UNUSED(ctx);
    struct mqtt_topic t = {
        .topic = {.utf8 = (const uint8_t *)topic, .size = strlen(topic)},
        .qos = (uint8_t)qos,
    };
    struct mqtt_subscription_list list = {.list = &t, .list_count = 1, .message_id = next_id()};
    return mqtt_subscribe(&client, &list);
}

int platform_mqtt_publish(void *ctx, const char *topic, const char *payload, size_t len, int qos)
{
    ARG_UNUSED(ctx);
    struct mqtt_publish_param p = {0};
    p.message.topic.topic.utf8 = (const uint8_t *)topic;
    p.message.topic.topic.size = strlen(topic);
    p.message.topic.qos = (uint8_t)qos;
    p.message.payload.data = (uint8_t *)payload;
    p.message.payload.len = len;
    p.message_id = next_id();
    return mqtt_publish(&client, &p);
}

int platform_mqtt_init(void) { return 0; }
