/* Unit tests of the proplet state machine against recording fake ops (no I/O, explicit now_ms). */
#include <stdint.h>
#include <stdlib.h>

#include "fake_ops.h"
#include "modules.h"
#include "proplet.h"
#include "tiny_test.h"

#define PREFIX "m/dom/c/chan/"

static prop_t P;
static fake_t F;

static void provisioned_cfg(prop_config_t *cfg)
{
    prop_config_defaults(cfg);
    const char *argv[] = {"ssid=lab", "psk=secret", "broker=10.0.0.2:1884", "proplet_id=dev-1",
                          "api_key=k", "domain=dom", "channel=chan"};
    char err[96];
    int rc = prop_provision_parse(cfg, 7, argv, err, sizeof err);
    CHECK_INT(rc, 0);
}

static void boot(uint64_t now)
{
    prop_config_t cfg;
    prop_ops_t ops;
    provisioned_cfg(&cfg);
    fake_ops(&F, &ops);
    prop_boot(&P, &cfg, &ops, "power_on", now);
}

static void online(uint64_t now)
{
    boot(now);
    prop_wifi_up(&P, now, "10.0.0.7", -55);
    prop_mqtt_connected(&P, now);
    fake_clear(&F);
}

static void start(uint64_t now, const char *json)
{
    prop_message(&P, now, PREFIX "control/manager/start", json, strlen(json), strlen(json));
}

static void stop(uint64_t now, const char *json)
{
    prop_message(&P, now, PREFIX "control/manager/stop", json, strlen(json), strlen(json));
}

static const char *last_result(void)
{
    int i = fake_last_pub(&F, "control/proplet/results");
    return i < 0 ? NULL : F.pub_payload[i];
}

static void boot_without_credentials_waits_for_provisioning(void)
{
    prop_config_t cfg;
    prop_ops_t ops;
    prop_config_defaults(&cfg);
    fake_ops(&F, &ops);
    prop_boot(&P, &cfg, &ops, "power_on", 0);
    CHECK_STR(F.lines[0], "boot version=0.1.0 reset=power_on board=esp32s3_devkitc");
    CHECK_INT(F.wifi_connects, 0);
    CHECK_INT(fake_find_line(&F, "provisioned proplet_id"), -1);
    char status[160];
    prop_status_line(&P, 1234, status, sizeof status);
    CHECK_STR(status, "status state=idle wifi=down mqtt=disconnected tasks=0 heap_free=150000 uptime_ms=1234");
}

static void boot_connects_wifi_then_mqtt_with_lwt(void)
{
    boot(0);
    CHECK_STR(F.lines[1], "provisioned proplet_id=dev-1 broker=10.0.0.2:1884 domain=dom channel=chan");
    CHECK_INT(F.wifi_connects, 1);
    CHECK_INT(F.mqtt_connects, 0);
    prop_wifi_up(&P, 100, "10.0.0.7", -55);
    CHECK(fake_find_line(&F, "wifi_up ip=10.0.0.7 rssi=-55") >= 0);
    CHECK_INT(F.mqtt_connects, 1);
    CHECK_STR(F.last_params.client_id, "dev-1");
    CHECK_STR(F.last_params.username, "dev-1");
    CHECK_STR(F.last_params.password, "k");
    CHECK_STR(F.last_params.host, "10.0.0.2");
    CHECK_INT(F.last_params.port, 1884);
    CHECK_INT(F.last_params.keepalive_s, 30);
    CHECK_STR(F.last_params.will_topic, PREFIX "control/proplet/alive");
    CHECK_STR(F.last_will, "{\"status\":\"offline\",\"proplet_id\":\"dev-1\",\"namespace\":\"embedded\"}");
}

static void connect_subscribes_announces_and_beats_at_once(void)
{
    boot(0);
    prop_wifi_up(&P, 0, "10.0.0.7", -60);
    prop_mqtt_connected(&P, 500);
    CHECK(fake_find_line(&F, "mqtt_connected broker=10.0.0.2:1884") >= 0);
    CHECK_INT(F.nsubs, 4);
    CHECK_STR(F.subs[0], PREFIX "control/manager/start");
    CHECK_STR(F.subs[1], PREFIX "control/manager/stop");
    CHECK_STR(F.subs[2], PREFIX "registry/server");
    CHECK_STR(F.subs[3], PREFIX "control/manager/discover");
    int d = fake_last_pub(&F, "control/proplet/create");
    CHECK(d >= 0);
    if (d >= 0) {
        const char *s = F.pub_payload[d];
        CHECK_CONTAINS(s, "{\"proplet_id\":\"dev-1\",\"namespace\":\"embedded\",\"metadata\":{");
        CHECK_CONTAINS(s, "\"os\":\"zephyr\"");
        CHECK_CONTAINS(s, "\"cpu_arch\":\"xtensa\"");
        CHECK_CONTAINS(s, "\"wasm_runtime\":\"wamr\"");
        CHECK_CONTAINS(s, "\"ip\":\"10.0.0.7\"");
        CHECK_CONTAINS(s, "\"total_memory_bytes\":524288");
        CHECK_CONTAINS(s, "\"free_memory_bytes\":196608");
        CHECK_CONTAINS(s, "\"max_instances\":2");
    }
    CHECK(fake_find_line(&F, "discovery_sent proplet_id=dev-1") >= 0);
    int h = fake_last_pub(&F, "control/proplet/alive");
    CHECK(h >= 0);
    if (h >= 0) {
        CHECK_STR(F.pub_payload[h],
                  "{\"status\":\"alive\",\"proplet_id\":\"dev-1\",\"namespace\":\"embedded\",\"running\":[]}");
    }
    CHECK(fake_find_line(&F, "heartbeat seq=1") >= 0);
    CHECK_INT(prop_next_deadline(&P), 10000); /* the heap report; the next beat is at 10500 */
}

static void heartbeats_keep_their_cadence_while_a_task_runs(void)
{
    online(0);
    start(100, "{\"id\":\"t1\",\"name\":\"main\",\"file\":\"" B64_ADD_MAIN "\"}");
    CHECK_INT(F.nruns, 1);
    CHECK_INT(prop_running(&P), 1);
    /* a long module: 60 s of ticks at the deadlines the core asks for */
    uint64_t now = 100;
    while (now < 60000) {
        now = prop_next_deadline(&P);
        prop_tick(&P, now);
    }
    CHECK_INT(fake_count_pub(&F, "control/proplet/alive"), 6);
    {
        int h = fake_last_pub(&F, "control/proplet/alive");
        CHECK(h >= 0);
        if (h >= 0) {
            CHECK_CONTAINS(F.pub_payload[h], "\"running\":[\"t1\"]");
        }
    }
    CHECK(fake_find_line(&F, "heartbeat seq=7") >= 0);
    CHECK(fake_find_line(&F, "heap free=150000 used=50000 max_used=60000") >= 0);
    char status[160];
    prop_status_line(&P, now, status, sizeof status);
    CHECK_CONTAINS(status, "status state=running wifi=up mqtt=connected tasks=0");
}

static void disconnect_reconnects_with_capped_jittered_backoff(void)
{
    online(0);
    F.rand_value = 0; /* lowest jitter: half the nominal delay */
    int connects = F.mqtt_connects;
    prop_mqtt_disconnected(&P, 1000, "broker_closed");
    CHECK(fake_find_line(&F, "mqtt_disconnected reason=broker_closed") >= 0);
    CHECK(fake_find_line(&F, "mqtt_reconnect attempt=1 backoff_ms=500") >= 0);
    prop_tick(&P, 1499);
    CHECK_INT(F.mqtt_connects, connects);
    prop_tick(&P, 1500);
    CHECK_INT(F.mqtt_connects, connects + 1);
    /* keep failing: delays double up to the cap */
    uint64_t now = 1500;
    uint64_t last = 0;
    for (int i = 2; i <= 10; i++) {
        uint64_t lost = now;
        fake_clear(&F);
        connects = F.mqtt_connects;
        prop_mqtt_disconnected(&P, now, "connect_failed");
        while (F.mqtt_connects == connects) {
            now = prop_next_deadline(&P);
            prop_tick(&P, now);
        }
        last = now - lost;
    }
    CHECK_INT(last, 30000); /* cap 60000, jittered down to half */
    CHECK(fake_find_line(&F, "mqtt_reconnect attempt=10 backoff_ms=30000") >= 0);
    prop_mqtt_connected(&P, now);
    CHECK_INT(F.nsubs, 4); /* subscriptions renewed on the new session */
    prop_mqtt_disconnected(&P, now + 5, "keepalive");
    CHECK(fake_find_line(&F, "mqtt_reconnect attempt=1 backoff_ms=500") >= 0);
}

static void backoff_stays_within_bounds(void)
{
    prop_config_t cfg;
    prop_config_defaults(&cfg);
    srand(7);
    for (uint32_t attempt = 1; attempt < 200; attempt++) {
        for (int k = 0; k < 50; k++) {
            uint32_t r = (uint32_t)rand() ^ ((uint32_t)rand() << 16);
            uint32_t d = prop_backoff_ms(&cfg, attempt, r);
            uint64_t nominal = attempt >= 8 ? 60000u : 1000u << (attempt - 1);
            if (nominal > 60000u) {
                nominal = 60000u;
            }
            CHECK(d >= nominal / 2 && d <= nominal);
        }
    }
    CHECK_INT(prop_backoff_ms(&cfg, 1, 0xFFFFFFFFu) <= 1000, 1);
}

static void connect_timeout_abandons_the_attempt(void)
{
    boot(0);
    prop_wifi_up(&P, 0, "10.0.0.7", -60);
    prop_tick(&P, 15000);
    CHECK_INT(F.mqtt_closes, 1);
    CHECK(fake_find_line(&F, "mqtt_disconnected reason=connect_timeout") >= 0);
    prop_mqtt_connected(&P, 15001); /* late CONNACK of the abandoned session */
    CHECK_INT(fake_find_line(&F, "mqtt_connected"), -1);
}

static void wifi_loss_drops_mqtt_and_reassociates(void)
{
    online(0);
    prop_wifi_down(&P, 2000, "beacon_timeout");
    CHECK(fake_find_line(&F, "wifi_down reason=beacon_timeout") >= 0);
    CHECK(fake_find_line(&F, "mqtt_disconnected reason=wifi_down") >= 0);
    CHECK_INT(F.mqtt_closes, 1);
    int before = F.wifi_connects;
    prop_tick(&P, prop_next_deadline(&P));
    CHECK_INT(F.wifi_connects, before + 1);
    prop_wifi_up(&P, 4000, "10.0.0.8", -70);
    CHECK_INT(F.mqtt_connects, 2);
    prop_mqtt_connected(&P, 4100);
    CHECK(fake_find_line(&F, "discovery_sent") >= 0);
    /* heartbeats while offline are not sent and not counted */
    CHECK(fake_find_line(&F, "heartbeat seq=2") >= 0);
}

static void start_runs_targeted_and_untargeted_tasks(void)
{
    online(0);
    start(10, "{\"id\":\"t1\",\"name\":\"add\",\"state\":0,\"proplet_id\":\"dev-1\",\"broadcast\":false,"
              "\"inputs\":[3,\"4\",-1,4294967295],\"cli_args\":null,\"file\":\"" B64_ADD_MAIN "\"}");
    CHECK_INT(F.nruns, 1);
    CHECK_STR(F.run_entry[0], "add");
    CHECK_INT(F.runs[0].nargs, 4);
    CHECK_INT(F.runs[0].args[0], 3);
    CHECK_INT(F.runs[0].args[1], 4);
    CHECK_INT(F.runs[0].args[2], -1);
    CHECK_INT(F.runs[0].args[3], -1);
    CHECK_INT(F.runs[0].wasm_len, LEN_ADD_MAIN);
    CHECK_INT(F.runs[0].wasm_stack_bytes, 16384);
    CHECK(fake_find_line(&F, "task_start id=t1 name=add inputs=4") >= 0);
    /* no proplet_id: ours; an unexported name falls back to main */
    start(20, "{\"id\":\"t2\",\"name\":\"nope\",\"file\":\"" B64_ADD_MAIN "\"}");
    CHECK_INT(F.nruns, 2);
    CHECK_STR(F.run_entry[1], "main");
}

static void start_for_another_proplet_is_ignored(void)
{
    online(0);
    start(10, "{\"id\":\"t9\",\"name\":\"main\",\"proplet_id\":\"dev-2\",\"file\":\"" B64_ADD_MAIN "\"}");
    CHECK_INT(F.nruns, 0);
    CHECK(fake_find_line(&F, "task_ignored id=t9 reason=not_target") >= 0);
    CHECK_INT(fake_count_pub(&F, "control/proplet/results"), 0);
    /* a broadcast reaches everybody, as for the Rust proplet */
    start(10, "{\"id\":\"t10\",\"proplet_id\":\"dev-2\",\"broadcast\":true,\"file\":\"" B64_ADD_MAIN "\"}");
    CHECK_INT(F.nruns, 1);
}

static void finished_task_publishes_result_with_proplet_id(void)
{
    online(0);
    start(100, "{\"id\":\"t1\",\"name\":\"main\",\"file\":\"" B64_ADD_MAIN "\"}");
    int32_t out[2] = {1, -2};
    prop_outcome_t o = {1, out, 2, NULL};
    prop_task_done(&P, 350, F.runs[0].slot, &o);
    CHECK_STR(last_result(), "{\"task_id\":\"t1\",\"proplet_id\":\"dev-1\",\"results\":\"1,-2\"}");
    CHECK(fake_find_line(&F, "task_end id=t1 ok=1 result=\"1,-2\" duration_ms=250") >= 0);
    CHECK(fake_find_line(&F, "heap free=") > fake_find_line(&F, "task_end"));
    CHECK_INT(prop_running(&P), 0);
    /* a second completion for the same slot is stale and changes nothing */
    int npub = F.npub;
    prop_task_done(&P, 400, F.runs[0].slot, &o);
    CHECK_INT(F.npub, npub);
    char status[160];
    prop_status_line(&P, 500, status, sizeof status);
    CHECK_CONTAINS(status, "state=idle wifi=up mqtt=connected tasks=1 heap_free=150000 uptime_ms=500");
}

static void failed_task_publishes_error(void)
{
    online(0);
    start(0, "{\"id\":\"t1\",\"file\":\"" B64_ADD_MAIN "\"}");
    prop_outcome_t o = {0, NULL, 0, "Exception: integer divide by zero"};
    prop_task_done(&P, 5, 0, &o);
    CHECK_STR(last_result(), "{\"task_id\":\"t1\",\"proplet_id\":\"dev-1\",\"results\":\"\","
                             "\"error\":\"Exception: integer divide by zero\"}");
    CHECK(fake_find_line(&F, "task_end id=t1 ok=0 error=\"Exception: integer divide by zero\" duration_ms=5") >= 0);
}

static void manager_stop_with_only_id_cancels_the_task(void)
{
    online(0);
    start(0, "{\"id\":\"t1\",\"file\":\"" B64_ADD_MAIN "\"}");
    stop(10, "{\"id\":\"t1\",\"broadcast\":false,\"proplet_id\":\"dev-1\"}");
    CHECK_INT(F.ncancels, 1);
    CHECK_INT(F.cancels[0], F.runs[0].slot);
    CHECK(fake_find_line(&F, "task_stop id=t1") >= 0);
    prop_outcome_t o = {0, NULL, 0, "terminated by user"};
    prop_task_done(&P, 20, 0, &o);
    CHECK_CONTAINS(last_result(), "\"error\":\"stopped\"");
    /* our manager's full stop payload, and a bare {"id"} */
    start(30, "{\"id\":\"t2\",\"file\":\"" B64_ADD_MAIN "\"}");
    stop(40, "{\"id\":\"t2\",\"name\":\"main\",\"state\":\"2\",\"proplet_id\":\"dev-1\",\"broadcast\":false}");
    CHECK_INT(F.ncancels, 2);
    start(50, "{\"id\":\"t3\",\"file\":\"" B64_ADD_MAIN "\"}");
    stop(60, "{\"id\":\"t3\"}");
    CHECK_INT(F.ncancels, 3);
}

static void stop_for_another_proplet_or_unknown_task_is_ignored(void)
{
    online(0);
    start(0, "{\"id\":\"t1\",\"file\":\"" B64_ADD_MAIN "\"}");
    stop(10, "{\"id\":\"t1\",\"proplet_id\":\"dev-2\"}");
    stop(10, "{\"id\":\"zz\"}");
    stop(10, "{\"name\":\"x\"}");
    stop(10, "[1,2");
    CHECK_INT(F.ncancels, 0);
    CHECK(fake_find_line(&F, "message_rejected topic=stop reason=\"missing id\"") >= 0);
}

static void stop_of_another_attempt_is_ignored_as_stale(void)
{
    online(0);
    start(0, "{\"id\":\"t1\",\"file\":\"" B64_ADD_MAIN "\",\"attempt\":2}");
    CHECK_INT(F.nruns, 1);
    /* the manager stopping attempt 1 (superseded while we were away) must not touch attempt 2 */
    stop(10, "{\"id\":\"t1\",\"proplet_id\":\"dev-1\",\"broadcast\":false,\"attempt\":1}");
    CHECK_INT(F.ncancels, 0);
    CHECK(fake_find_line(&F, "task_ignored id=t1 reason=stale_attempt") >= 0);
    CHECK_INT(fake_find_line(&F, "task_stop id=t1"), -1);
    stop(20, "{\"id\":\"t1\",\"attempt\":\"2\"}"); /* not an integer: rejected, naming the field */
    CHECK_INT(F.ncancels, 0);
    CHECK(fake_find_line(&F, "message_rejected topic=stop reason=\"attempt: expected a non-negative integer\"") >= 0);
    stop(30, "{\"id\":\"t1\",\"proplet_id\":\"dev-1\",\"attempt\":2}"); /* the attempt we run */
    CHECK_INT(F.ncancels, 1);
    CHECK(fake_find_line(&F, "task_stop id=t1") >= 0);
    /* a start without attempt (an upstream manager): any stop stops it */
    start(40, "{\"id\":\"t2\",\"file\":\"" B64_ADD_MAIN "\"}");
    stop(50, "{\"id\":\"t2\",\"attempt\":7}");
    CHECK_INT(F.ncancels, 2);
    prop_outcome_t o = {0, NULL, 0, "terminated by user"};
    prop_task_done(&P, 55, F.runs[0].slot, &o);
    prop_task_done(&P, 55, F.runs[1].slot, &o);
    /* a start whose attempt is not a non-negative integer gets an error result naming the field */
    start(60, "{\"id\":\"t3\",\"file\":\"" B64_ADD_MAIN "\",\"attempt\":-1}");
    CHECK_CONTAINS(last_result(), "\"task_id\":\"t3\"");
    CHECK_CONTAINS(last_result(), "\"error\":\"attempt: expected a non-negative integer\"");
}

static void discover_request_is_answered_with_a_fresh_discovery(void)
{
    online(0);
    const char *topic = PREFIX "control/manager/discover";
    const char *everyone = "{\"proplet_id\":\"\"}";
    const char *mine = "{\"proplet_id\":\"dev-1\"}";
    const char *other = "{\"proplet_id\":\"dev-2\"}";
    prop_message(&P, 10, topic, other, strlen(other), strlen(other));
    CHECK_INT(fake_count_pub(&F, "control/proplet/create"), 0);
    prop_message(&P, 20, topic, mine, strlen(mine), strlen(mine));
    CHECK_INT(fake_count_pub(&F, "control/proplet/create"), 1);
    prop_message(&P, 30, topic, everyone, strlen(everyone), strlen(everyone));
    CHECK_INT(fake_count_pub(&F, "control/proplet/create"), 2);
    int d = fake_last_pub(&F, "control/proplet/create");
    CHECK(d >= 0);
    if (d >= 0) {
        CHECK_CONTAINS(F.pub_payload[d], "{\"proplet_id\":\"dev-1\",\"namespace\":\"embedded\",\"metadata\":{");
        CHECK_CONTAINS(F.pub_payload[d], "\"max_instances\":2");
    }
    CHECK_INT(fake_count_lines(&F, "discovery_sent proplet_id=dev-1"), 2);
    prop_message(&P, 40, topic, "[1", 2, 2);
    CHECK(fake_find_line(&F, "message_rejected topic=discover reason=\"not a JSON object\"") >= 0);
    CHECK_INT(fake_count_pub(&F, "control/proplet/create"), 2);
}

static void oversize_start_gets_an_error_result(void)
{
    online(0);
    char big[2048];
    int n = snprintf(big, sizeof big, "{\"id\":\"t-big\",\"name\":\"main\",\"file\":\"");
    memset(big + n, 'A', 1500);
    strcpy(big + n + 1500, "\"}");
    size_t total = strlen(big);
    /* the platform hands over what fits in its buffer, and the real length */
    prop_message(&P, 0, PREFIX "control/manager/start", big, PROP_PAYLOAD_MAX - 1, total);
    CHECK_INT(F.nruns, 0);
    char want[128];
    snprintf(want, sizeof want, "start payload too large: %u bytes, limit 1023", (unsigned)total);
    CHECK_CONTAINS(last_result(), want);
    CHECK_CONTAINS(last_result(), "\"task_id\":\"t-big\"");
}

static void memory_admission_refuses_with_oom(void)
{
    online(0);
    /* budget 192 KiB; 3 pages = 192 KiB of linear memory alone */
    start(0, "{\"id\":\"t-oom\",\"file\":\"" B64_MAIN_MEM3 "\"}");
    CHECK_INT(F.nruns, 0);
    unsigned need = 42 + 3 * 65536 + 16384 + 16384 + 8192;
    char want[128];
    snprintf(want, sizeof want, "oom id=t-oom need=%u free=196608", need);
    CHECK(fake_find_line(&F, want) >= 0);
    snprintf(want, sizeof want, "\"error\":\"out of memory: need %u bytes, free 196608\"", need);
    CHECK_CONTAINS(last_result(), want);
    /* two 1-page instances fit (2 x 106538), a third would not even if a slot were free */
    start(1, "{\"id\":\"a\",\"file\":\"" B64_MAIN_MEM1 "\"}");
    CHECK_INT(F.nruns, 1);
    start(2, "{\"id\":\"b\",\"file\":\"" B64_MAIN_MEM1 "\"}");
    CHECK_INT(F.nruns, 1);
    CHECK_CONTAINS(last_result(), "out of memory: need 106538 bytes, free 90070");
    /* finishing the first frees its share */
    prop_outcome_t o = {1, NULL, 0, NULL};
    prop_task_done(&P, 3, F.runs[0].slot, &o);
    start(4, "{\"id\":\"b\",\"file\":\"" B64_MAIN_MEM1 "\"}");
    CHECK_INT(F.nruns, 2);
}

static void instance_limit_and_duplicates(void)
{
    online(0);
    start(0, "{\"id\":\"a\",\"file\":\"" B64_ADD_MAIN "\"}");
    start(0, "{\"id\":\"a\",\"file\":\"" B64_ADD_MAIN "\"}");
    CHECK(fake_find_line(&F, "task_ignored id=a reason=duplicate") >= 0);
    start(0, "{\"id\":\"b\",\"file\":\"" B64_ADD_MAIN "\"}");
    start(0, "{\"id\":\"c\",\"file\":\"" B64_ADD_MAIN "\"}");
    CHECK_INT(F.nruns, 2);
    CHECK_CONTAINS(last_result(), "\"task_id\":\"c\"");
    CHECK_CONTAINS(last_result(), "busy: 2 of 2 instances in use");
}

static void bad_starts_get_errors_naming_the_field(void)
{
    online(0);
    start(0, "{\"id\":\"t1\",\"inputs\":[1,\"x\"],\"file\":\"" B64_ADD_MAIN "\"}");
    CHECK_CONTAINS(last_result(), "inputs[1]: expected an integer in the i32 range");
    start(0, "{\"id\":\"t2\",\"inputs\":[1.5],\"file\":\"" B64_ADD_MAIN "\"}");
    CHECK_CONTAINS(last_result(), "inputs[0]");
    start(0, "{\"id\":\"t3\",\"inputs\":[4294967296],\"file\":\"" B64_ADD_MAIN "\"}");
    CHECK_CONTAINS(last_result(), "inputs[0]");
    start(0, "{\"id\":\"t4\",\"inputs\":[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17],\"file\":\"" B64_ADD_MAIN "\"}");
    CHECK_CONTAINS(last_result(), "inputs: 17 values, at most 16");
    start(0, "{\"id\":\"t5\",\"file\":\"not base64!\"}");
    CHECK_CONTAINS(last_result(), "file: invalid base64");
    start(0, "{\"id\":\"t6\",\"name\":\"main\"}");
    CHECK_CONTAINS(last_result(), "either file or image_url must be provided");
    start(0, "{\"id\":\"t7\",\"file\":\"aGVsbG8gd29ybGQ=\"}");
    CHECK_CONTAINS(last_result(), "invalid module: not a wasm binary");
    start(0, "{\"id\":\"t8\",\"name\":\"run\",\"file\":\"" B64_COMPUTE_ONLY "\"}");
    CHECK_CONTAINS(last_result(), "module exports neither 'run' nor 'main'");
    start(0, "{\"id\":\"t9\",\"inputs\":\"5\",\"file\":\"" B64_ADD_MAIN "\"}");
    CHECK_CONTAINS(last_result(), "inputs: expected an array of integers");
    CHECK_INT(F.nruns, 0);
    /* without an id nobody can be answered: logged, not published */
    int npub = F.npub;
    start(0, "{\"name\":\"main\"}");
    start(0, "{\"id\":42}");
    start(0, "{\"id\":\"x\",");
    start(0, "");
    CHECK_INT(F.npub, npub);
    CHECK(fake_find_line(&F, "message_rejected topic=start reason=\"not a JSON object\"") >= 0);
    CHECK(fake_find_line(&F, "message_rejected topic=start reason=\"id: expected a string of at most 63 bytes\"") >= 0);
}

static void results_survive_a_disconnect(void)
{
    online(0);
    start(0, "{\"id\":\"t1\",\"file\":\"" B64_ADD_MAIN "\"}");
    prop_mqtt_disconnected(&P, 10, "keepalive");
    int32_t r = 7;
    prop_outcome_t o = {1, &r, 1, NULL};
    prop_task_done(&P, 20, 0, &o);
    CHECK_INT(fake_count_pub(&F, "control/proplet/results"), 0);
    prop_tick(&P, prop_next_deadline(&P));
    prop_mqtt_connected(&P, 3000);
    CHECK_STR(last_result(), "{\"task_id\":\"t1\",\"proplet_id\":\"dev-1\",\"results\":\"7\"}");
}

static void image_url_fetches_one_chunk_from_the_registry(void)
{
    online(0);
    start(0, "{\"id\":\"t1\",\"name\":\"main\",\"image_url\":\"reg/app:1\"}");
    int q = fake_last_pub(&F, "registry/proplet");
    CHECK(q >= 0);
    if (q >= 0) {
        CHECK_STR(F.pub_payload[q], "{\"app_name\":\"reg/app:1\"}");
    }
    const char *other = "{\"app_name\":\"x\",\"chunk_idx\":0,\"total_chunks\":1,\"data\":\"" B64_ADD_MAIN "\"}";
    prop_message(&P, 1, PREFIX "registry/server", other, strlen(other), strlen(other));
    CHECK_INT(F.nruns, 0);
    const char *mine = "{\"app_name\":\"reg/app:1\",\"chunk_idx\":0,\"total_chunks\":1,\"data\":\"" B64_ADD_MAIN "\"}";
    prop_message(&P, 2, PREFIX "registry/server", mine, strlen(mine), strlen(mine));
    CHECK_INT(F.nruns, 1);
    start(3, "{\"id\":\"t2\",\"image_url\":\"reg/big\"}");
    const char *multi = "{\"app_name\":\"reg/big\",\"chunk_idx\":0,\"total_chunks\":3,\"data\":\"AAAA\"}";
    prop_message(&P, 4, PREFIX "registry/server", multi, strlen(multi), strlen(multi));
    CHECK_CONTAINS(last_result(), "module arrives in 3 chunks, the device takes 1");
    start(5, "{\"id\":\"t3\",\"image_url\":\"reg/never\"}");
    prop_tick(&P, 60005);
    CHECK_CONTAINS(last_result(), "timeout waiting for the module");
}

static void provisioning_validates_each_key(void)
{
    prop_config_t cfg;
    char err[96];
    prop_config_defaults(&cfg);
    const char *missing[] = {"ssid=a", "broker=h:1", "proplet_id=p", "domain=d"};
    CHECK_INT(prop_provision_parse(&cfg, 4, missing, err, sizeof err), -1);
    CHECK_STR(err, "missing channel=");
    const char *badport[] = {"ssid=a", "broker=h:70000", "proplet_id=p", "domain=d", "channel=c"};
    CHECK_INT(prop_provision_parse(&cfg, 5, badport, err, sizeof err), -1);
    CHECK_STR(err, "broker: port must be 1-65535, got '70000'");
    const char *noport[] = {"broker=host"};
    CHECK_INT(prop_provision_parse(&cfg, 1, noport, err, sizeof err), -1);
    CHECK_STR(err, "broker: expected HOST:PORT, got 'host'");
    const char *unknown[] = {"colour=red"};
    CHECK_INT(prop_provision_parse(&cfg, 1, unknown, err, sizeof err), -1);
    CHECK_STR(err, "unknown key 'colour'");
    const char *wild[] = {"domain=a/b"};
    CHECK_INT(prop_provision_parse(&cfg, 1, wild, err, sizeof err), -1);
    CHECK_STR(err, "domain: must not contain '/', '+' or '#'");
    CHECK(!prop_config_provisioned(&cfg)); /* failures leave the config as it was */
    online(0);
    provisioned_cfg(&cfg);
    strcpy(cfg.proplet_id, "dev-9");
    prop_reprovision(&P, &cfg, 100);
    CHECK_INT(F.mqtt_closes, 1);
    CHECK(fake_find_line(&F, "provisioned proplet_id=dev-9") >= 0);
    prop_wifi_up(&P, 200, "10.0.0.7", -50);
    CHECK_STR(F.last_params.client_id, "dev-9");
}

void run_proplet_tests(void)
{
    RUN(boot_without_credentials_waits_for_provisioning);
    RUN(boot_connects_wifi_then_mqtt_with_lwt);
    RUN(connect_subscribes_announces_and_beats_at_once);
    RUN(heartbeats_keep_their_cadence_while_a_task_runs);
    RUN(disconnect_reconnects_with_capped_jittered_backoff);
    RUN(backoff_stays_within_bounds);
    RUN(connect_timeout_abandons_the_attempt);
    RUN(wifi_loss_drops_mqtt_and_reassociates);
    RUN(start_runs_targeted_and_untargeted_tasks);
    RUN(start_for_another_proplet_is_ignored);
    RUN(finished_task_publishes_result_with_proplet_id);
    RUN(failed_task_publishes_error);
    RUN(manager_stop_with_only_id_cancels_the_task);
    RUN(stop_for_another_proplet_or_unknown_task_is_ignored);
    RUN(stop_of_another_attempt_is_ignored_as_stale);
    RUN(discover_request_is_answered_with_a_fresh_discovery);
    RUN(oversize_start_gets_an_error_result);
    RUN(memory_admission_refuses_with_oom);
    RUN(instance_limit_and_duplicates);
    RUN(bad_starts_get_errors_naming_the_field);
    RUN(results_survive_a_disconnect);
    RUN(image_url_fetches_one_chunk_from_the_registry);
    RUN(provisioning_validates_each_key);
}
