/* Unit tests of the pure helpers: JSON tokenizer/writer, base64, Wasm scanner, console lines. */
#include <stdint.h>

#include "b64.h"
#include "console.h"
#include "modules.h"
#include "pjson.h"
#include "tiny_test.h"
#include "wasm_info.h"

static pj_tok_t toks[64];

static int parse(pj_doc_t *d, const char *s) { return pj_parse(d, s, strlen(s), toks, 64); }

static void json_parses_nested_document(void)
{
    pj_doc_t d;
    const char *s = " {\"id\":\"t1\",\"inputs\":[1,-2,3],\"env\":{\"a\":\"b\"},\"ok\":true,\"n\":null} ";
    CHECK(parse(&d, s) > 0);
    char buf[16];
    CHECK_INT(pj_str(&d, pj_find(&d, 0, "id"), buf, sizeof buf), 2);
    CHECK_STR(buf, "t1");
    int arr = pj_find(&d, 0, "inputs");
    CHECK_INT(d.toks[arr].size, 3);
    int64_t v = 0;
    CHECK_INT(pj_int(&d, pj_elem(&d, arr, 1), &v), 0);
    CHECK_INT(v, -2);
    CHECK_INT(pj_elem(&d, arr, 3), -1);
    CHECK_INT(pj_bool(&d, pj_find(&d, 0, "ok")), 1);
    CHECK(pj_is_null(&d, pj_find(&d, 0, "n")));
    /* a key nested in env is not a top-level key */
    CHECK_INT(pj_find(&d, 0, "a"), -1);
    CHECK(pj_str_eq(&d, pj_find(&d, pj_find(&d, 0, "env"), "a"), "b"));
    CHECK_INT(pj_find(&d, 0, "missing"), -1);
}

static void json_rejects_malformed_input(void)
{
    static const char *const bad[] = {
        "{\"a\":1,}", "{\"a\" 1}", "[01]", "{\"a\":tru}", "{\"a\":\"x\ty\"}", "{} x", "[1 2]",
        "{\"a\":-}", "{\"a\":1.}", "{\"a\":1e}", "\"\\x\"", "{\"a\":\"\\u12G4\"}", "{1:2}", "", "   ",
        "[,1]", "nul", "{\"a\":[}",
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        pj_doc_t d;
        int rc = parse(&d, bad[i]);
        if (rc >= 0) {
            printf("  accepted malformed: %s\n", bad[i]);
        }
        CHECK(rc < 0);
    }
}

static void json_reports_truncation_and_keeps_complete_prefix(void)
{
    pj_doc_t d;
    const char *s = "{\"id\":\"abc\",\"proplet_id\":\"p1\",\"file\":\"AGFzbQEAAA";
    CHECK_INT(parse(&d, s), PJ_ERR_PART);
    CHECK(pj_str_eq(&d, pj_find(&d, 0, "id"), "abc"));
    CHECK(pj_str_eq(&d, pj_find(&d, 0, "proplet_id"), "p1"));
    CHECK_INT(pj_find(&d, 0, "file"), -1); /* never closed */
}

static void json_limits_depth_and_tokens(void)
{
    char deep[64];
    memset(deep, '[', 40);
    deep[40] = '\0';
    pj_doc_t d;
    CHECK_INT(parse(&d, deep), PJ_ERR_DEPTH);
    pj_tok_t few[3];
    CHECK_INT(pj_parse(&d, "[1,2,3,4]", 9, few, 3), PJ_ERR_NOMEM);
}

static void json_unescapes_strings(void)
{
    pj_doc_t d;
    char out[32];
    CHECK(parse(&d, "[\"a\\\"b\\\\c\\/\\n\\u00e9\\ud83d\\ude00\"]") > 0);
    CHECK_INT(pj_str(&d, 1, out, sizeof out), 13);
    CHECK_STR(out, "a\"b\\c/\n\xc3\xa9\xf0\x9f\x98\x80");
    CHECK(parse(&d, "[\"x\\u0000y\"]") > 0);
    CHECK_INT(pj_str(&d, 1, out, sizeof out), -1); /* embedded NUL refused */
    CHECK(parse(&d, "[\"abcdef\"]") > 0);
    CHECK_INT(pj_str(&d, 1, out, 6), -1); /* does not fit */
    CHECK_INT(pj_str(&d, 1, out, 7), 6);
}

static void json_reads_integers_exactly(void)
{
    pj_doc_t d;
    int64_t v;
    CHECK(parse(&d, "[9223372036854775807,-9223372036854775808,9223372036854775808,1.5,1e3,-0]") > 0);
    CHECK_INT(pj_int(&d, 1, &v), 0);
    CHECK(v == INT64_MAX);
    CHECK_INT(pj_int(&d, 2, &v), 0);
    CHECK(v == INT64_MIN);
    CHECK_INT(pj_int(&d, 3, &v), -1);
    CHECK_INT(pj_int(&d, 4, &v), -1);
    CHECK_INT(pj_int(&d, 5, &v), -1);
    CHECK_INT(pj_int(&d, 6, &v), 0);
    CHECK_INT(v, 0);
}

static void json_writer_escapes_and_detects_overflow(void)
{
    char buf[64];
    pj_writer_t w;
    pj_w_init(&w, buf, sizeof buf);
    pj_w_raw(&w, "{");
    pj_w_key(&w, "a");
    pj_w_str(&w, "q\"\\\n\x01");
    pj_w_key(&w, "n");
    pj_w_int(&w, -1234567890123LL);
    pj_w_raw(&w, "}");
    CHECK(pj_w_end(&w) > 0);
    CHECK_STR(buf, "{\"a\":\"q\\\"\\\\\\n\\u0001\",\"n\":-1234567890123}");
    /* what we write, we can read back */
    pj_doc_t d;
    CHECK(parse(&d, buf) > 0);
    char small[4];
    pj_w_init(&w, small, sizeof small);
    pj_w_str(&w, "long");
    CHECK_INT(pj_w_end(&w), -1);
    CHECK_INT((long long)strlen(small), 3);
}

static void base64_decodes_rfc4648_vectors(void)
{
    static const char *const enc[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy", "Zm9vYg"};
    static const char *const dec[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar", "foob"};
    for (size_t i = 0; i < sizeof enc / sizeof enc[0]; i++) {
        uint8_t out[16];
        int n = b64_decode(enc[i], strlen(enc[i]), out, sizeof out);
        CHECK_INT(n, (long long)strlen(dec[i]));
        if (n >= 0) {
            out[n] = 0;
            CHECK_STR((const char *)out, dec[i]);
        }
    }
}

static void base64_rejects_bad_input(void)
{
    uint8_t out[8];
    CHECK_INT(b64_decode("Zm9v!A==", 8, out, sizeof out), B64_ERR_CHAR);
    CHECK_INT(b64_decode("Zg=", 3, out, sizeof out), B64_ERR_LEN);
    CHECK_INT(b64_decode("Z", 1, out, sizeof out), B64_ERR_LEN);
    CHECK_INT(b64_decode("Z=g=", 4, out, sizeof out), B64_ERR_CHAR);
    CHECK_INT(b64_decode("Zm9vYmFy", 8, out, 5), B64_ERR_SPACE);
}

static int decode(const char *b64, uint8_t *out, size_t cap) { return b64_decode(b64, strlen(b64), out, cap); }

static void wasm_info_reads_memory_and_exports(void)
{
    uint8_t m[64];
    wasm_info_t info;
    int n = decode(B64_MAIN_MEM1, m, sizeof m);
    CHECK_INT(n, LEN_MAIN_MEM1);
    CHECK_INT(wasm_info_read(m, (size_t)n, &info), WI_OK);
    CHECK_INT(info.memory_min_pages, 1);
    CHECK_INT(wasm_has_func_export(m, (size_t)n, "main"), 1);
    CHECK_INT(wasm_has_func_export(m, (size_t)n, "mai"), 0);
    n = decode(B64_IMPORTED_MEM2, m, sizeof m);
    CHECK_INT(wasm_info_read(m, (size_t)n, &info), WI_OK);
    CHECK_INT(info.memory_min_pages, 2);
    n = decode(B64_ADD_MAIN, m, sizeof m);
    CHECK_INT(wasm_info_read(m, (size_t)n, &info), WI_OK);
    CHECK_INT(info.has_memory, 0);
    CHECK_INT(wasm_has_func_export(m, (size_t)n, "add"), 1);
}

static void wasm_info_rejects_bad_modules(void)
{
    uint8_t m[64];
    wasm_info_t info;
    int n = decode(B64_MAIN_MEM1, m, sizeof m);
    CHECK_INT(wasm_info_read(m, 20, &info), WI_ERR_TRUNC);
    m[1] = 'X';
    CHECK_INT(wasm_info_read(m, (size_t)n, &info), WI_ERR_MAGIC);
    CHECK_INT(wasm_has_func_export(m, (size_t)n, "main"), WI_ERR_MAGIC);
    const uint8_t lebbad[] = {0, 'a', 's', 'm', 1, 0, 0, 0, 5, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01};
    CHECK(wasm_info_read(lebbad, sizeof lebbad, &info) < 0);
}

static void console_quotes_only_when_needed(void)
{
    con_line_t l;
    con_begin(&l, "task_end");
    con_str(&l, "id", "t-1");
    con_int(&l, "ok", 0);
    con_quoted(&l, "error", "bad \"x\"\nnext");
    con_str(&l, "name", "two words");
    con_str(&l, "empty", "");
    con_int(&l, "neg", -55);
    CHECK_STR(l.buf, "task_end id=t-1 ok=0 error=\"bad \\\"x\\\" next\" name=\"two words\" empty=\"\" neg=-55");
    char big[400];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    con_str(&l, "big", big);
    CHECK(strlen(l.buf) < CON_LINE_MAX);
}

void run_codec_tests(void)
{
    RUN(json_parses_nested_document);
    RUN(json_rejects_malformed_input);
    RUN(json_reports_truncation_and_keeps_complete_prefix);
    RUN(json_limits_depth_and_tokens);
    RUN(json_unescapes_strings);
    RUN(json_reads_integers_exactly);
    RUN(json_writer_escapes_and_detects_overflow);
    RUN(base64_decodes_rfc4648_vectors);
    RUN(base64_rejects_bad_input);
    RUN(wasm_info_reads_memory_and_exports);
    RUN(wasm_info_rejects_bad_modules);
    RUN(console_quotes_only_when_needed);
}
