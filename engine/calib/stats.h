/* stats.h — the summary statistics the benchmarks and calibration take of
 * repeated timings (shared machines are noisy: medians, not means). */
#ifndef PPD_STATS_H
#define PPD_STATS_H

/* The median of v[0..n-1], sorting v in place: the middle value, or the mean
 * of the two middle ones for even n; 0 for n < 1. */
double eng_median(double *v, int n);

#endif
