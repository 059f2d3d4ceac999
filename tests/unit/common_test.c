/* common_test.c — the helpers of common_test.h. */
#include "common_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kernels/cpu/cpu_isa.h"

const char *test_model_path(void) {
    const char *p = getenv("PPD_TEST_MODEL");
    return p && *p ? p : "models/SmolLM2-135M-Instruct.Q4_1.gguf";
}

const char *test_ppd_bin(void) {
    const char *p = getenv("PPD_BIN");
    return p && *p ? p : "build/ppd";
}

int test_run_capture(char *const argv[], char *out, size_t out_cap, char *err, size_t err_cap) {
    char out_path[] = "/tmp/ppd-test-out-XXXXXX", err_path[] = "/tmp/ppd-test-err-XXXXXX";
    int fo = mkstemp(out_path), fe = mkstemp(err_path);
    ck_assert(fo >= 0 && fe >= 0);
    fflush(stdout);
    pid_t pid = fork();
    ck_assert(pid >= 0);
    if (pid == 0) {
        dup2(fo, 1);
        dup2(fe, 2);
        execv(argv[0], argv);
        _exit(127);
    }
    int status;
    waitpid(pid, &status, 0);
    char *bufs[2] = {out, err};
    size_t caps[2] = {out_cap, err_cap};
    int fds[2] = {fo, fe};
    for (int i = 0; i < 2; i++) {
        lseek(fds[i], 0, SEEK_SET);
        ssize_t n = read(fds[i], bufs[i], caps[i] - 1);
        bufs[i][n > 0 ? n : 0] = 0;
        close(fds[i]);
    }
    unlink(out_path);
    unlink(err_path);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* How much longer than the AVX-512 path a path may take.  Measured on the
 * model-sized tests (whole forward passes, PPD trees of up to 64 rows) and on
 * the prefill of an 800-token prompt: the AVX2 path takes up to 1.3 times as
 * long, the plain C path 7 to 26 times.  The factors leave room above that. */
static double path_time_factor(void) {
    switch (kq_isa()) {
    case KQ_ISA_SCALAR: return 30.0;
    case KQ_ISA_AVX2: return 2.0;
    default: return 1.0;
    }
}

void test_set_timeout(TCase *tc, double seconds) { tcase_set_timeout(tc, seconds * path_time_factor()); }

int test_case_count(const char *env, int n) {
    const char *v = getenv(env);
    if (v && atoi(v) > 0) return atoi(v);
    return kq_isa() == KQ_ISA_SCALAR && n >= 10 ? n / 10 : n;
}

int test_run_suite(Suite *s) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed ? 1 : 0;
}
