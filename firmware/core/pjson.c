#include "pjson.h"

#include <string.h>

typedef struct {
    pj_doc_t *d;
    size_t pos;
} pj_cur_t;

static int alloc_tok(pj_cur_t *c, pj_type_t type, int start, int parent)
{
    pj_doc_t *d = c->d;
    if (d->ntok >= d->cap) {
        return PJ_ERR_NOMEM;
    }
    pj_tok_t *t = &d->toks[d->ntok];
    t->type = type;
    t->start = start;
    t->end = -1;
    t->size = 0;
    t->parent = parent;
    return d->ntok++;
}

static void skip_ws(pj_cur_t *c)
{
    while (c->pos < c->d->len) {
        char ch = c->d->js[c->pos];
        if (ch != ' ' && ch != '\t' && ch != '\n' && ch != '\r') {
            return;
        }
        c->pos++;
    }
}

static int at_end(const pj_cur_t *c) { return c->pos >= c->d->len; }

static int is_hex(char ch)
{
    return (ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F');
}

static int parse_string(pj_cur_t *c, int parent)
{
    /* c->pos is at the opening quote */
    c->pos++;
    int idx = alloc_tok(c, PJ_STRING, (int)c->pos, parent);
    if (idx < 0) {
        return idx;
    }
    const char *js = c->d->js;
    while (!at_end(c)) {
        unsigned char ch = (unsigned char)js[c->pos];
        if (ch == '"') {
            c->d->toks[idx].end = (int)c->pos;
            c->pos++;
            return idx;
        }
        if (ch < 0x20) {
            return PJ_ERR_INVAL;
        }
        if (ch == '\\') {
            c->pos++;
            if (at_end(c)) {
                return PJ_ERR_PART;
            }
            char e = js[c->pos];
            if (e == 'u') {
                for (int i = 0; i < 4; i++) {
                    c->pos++;
                    if (at_end(c)) {
                        return PJ_ERR_PART;
                    }
                    if (!is_hex(js[c->pos])) {
                        return PJ_ERR_INVAL;
                    }
                }
            } else if (strchr("\"\\/bfnrt", e) == NULL || e == '\0') {
                return PJ_ERR_INVAL;
            }
        }
        c->pos++;
    }
    return PJ_ERR_PART;
}

static int parse_primitive(pj_cur_t *c, int parent)
{
    const char *js = c->d->js;
    size_t len = c->d->len;
    size_t p = c->pos;
    int idx = alloc_tok(c, PJ_PRIMITIVE, (int)p, parent);
    if (idx < 0) {
        return idx;
    }
    static const char *const words[] = {"true", "false", "null"};
    for (size_t w = 0; w < 3; w++) {
        size_t wl = strlen(words[w]);
        if (js[p] == words[w][0]) {
            for (size_t i = 0; i < wl; i++) {
                if (p + i >= len) {
                    return PJ_ERR_PART;
                }
                if (js[p + i] != words[w][i]) {
                    return PJ_ERR_INVAL;
                }
            }
            c->pos = p + wl;
            c->d->toks[idx].end = (int)c->pos;
            return idx;
        }
    }
    /* number: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)? */
    if (js[p] == '-') {
        p++;
    }
    if (p >= len) {
        return PJ_ERR_PART;
    }
    if (js[p] == '0') {
        p++;
    } else if (js[p] >= '1' && js[p] <= '9') {
        while (p < len && js[p] >= '0' && js[p] <= '9') {
            p++;
        }
    } else {
        return PJ_ERR_INVAL;
    }
    if (p < len && js[p] == '.') {
        p++;
        if (p >= len) {
            return PJ_ERR_PART;
        }
        if (!(js[p] >= '0' && js[p] <= '9')) {
            return PJ_ERR_INVAL;
        }
        while (p < len && js[p] >= '0' && js[p] <= '9') {
            p++;
        }
    }
    if (p < len && (js[p] == 'e' || js[p] == 'E')) {
        p++;
        if (p < len && (js[p] == '+' || js[p] == '-')) {
            p++;
        }
        if (p >= len) {
            return PJ_ERR_PART;
        }
        if (!(js[p] >= '0' && js[p] <= '9')) {
            return PJ_ERR_INVAL;
        }
        while (p < len && js[p] >= '0' && js[p] <= '9') {
            p++;
        }
    }
    c->pos = p;
    c->d->toks[idx].end = (int)p;
    return idx;
}

static int parse_value(pj_cur_t *c, int parent, int depth);

static int parse_container(pj_cur_t *c, int parent, int depth, int is_obj)
{
    if (depth >= PJ_MAX_DEPTH) {
        return PJ_ERR_DEPTH;
    }
    int idx = alloc_tok(c, is_obj ? PJ_OBJECT : PJ_ARRAY, (int)c->pos, parent);
    if (idx < 0) {
        return idx;
    }
    const char close = is_obj ? '}' : ']';
    c->pos++;
    skip_ws(c);
    if (at_end(c)) {
        return PJ_ERR_PART;
    }
    if (c->d->js[c->pos] == close) {
        c->pos++;
        c->d->toks[idx].end = (int)c->pos;
        return idx;
    }
    for (;;) {
        int vparent = idx;
        if (is_obj) {
            skip_ws(c);
            if (at_end(c)) {
                return PJ_ERR_PART;
            }
            if (c->d->js[c->pos] != '"') {
                return PJ_ERR_INVAL;
            }
            int k = parse_string(c, idx);
            if (k < 0) {
                return k;
            }
            skip_ws(c);
            if (at_end(c)) {
                return PJ_ERR_PART;
            }
            if (c->d->js[c->pos] != ':') {
                return PJ_ERR_INVAL;
            }
            c->pos++;
            vparent = k;
        }
        int v = parse_value(c, vparent, depth + 1);
        if (v < 0) {
            return v;
        }
        c->d->toks[idx].size++;
        skip_ws(c);
        if (at_end(c)) {
            return PJ_ERR_PART;
        }
        char ch = c->d->js[c->pos];
        if (ch == ',') {
            c->pos++;
            continue;
        }
        if (ch == close) {
            c->pos++;
            c->d->toks[idx].end = (int)c->pos;
            return idx;
        }
        return PJ_ERR_INVAL;
    }
}

static int parse_value(pj_cur_t *c, int parent, int depth)
{
    skip_ws(c);
    if (at_end(c)) {
        return PJ_ERR_PART;
    }
    char ch = c->d->js[c->pos];
    switch (ch) {
    case '{':
        return parse_container(c, parent, depth, 1);
    case '[':
        return parse_container(c, parent, depth, 0);
    case '"':
        return parse_string(c, parent);
    default:
        return parse_primitive(c, parent);
    }
}

int pj_parse(pj_doc_t *doc, const char *js, size_t len, pj_tok_t *toks, int cap)
{
    doc->js = js;
    doc->len = len;
    doc->toks = toks;
    doc->cap = cap;
    doc->ntok = 0;
    if (js == NULL || toks == NULL || cap <= 0) {
        return PJ_ERR_NOMEM;
    }
    pj_cur_t c = {doc, 0};
    int r = parse_value(&c, -1, 0);
    if (r < 0) {
        return r;
    }
    skip_ws(&c);
    if (!at_end(&c)) {
        return PJ_ERR_INVAL;
    }
    return doc->ntok;
}

static int tok_ok(const pj_doc_t *doc, int t)
{
    return doc != NULL && t >= 0 && t < doc->ntok && doc->toks[t].end >= 0;
}

int pj_find(const pj_doc_t *doc, int obj, const char *key)
{
    /* obj may still be open: a truncated document keeps its complete leading members */
    if (doc == NULL || obj < 0 || obj >= doc->ntok) {
        return -1;
    }
    if (doc->toks[obj].type != PJ_OBJECT) {
        return -1;
    }
    size_t klen = strlen(key);
    for (int i = obj + 1; i + 1 < doc->ntok; i++) {
        const pj_tok_t *k = &doc->toks[i];
        if (k->parent != obj || k->type != PJ_STRING || k->end < 0) {
            continue;
        }
        if ((size_t)(k->end - k->start) == klen && memcmp(doc->js + k->start, key, klen) == 0) {
            /* the value is the next token and names the key as its parent */
            if (doc->toks[i + 1].parent == i && doc->toks[i + 1].end >= 0) {
                return i + 1;
            }
            return -1;
        }
    }
    return -1;
}

int pj_elem(const pj_doc_t *doc, int arr, int i)
{
    if (!tok_ok(doc, arr) || doc->toks[arr].type != PJ_ARRAY || i < 0) {
        return -1;
    }
    int n = 0;
    for (int j = arr + 1; j < doc->ntok; j++) {
        if (doc->toks[j].parent == arr) {
            if (n == i) {
                return j;
            }
            n++;
        }
    }
    return -1;
}

static unsigned hexval(char ch)
{
    if (ch >= '0' && ch <= '9') {
        return (unsigned)(ch - '0');
    }
    if (ch >= 'a' && ch <= 'f') {
        return (unsigned)(ch - 'a' + 10);
    }
    return (unsigned)(ch - 'A' + 10);
}

static unsigned read_u4(const char *p)
{
    return (hexval(p[0]) << 12) | (hexval(p[1]) << 8) | (hexval(p[2]) << 4) | hexval(p[3]);
}

static int put_utf8(char *out, size_t cap, size_t *n, uint32_t cp)
{
    unsigned char b[4];
    size_t k;
    if (cp < 0x80) {
        b[0] = (unsigned char)cp;
        k = 1;
    } else if (cp < 0x800) {
        b[0] = (unsigned char)(0xC0 | (cp >> 6));
        b[1] = (unsigned char)(0x80 | (cp & 0x3F));
        k = 2;
    } else if (cp < 0x10000) {
        b[0] = (unsigned char)(0xE0 | (cp >> 12));
        b[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        b[2] = (unsigned char)(0x80 | (cp & 0x3F));
        k = 3;
    } else {
        b[0] = (unsigned char)(0xF0 | (cp >> 18));
        b[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
        b[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        b[3] = (unsigned char)(0x80 | (cp & 0x3F));
        k = 4;
    }
    if (*n + k + 1 > cap) {
        return -1;
    }
    memcpy(out + *n, b, k);
    *n += k;
    return 0;
}

int pj_str(const pj_doc_t *doc, int t, char *out, size_t cap)
{
    if (!tok_ok(doc, t) || doc->toks[t].type != PJ_STRING || out == NULL || cap == 0) {
        return -1;
    }
    const char *p = doc->js + doc->toks[t].start;
    const char *end = doc->js + doc->toks[t].end;
    size_t n = 0;
    while (p < end) {
        uint32_t cp;
        if (*p != '\\') {
            if (n + 2 > cap) {
                return -1;
            }
            out[n++] = *p++;
            continue;
        }
        p++; /* the tokenizer guarantees a valid escape follows */
        char e = *p++;
        switch (e) {
        case 'b': cp = '\b'; break;
        case 'f': cp = '\f'; break;
        case 'n': cp = '\n'; break;
        case 'r': cp = '\r'; break;
        case 't': cp = '\t'; break;
        case 'u':
            cp = read_u4(p);
            p += 4;
            if (cp >= 0xD800 && cp <= 0xDBFF && end - p >= 6 && p[0] == '\\' && p[1] == 'u') {
                uint32_t lo = read_u4(p + 2);
                if (lo >= 0xDC00 && lo <= 0xDFFF) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    p += 6;
                }
            }
            if (cp >= 0xD800 && cp <= 0xDFFF) {
                cp = 0xFFFD; /* lone surrogate */
            }
            break;
        default: cp = (unsigned char)e; break; /* " \ / */
        }
        if (cp == 0) {
            return -1; /* an embedded NUL would silently truncate C strings */
        }
        if (put_utf8(out, cap, &n, cp) != 0) {
            return -1;
        }
    }
    out[n] = '\0';
    return (int)n;
}

int pj_str_eq(const pj_doc_t *doc, int t, const char *s)
{
    char buf[128];
    int n = pj_str(doc, t, buf, sizeof buf);
    return n >= 0 && strcmp(buf, s) == 0;
}

int pj_int(const pj_doc_t *doc, int t, int64_t *out)
{
    if (!tok_ok(doc, t) || doc->toks[t].type != PJ_PRIMITIVE) {
        return -1;
    }
    const char *p = doc->js + doc->toks[t].start;
    const char *end = doc->js + doc->toks[t].end;
    int neg = 0;
    if (p < end && *p == '-') {
        neg = 1;
        p++;
    }
    if (p >= end || *p < '0' || *p > '9') {
        return -1;
    }
    uint64_t v = 0;
    const uint64_t limit = neg ? (uint64_t)INT64_MAX + 1u : (uint64_t)INT64_MAX;
    for (; p < end; p++) {
        if (*p < '0' || *p > '9') {
            return -1; /* fraction or exponent */
        }
        uint64_t d = (uint64_t)(*p - '0');
        if (v > (limit - d) / 10u) {
            return -1;
        }
        v = v * 10u + d;
    }
    if (neg) {
        *out = v == (uint64_t)INT64_MAX + 1u ? INT64_MIN : -(int64_t)v;
    } else {
        *out = (int64_t)v;
    }
    return 0;
}

int pj_bool(const pj_doc_t *doc, int t)
{
    if (!tok_ok(doc, t) || doc->toks[t].type != PJ_PRIMITIVE) {
        return -1;
    }
    char ch = doc->js[doc->toks[t].start];
    return ch == 't' ? 1 : ch == 'f' ? 0 : -1;
}

int pj_is_null(const pj_doc_t *doc, int t)
{
    return tok_ok(doc, t) && doc->toks[t].type == PJ_PRIMITIVE && doc->js[doc->toks[t].start] == 'n';
}

void pj_w_init(pj_writer_t *w, char *buf, size_t cap)
{
    w->buf = buf;
    w->cap = cap;
    w->len = 0;
    w->overflow = cap == 0;
    if (cap > 0) {
        buf[0] = '\0';
    }
}

static void put_ch(pj_writer_t *w, char ch)
{
    if (w->len + 1 >= w->cap) {
        w->overflow = 1;
        return;
    }
    w->buf[w->len++] = ch;
    w->buf[w->len] = '\0';
}

void pj_w_raw(pj_writer_t *w, const char *s)
{
    while (*s != '\0') {
        put_ch(w, *s++);
    }
}

void pj_w_str(pj_writer_t *w, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    put_ch(w, '"');
    for (; *s != '\0'; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\') {
            put_ch(w, '\\');
            put_ch(w, (char)ch);
        } else if (ch == '\n') {
            pj_w_raw(w, "\\n");
        } else if (ch < 0x20) {
            pj_w_raw(w, "\\u00");
            put_ch(w, hex[ch >> 4]);
            put_ch(w, hex[ch & 0xF]);
        } else {
            put_ch(w, (char)ch);
        }
    }
    put_ch(w, '"');
}

void pj_w_int(pj_writer_t *w, int64_t v)
{
    char tmp[24];
    int n = 0;
    uint64_t u = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    do {
        tmp[n++] = (char)('0' + (u % 10u));
        u /= 10u;
    } while (u != 0);
    if (v < 0) {
        put_ch(w, '-');
    }
    while (n > 0) {
        put_ch(w, tmp[--n]);
    }
}

void pj_w_key(pj_writer_t *w, const char *key)
{
    if (w->len > 0 && w->buf[w->len - 1] != '{' && w->buf[w->len - 1] != '[') {
        put_ch(w, ',');
    }
    pj_w_str(w, key);
    put_ch(w, ':');
}

int pj_w_end(pj_writer_t *w) { return w->overflow ? -1 : (int)w->len; }
