#include "console.h"

#include <string.h>

static void put(con_line_t *l, char ch)
{
    /* A line that would overflow is cut; one line per event matters more than its tail. */
    if (l->len + 1 < sizeof l->buf) {
        l->buf[l->len++] = ch;
        l->buf[l->len] = '\0';
    }
}

static void puts_raw(con_line_t *l, const char *s)
{
    while (*s != '\0') {
        put(l, *s++);
    }
}

void con_begin(con_line_t *l, const char *event)
{
    l->len = 0;
    l->buf[0] = '\0';
    puts_raw(l, event);
}

static int needs_quotes(const char *v)
{
    if (*v == '\0') {
        return 1;
    }
    for (; *v != '\0'; v++) {
        unsigned char ch = (unsigned char)*v;
        if (ch <= ' ' || ch == '"' || ch == '=' || ch == 0x7F) {
            return 1;
        }
    }
    return 0;
}

static void put_value(con_line_t *l, const char *v, int quote)
{
    if (!quote) {
        puts_raw(l, v);
        return;
    }
    put(l, '"');
    for (; *v != '\0'; v++) {
        unsigned char ch = (unsigned char)*v;
        if (ch == '"' || ch == '\\') {
            put(l, '\\');
            put(l, (char)ch);
        } else if (ch < ' ' || ch == 0x7F) {
            put(l, ' '); /* a newline inside a value would split the event */
        } else {
            put(l, (char)ch);
        }
    }
    put(l, '"');
}

void con_str(con_line_t *l, const char *key, const char *value)
{
    put(l, ' ');
    puts_raw(l, key);
    put(l, '=');
    put_value(l, value, needs_quotes(value));
}

void con_quoted(con_line_t *l, const char *key, const char *value)
{
    put(l, ' ');
    puts_raw(l, key);
    put(l, '=');
    put_value(l, value, 1);
}

void con_int(con_line_t *l, const char *key, int64_t value)
{
    char tmp[24];
    int n = 0;
    uint64_t u = value < 0 ? (uint64_t)0 - (uint64_t)value : (uint64_t)value;
    do {
        tmp[n++] = (char)('0' + (u % 10u));
        u /= 10u;
    } while (u != 0);
    put(l, ' ');
    puts_raw(l, key);
    put(l, '=');
    if (value < 0) {
        put(l, '-');
    }
    while (n > 0) {
        put(l, tmp[--n]);
    }
}
