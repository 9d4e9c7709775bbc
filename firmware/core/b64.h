/* Standard-alphabet base64 decoder (RFC 4648 §4), as Go's encoding/base64.StdEncoding writes it. */
#ifndef B64_H
#define B64_H

#include <stddef.h>
#include <stdint.h>

enum {
    B64_ERR_CHAR = -1,  /* a byte outside the alphabet, or misplaced '=' */
    B64_ERR_SPACE = -2, /* output does not fit */
    B64_ERR_LEN = -3    /* length is not a valid base64 length */
};

/* Decodes in[0..len) into out.  Padding is optional (unpadded input is accepted, since some
 * encoders omit it) but, when present, must be at the end.  Returns the decoded length or B64_ERR_*. */
int b64_decode(const char *in, size_t len, uint8_t *out, size_t cap);

/* Upper bound of the decoded size of len base64 characters. */
size_t b64_decoded_max(size_t len);

#endif
