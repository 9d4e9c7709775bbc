/* A minimal test framework: TEST() functions registered with RUN(), CHECK*() macros that record
 * failures and carry on, and a final "N passed, M failed" line the pytest wrapper parses. */
#ifndef TINY_TEST_H
#define TINY_TEST_H

#include <stdio.h>
#include <string.h>

extern int tt_failures_in_test;
extern int tt_passed;
extern int tt_failed;

void run_codec_tests(void);
void run_proplet_tests(void);

#define CHECK(cond)                                                                          \
    do {                                                                                     \
        if (!(cond)) {                                                                       \
            printf("  %s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond);                \
            tt_failures_in_test++;                                                           \
        }                                                                                    \
    } while (0)

#define CHECK_INT(a, b)                                                                      \
    do {                                                                                     \
        long long tt_a = (long long)(a), tt_b = (long long)(b);                              \
        if (tt_a != tt_b) {                                                                  \
            printf("  %s:%d: %s == %lld, expected %lld\n", __FILE__, __LINE__, #a, tt_a, tt_b); \
            tt_failures_in_test++;                                                           \
        }                                                                                    \
    } while (0)

#define CHECK_STR(a, b)                                                                      \
    do {                                                                                     \
        const char *tt_a = (a), *tt_b = (b);                                                 \
        if (tt_a == NULL || strcmp(tt_a, tt_b) != 0) {                                       \
            printf("  %s:%d: %s == \"%s\", expected \"%s\"\n", __FILE__, __LINE__, #a,        \
                   tt_a ? tt_a : "(null)", tt_b);                                            \
            tt_failures_in_test++;                                                           \
        }                                                                                    \
    } while (0)

#define CHECK_CONTAINS(hay, needle)                                                          \
    do {                                                                                     \
        const char *tt_h = (hay), *tt_n = (needle);                                          \
        if (tt_h == NULL || strstr(tt_h, tt_n) == NULL) {                                    \
            printf("  %s:%d: \"%s\" does not contain \"%s\"\n", __FILE__, __LINE__,           \
                   tt_h ? tt_h : "(null)", tt_n);                                            \
            tt_failures_in_test++;                                                           \
        }                                                                                    \
    } while (0)

#define RUN(fn)                                                                              \
    do {                                                                                     \
        tt_failures_in_test = 0;                                                             \
        fn();                                                                                \
        if (tt_failures_in_test == 0) {                                                      \
            tt_passed++;                                                                     \
        } else {                                                                             \
            tt_failed++;                                                                     \
            printf("FAIL %s\n", #fn);                                                        \
        }                                                                                    \
    } while (0)

#endif
