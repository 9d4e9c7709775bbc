#include "wasm_info.h"

#include <string.h>

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
    int err;
} rd_t;

static uint8_t rd_byte(rd_t *r)
{
    if (r->err != 0 || r->p >= r->end) {
        if (r->err == 0) {
            r->err = WI_ERR_TRUNC;
        }
        return 0;
    }
    return *r->p++;
}

static uint32_t rd_u32(rd_t *r)
{
    uint32_t v = 0;
    for (unsigned shift = 0; shift < 35; shift += 7) {
        uint8_t b = rd_byte(r);
        if (r->err != 0) {
            return 0;
        }
        if (shift == 28 && (b & 0x70) != 0) {
            r->err = WI_ERR_MALFORMED;
            return 0;
        }
        v |= (uint32_t)(b & 0x7F) << shift;
        if ((b & 0x80) == 0) {
            return v;
        }
    }
    r->err = WI_ERR_MALFORMED;
    return 0;
}

static void rd_skip(rd_t *r, uint32_t n)
{
    if (r->err != 0) {
        return;
    }
    if ((size_t)(r->end - r->p) < n) {
        r->err = WI_ERR_TRUNC;
        return;
    }
    r->p += n;
}

/* Limits: flags, min, [max].  Bit 0 of flags = max present; bit 2 = 64-bit (min then still fits
 * our purposes only if small, so we read it as LEB128 u32 and fail on overflow). */
static uint32_t rd_limits(rd_t *r)
{
    uint8_t flags = rd_byte(r);
    if (flags > 0x07) {
        r->err = WI_ERR_MALFORMED;
        return 0;
    }
    uint32_t min = rd_u32(r);
    if ((flags & 1u) != 0) {
        (void)rd_u32(r);
    }
    return min;
}

static int check_header(rd_t *r)
{
    static const uint8_t magic[8] = {0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00};
    if ((size_t)(r->end - r->p) < sizeof magic || memcmp(r->p, magic, sizeof magic) != 0) {
        return WI_ERR_MAGIC;
    }
    r->p += sizeof magic;
    return WI_OK;
}

/* Walks the imports; stops at the first imported memory. */
static void scan_imports(rd_t *r, wasm_info_t *out)
{
    uint32_t count = rd_u32(r);
    for (uint32_t i = 0; i < count && r->err == 0; i++) {
        rd_skip(r, rd_u32(r)); /* module name */
        rd_skip(r, rd_u32(r)); /* field name */
        uint8_t kind = rd_byte(r);
        switch (kind) {
        case 0x00: (void)rd_u32(r); break;            /* func: type index */
        case 0x01: (void)rd_byte(r); (void)rd_limits(r); break; /* table */
        case 0x02: {
            uint32_t min = rd_limits(r);
            if (!out->has_memory && r->err == 0) {
                out->has_memory = 1;
                out->memory_min_pages = min;
            }
            break;
        }
        case 0x03: (void)rd_byte(r); (void)rd_byte(r); break; /* global: type, mutability */
        case 0x04: (void)rd_byte(r); (void)rd_u32(r); break;  /* tag */
        default: r->err = WI_ERR_MALFORMED; break;
        }
    }
}

int wasm_info_read(const uint8_t *mod, size_t len, wasm_info_t *out)
{
    rd_t r = {mod, mod + len, 0};
    out->memory_min_pages = 0;
    out->has_memory = 0;
    if (mod == NULL || check_header(&r) != WI_OK) {
        return WI_ERR_MAGIC;
    }
    while (r.p < r.end && r.err == 0) {
        uint8_t id = rd_byte(&r);
        uint32_t size = rd_u32(&r);
        if (r.err != 0) {
            break;
        }
        if ((size_t)(r.end - r.p) < size) {
            return WI_ERR_TRUNC;
        }
        rd_t sec = {r.p, r.p + size, 0};
        if (id == 2) {
            scan_imports(&sec, out);
        } else if (id == 5 && !out->has_memory) {
            if (rd_u32(&sec) > 0) {
                out->memory_min_pages = rd_limits(&sec);
                out->has_memory = sec.err == 0;
            }
        }
        if (sec.err != 0) {
            return sec.err;
        }
        r.p += size;
    }
    return r.err;
}

int wasm_has_func_export(const uint8_t *mod, size_t len, const char *name)
{
    rd_t r = {mod, mod + len, 0};
    size_t nlen = strlen(name);
    if (mod == NULL || check_header(&r) != WI_OK) {
        return WI_ERR_MAGIC;
    }
    while (r.p < r.end && r.err == 0) {
        uint8_t id = rd_byte(&r);
        uint32_t size = rd_u32(&r);
        if (r.err != 0) {
            break;
        }
        if ((size_t)(r.end - r.p) < size) {
            return WI_ERR_TRUNC;
        }
        if (id == 7) {
            rd_t sec = {r.p, r.p + size, 0};
            uint32_t count = rd_u32(&sec);
            for (uint32_t i = 0; i < count && sec.err == 0; i++) {
                uint32_t n = rd_u32(&sec);
                const uint8_t *s = sec.p;
                rd_skip(&sec, n);
                uint8_t kind = rd_byte(&sec);
                (void)rd_u32(&sec);
                if (sec.err == 0 && kind == 0x00 && n == nlen && memcmp(s, name, nlen) == 0) {
                    return 1;
                }
            }
            return sec.err;
        }
        r.p += size;
    }
    return r.err;
}
