#include "b64.h"

static int sextet(char ch)
{
    if (ch >= 'A' && ch <= 'Z') {
        return ch - 'A';
    }
    if (ch >= 'a' && ch <= 'z') {
        return ch - 'a' + 26;
    }
    if (ch >= '0' && ch <= '9') {
        return ch - '0' + 52;
    }
    if (ch == '+') {
        return 62;
    }
    if (ch == '/') {
        return 63;
    }
    return -1;
}

size_t b64_decoded_max(size_t len) { return (len / 4u) * 3u + 3u; }

int b64_decode(const char *in, size_t len, uint8_t *out, size_t cap)
{
    size_t pad = 0;
    while (len > 0 && pad < 2 && in[len - 1] == '=') {
        len--;
        pad++;
    }
    if (pad > 0 && (len + pad) % 4u != 0) {
        return B64_ERR_LEN;
    }
    if (len % 4u == 1u) {
        return B64_ERR_LEN; /* one leftover sextet cannot encode a byte */
    }
    size_t n = 0;
    uint32_t acc = 0;
    unsigned bits = 0;
    for (size_t i = 0; i < len; i++) {
        int v = sextet(in[i]);
        if (v < 0) {
            return B64_ERR_CHAR;
        }
        acc = (acc << 6) | (uint32_t)v;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            if (n >= cap) {
                return B64_ERR_SPACE;
            }
            out[n++] = (uint8_t)(acc >> bits);
            acc &= (1u << bits) - 1u;
        }
    }
    if (n > 0x7FFFFFFF) {
        return B64_ERR_SPACE;
    }
    return (int)n;
}
