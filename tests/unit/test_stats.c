/* test_stats.c — engine/stats: the median of odd and even counts, of
 * unsorted input with repeats and negatives, of one value, and of none. */
#include <check.h>

#include "tests/unit/common_test.h"

#include "engine/calib/stats.h"

START_TEST(test_median_odd_even) {
    double odd[] = {5.0, -1.0, 3.0, 3.0, 9.0};
    ck_assert_double_eq(eng_median(odd, 5), 3.0);
    ck_assert_double_eq(odd[0], -1.0);   /* sorted in place */
    ck_assert_double_eq(odd[4], 9.0);
    double even[] = {4.0, 1.0, 10.0, 2.0};
    ck_assert_double_eq(eng_median(even, 4), 3.0);   /* (2 + 4) / 2 */
}
END_TEST

START_TEST(test_median_edges) {
    double one[] = {7.5};
    ck_assert_double_eq(eng_median(one, 1), 7.5);
    double none[] = {1.0};
    ck_assert_double_eq(eng_median(none, 0), 0.0);
    ck_assert_double_eq(eng_median(none, -3), 0.0);
    ck_assert_double_eq(none[0], 1.0);   /* untouched */
}
END_TEST

int main(void) {
    Suite *s = suite_create("stats");
    TCase *tc = tcase_create("stats");
    tcase_add_test(tc, test_median_odd_even);
    tcase_add_test(tc, test_median_edges);
    suite_add_tcase(s, tc);
    return test_run_suite(s);
}
