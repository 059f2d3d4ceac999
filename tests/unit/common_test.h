/* common_test.h — what several unit-test binaries share: where the model and
 * the `ppd` binary are, running a command with its output captured, and the
 * Check main() every suite ends with.  Linked into every test binary. */
#ifndef PPD_COMMON_TEST_H
#define PPD_COMMON_TEST_H

#include <check.h>
#include <stddef.h>

/* PPD_TEST_MODEL (set by `make test-unit`), default the committed model path. */
const char *test_model_path(void);
/* PPD_BIN (set by `make test-unit`), default build/ppd. */
const char *test_ppd_bin(void);
/* Run argv[0] with stdout and stderr captured into out/err (NUL-terminated,
 * truncated at cap); returns the exit status, or 128+signal when killed. */
int test_run_capture(char *const argv[], char *out, size_t out_cap, char *err, size_t err_cap);
/* tcase_set_timeout with the limit scaled to the CPU kernels' path: the
 * limits are sized for the SIMD paths, and the plain C path (PPD_CPU_ISA=scalar,
 * or a CPU without AVX2) computes the same results several times slower.
 * CK_TIMEOUT_MULTIPLIER still applies on top. */
void test_set_timeout(TCase *tc, double seconds);
/* How many of n model-sized cases (golden prompts) a test runs: the number in
 * the environment variable env when it is set; else n, or a tenth of n when
 * n >= 10 on the plain C path, which computes the same bits many times slower
 * (the kernel tests check every SIMD path against it op by op). */
int test_case_count(const char *env, int n);
/* Run the suite (stdout line-buffered, so figures printed by a failing forked
 * test survive); returns the process exit status. */
int test_run_suite(Suite *s);

#endif
