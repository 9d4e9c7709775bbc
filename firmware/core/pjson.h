/* Small JSON tokenizer and writer for the proplet core (C99, no allocation).
 *
 * The tokenizer is strict (RFC 8259 grammar, depth-limited) because every byte comes from the
 * network: anything it accepts can be walked safely with the helpers below.  Tokens are laid out in
 * pre-order like jsmn: an object's keys have the object as parent, and each value has its key as
 * parent; array elements have the array as parent.
 */
#ifndef PJSON_H
#define PJSON_H

#include <stddef.h>
#include <stdint.h>

#define PJ_MAX_DEPTH 16

typedef enum { PJ_UNDEF = 0, PJ_OBJECT, PJ_ARRAY, PJ_STRING, PJ_PRIMITIVE } pj_type_t;

enum {
    PJ_ERR_NOMEM = -1, /* more tokens than the caller's array holds */
    PJ_ERR_INVAL = -2, /* not JSON */
    PJ_ERR_PART = -3,  /* input ended inside a value: truncated */
    PJ_ERR_DEPTH = -4  /* nested deeper than PJ_MAX_DEPTH */
};

typedef struct {
    pj_type_t type;
    int start; /* offset of the first byte (strings: after the opening quote) */
    int end;   /* offset one past the last byte (strings: at the closing quote); -1 while open */
    int size;  /* objects: number of keys; arrays: number of elements */
    int parent;
} pj_tok_t;

typedef struct {
    const char *js;
    size_t len;
    pj_tok_t *toks;
    int cap;
    int ntok; /* tokens allocated so far: after an error, the complete ones still have end >= 0 */
} pj_doc_t;

/* Parses js[0..len).  Returns the number of tokens (>0) or a PJ_ERR_* code. */
int pj_parse(pj_doc_t *doc, const char *js, size_t len, pj_tok_t *toks, int cap);

/* Index of the value of `key` in object token `obj`, or -1.  Keys are compared byte-wise as sent
 * (escaped keys never match, which is fine: every key we look up is plain ASCII).  Works on the
 * complete prefix of a truncated document too (values that never closed are skipped). */
int pj_find(const pj_doc_t *doc, int obj, const char *key);

/* The i-th child of array `arr`, or -1. */
int pj_elem(const pj_doc_t *doc, int arr, int i);

/* Unescapes string token t into out (NUL-terminated).  Returns the length, or -1 if t is not a
 * complete string, contains \u0000, or does not fit in cap-1 bytes. */
int pj_str(const pj_doc_t *doc, int t, char *out, size_t cap);

/* 1 if string token t equals s exactly (after unescaping), else 0. */
int pj_str_eq(const pj_doc_t *doc, int t, const char *s);

/* Integer primitive (no fraction/exponent) into *out.  Returns 0, or -1 when t is not an integer
 * or overflows int64. */
int pj_int(const pj_doc_t *doc, int t, int64_t *out);

/* 1 for true, 0 for false, -1 for anything else. */
int pj_bool(const pj_doc_t *doc, int t);

int pj_is_null(const pj_doc_t *doc, int t);

/* Writer: appends into a fixed buffer and remembers overflow instead of failing at each call. */
typedef struct {
    char *buf;
    size_t cap;
    size_t len;
    int overflow;
} pj_writer_t;

void pj_w_init(pj_writer_t *w, char *buf, size_t cap);
void pj_w_raw(pj_writer_t *w, const char *s);
void pj_w_str(pj_writer_t *w, const char *s); /* quoted and escaped */
void pj_w_int(pj_writer_t *w, int64_t v);
void pj_w_key(pj_writer_t *w, const char *key); /* writes ,"key": (comma unless first in object) */
/* Finishes: returns the length, or -1 on overflow (buf is then still NUL-terminated). */
int pj_w_end(pj_writer_t *w);

#endif
