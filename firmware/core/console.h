/* Builds the body of one console event line, "EVENT key=value key=\"quoted value\" ...".
 * The platform adds the Zephyr log prefix ("[HH:MM:SS.mmm,uuu] <inf> prop: ") when it logs it. */
#ifndef CONSOLE_H
#define CONSOLE_H

#include <stddef.h>
#include <stdint.h>

#define CON_LINE_MAX 256

typedef struct {
    char buf[CON_LINE_MAX];
    size_t len;
} con_line_t;

void con_begin(con_line_t *l, const char *event);
/* Quoted only when needed (empty, or contains a space, '"', '=' or a control byte). */
void con_str(con_line_t *l, const char *key, const char *value);
/* Always quoted: for free-form values (results, errors) so a parser never has to guess. */
void con_quoted(con_line_t *l, const char *key, const char *value);
void con_int(con_line_t *l, const char *key, int64_t value);

#endif
