#include "tiny_test.h"

int tt_failures_in_test;
int tt_passed;
int tt_failed;

int main(void)
{
    run_codec_tests();
    run_proplet_tests();
    printf("%d passed, %d failed\n", tt_passed, tt_failed);
    return tt_failed == 0 ? 0 : 1;
}
