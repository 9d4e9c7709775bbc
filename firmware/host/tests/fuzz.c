/* Seeded fuzzer for everything that parses network bytes: random bytes, mutations and truncations
 * of valid payloads, fed to the JSON tokenizer, base64, the Wasm scanner and the whole proplet core.
 * Each input is copied into an exact-size heap block, so AddressSanitizer catches any over-read.
 * Usage: fuzz SEED ITERATIONS.  Prints "fuzz: N iterations, seed S, ok (...)". */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "b64.h"
#include "fake_ops.h"
#include "modules.h"
#include "pjson.h"
#include "proplet.h"
#include "wasm_info.h"

#define PREFIX "m/dom/c/chan/"

static uint64_t rng;

static uint32_t next(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng >> 11);
}

static const char *const corpus[] = {
    "{\"id\":\"t1\",\"name\":\"add\",\"state\":0,\"proplet_id\":\"dev-1\",\"broadcast\":false,"
    "\"inputs\":[3,\"4\",-1],\"cli_args\":null,\"env\":{\"A\":\"b\"},\"file\":\"" B64_ADD_MAIN "\"}",
    "{\"id\":\"t2\",\"file\":\"" B64_MAIN_MEM1 "\",\"inputs\":[1,2]}",
    "{\"id\":\"t3\",\"file\":\"" B64_IMPORTED_MEM2 "\"}",
    "{\"id\":\"t4\",\"image_url\":\"reg/app\"}",
    "{\"app_name\":\"reg/app\",\"chunk_idx\":0,\"total_chunks\":1,\"data\":\"" B64_MAIN_MEM1 "\"}",
    "{\"id\":\"t1\",\"name\":\"main\",\"state\":\"2\",\"proplet_id\":\"dev-1\",\"broadcast\":false}",
    "{\"id\":\"t2\"}",
    "[\"\\u00e9\\ud83d\\ude00\",1e5,-0.5,true,false,null,{\"a\":[[[]]]}]",
};
static const char *const topics[] = {PREFIX "control/manager/start", PREFIX "control/manager/stop",
                                     PREFIX "registry/server", PREFIX "control/manager/discover",
                                     PREFIX "control/other"};

static size_t mutate(char *buf, size_t cap, size_t len)
{
    int edits = 1 + (int)(next() % 8);
    for (int e = 0; e < edits; e++) {
        uint32_t op = next() % 6;
        size_t pos = len > 0 ? next() % len : 0;
        static const char interesting[] = "{}[]\",:\\0123456789-.eEtfnu ";
        switch (op) {
        case 0: /* flip a byte */
            if (len > 0) {
                buf[pos] = (char)next();
            }
            break;
        case 1: /* structural byte */
            if (len > 0) {
                buf[pos] = interesting[next() % (sizeof interesting - 1)];
            }
            break;
        case 2: /* insert */
            if (len + 1 < cap) {
                memmove(buf + pos + 1, buf + pos, len - pos);
                buf[pos] = interesting[next() % (sizeof interesting - 1)];
                len++;
            }
            break;
        case 3: /* delete */
            if (len > 0) {
                memmove(buf + pos, buf + pos + 1, len - pos - 1);
                len--;
            }
            break;
        case 4: /* truncate */
            len = pos;
            break;
        default: /* duplicate a span */
            if (len > 0) {
                size_t span = 1 + next() % 16;
                if (pos + span > len) {
                    span = len - pos;
                }
                if (len + span < cap) {
                    memmove(buf + pos + span, buf + pos, len - pos);
                    len += span;
                }
            }
            break;
        }
    }
    return len;
}

static void walk(const char *in, size_t len)
{
    pj_tok_t toks[64];
    pj_doc_t d;
    (void)pj_parse(&d, in, len, toks, 64);
    /* helpers must be safe on every token, complete or not */
    for (int i = 0; i < d.ntok; i++) {
        char out[48];
        int64_t v;
        (void)pj_str(&d, i, out, sizeof out);
        (void)pj_int(&d, i, &v);
        (void)pj_bool(&d, i);
        (void)pj_is_null(&d, i);
        (void)pj_find(&d, i, "id");
        (void)pj_elem(&d, i, (int)(next() % 4));
    }
    uint8_t bin[1024];
    int n = b64_decode(in, len, bin, sizeof bin);
    wasm_info_t info;
    (void)wasm_info_read((const uint8_t *)in, len, &info);
    if (n > 0) {
        (void)wasm_info_read(bin, (size_t)n, &info);
        (void)wasm_has_func_export(bin, (size_t)n, "main");
    }
}

static int check_invariants(const prop_t *p, const fake_t *f)
{
    if (p->reserved_bytes > p->cfg.wamr_budget_bytes || prop_running(p) > p->cfg.max_instances) {
        printf("invariant: reserved=%u running=%d\n", (unsigned)p->reserved_bytes, prop_running(p));
        return -1;
    }
    for (int i = 0; i < f->npub; i++) {
        pj_tok_t toks[64];
        pj_doc_t d;
        if (pj_parse(&d, f->pub_payload[i], strlen(f->pub_payload[i]), toks, 64) < 0) {
            printf("invariant: published invalid JSON: %s\n", f->pub_payload[i]);
            return -1;
        }
    }
    for (int i = 0; i < f->nlines; i++) {
        if (strchr(f->lines[i], '\n') != NULL || strchr(f->lines[i], '\r') != NULL) {
            printf("invariant: console line with a newline: %s\n", f->lines[i]);
            return -1;
        }
    }
    return 0;
}

int main(int argc, char **argv)
{
    unsigned long seed = argc > 1 ? strtoul(argv[1], NULL, 10) : 1;
    unsigned long iters = argc > 2 ? strtoul(argv[2], NULL, 10) : 10000;
    rng = 0x9E3779B97F4A7C15ull ^ (uint64_t)seed;
    static prop_t p;
    static fake_t f;
    prop_config_t cfg;
    prop_ops_t ops;
    const char *pargv[] = {"ssid=lab", "broker=10.0.0.2:1883", "proplet_id=dev-1", "domain=dom",
                           "channel=chan"};
    char err[96];
    prop_config_defaults(&cfg);
    if (prop_provision_parse(&cfg, 5, pargv, err, sizeof err) != 0) {
        printf("provision: %s\n", err);
        return 2;
    }
    fake_ops(&f, &ops);
    prop_boot(&p, &cfg, &ops, "power_on", 0);
    prop_wifi_up(&p, 0, "10.0.0.7", -50);
    prop_mqtt_connected(&p, 0);
    uint64_t now = 0;
    unsigned long runs = 0, pubs = 0;
    static char buf[4096];
    for (unsigned long it = 0; it < iters; it++) {
        size_t len;
        if (next() % 8 == 0) {
            len = next() % 1200;
            for (size_t i = 0; i < len; i++) {
                buf[i] = (char)next();
            }
        } else {
            const char *c = corpus[next() % (sizeof corpus / sizeof corpus[0])];
            len = strlen(c);
            memcpy(buf, c, len);
            if (next() % 4 != 0) {
                len = mutate(buf, sizeof buf, len);
            }
        }
        char *in = malloc(len > 0 ? len : 1); /* exact size: ASan sees any over-read */
        if (in == NULL) {
            return 2;
        }
        memcpy(in, buf, len);
        walk(in, len);
        size_t total = len;
        size_t given = len;
        if (next() % 16 == 0) {
            total = len + 1 + next() % 4096; /* the platform's buffer cut a longer message */
        }
        prop_message(&p, now, topics[next() % 5], in, given, total);
        free(in);
        now += next() % 3000;
        uint32_t ev = next() % 32;
        if (ev == 0) {
            int32_t res[3] = {1, -2, (int32_t)next()};
            prop_outcome_t o = {(int)(next() % 2), res, (uint8_t)(next() % 4), "trap"};
            prop_task_done(&p, now, (int)(next() % (PROP_MAX_SLOTS + 2)) - 1, &o);
        } else if (ev == 1) {
            prop_mqtt_disconnected(&p, now, "fuzz");
        } else if (ev == 2) {
            prop_mqtt_connected(&p, now);
        } else if (ev == 3) {
            prop_wifi_down(&p, now, "fuzz");
        } else if (ev == 4) {
            prop_wifi_up(&p, now, "10.0.0.7", -40);
        }
        if (prop_next_deadline(&p) <= now) {
            prop_tick(&p, now);
        }
        if (check_invariants(&p, &f) != 0) {
            printf("fuzz: FAILED at iteration %lu, seed %lu\n", it, seed);
            return 1;
        }
        runs += (unsigned long)f.nruns;
        pubs += (unsigned long)f.npub;
        fake_clear(&f);
    }
    /* the counts show the mutations reach past the parser into task admission */
    printf("fuzz: %lu iterations, seed %lu, ok (tasks started %lu, messages published %lu)\n", iters, seed,
           runs, pubs);
    return 0;
}
