/* Gram matrix G[t][s] = sum_p F[t][p] F[s][p] of T float32 rows of length P (row stride ld).
 *
 * Why: a BLAS sgemm for an [T, P] x [P, T] product with T <= 16 and P ~ 1e5 runs far below the
 * machine's peak (measured 15 GFLOP/s on this project's CPU, against 60 for the weight gradient
 * it follows); this kernel keeps 4 x 2 output tiles in vector registers (8 independent
 * accumulators, 6 loads per 8 fused multiply-adds) and is 2-3x faster (see
 * gradcomp/recorder/rows/cgram.py and benchmarks/record_overhead.py).
 *
 * Accuracy: each tile accumulates a chunk of CH columns in float (8 lanes), the chunk's sums are
 * added in double; the columns are cut into at most PARTS fixed parts whose sums are added in
 * part order, so the result does not depend on the number of threads (deterministic).
 */
#include <stdlib.h>
#include <string.h>

#define CH 2048
#define PARTS 64

typedef float v8 __attribute__((vector_size(32)));

static inline v8 load8(const float *p) {
    v8 v;
    memcpy(&v, p, sizeof v);
    return v;
}

static inline double hsum(v8 v) {
    double s = 0.0;
    for (int k = 0; k < 8; k++) s += v[k];
    return s;
}

/* acc[a*2+b] += sum over columns [0, n) of row(i0+a) * row(j0+b); rows past T alias row T-1 */
static void tile(const float *F, long T, long ld, long i0, long j0, long n, double *acc) {
    const float *a[4], *b[2];
    for (int k = 0; k < 4; k++) a[k] = F + (i0 + k < T ? i0 + k : T - 1) * ld;
    for (int k = 0; k < 2; k++) b[k] = F + (j0 + k < T ? j0 + k : T - 1) * ld;
    v8 z = {0};
    v8 c00 = z, c01 = z, c10 = z, c11 = z, c20 = z, c21 = z, c30 = z, c31 = z;
    long p = 0;
    for (; p + 8 <= n; p += 8) {
        v8 y0 = load8(b[0] + p), y1 = load8(b[1] + p), x;
        x = load8(a[0] + p); c00 += x * y0; c01 += x * y1;
        x = load8(a[1] + p); c10 += x * y0; c11 += x * y1;
        x = load8(a[2] + p); c20 += x * y0; c21 += x * y1;
        x = load8(a[3] + p); c30 += x * y0; c31 += x * y1;
    }
    double s[8] = {hsum(c00), hsum(c01), hsum(c10), hsum(c11),
                   hsum(c20), hsum(c21), hsum(c30), hsum(c31)};
    for (; p < n; p++)
        for (int i = 0; i < 4; i++)
            for (int j = 0; j < 2; j++) s[i * 2 + j] += (double)a[i][p] * b[j][p];
    for (int k = 0; k < 8; k++) acc[k] += s[k];
}

/* out: T*T floats (row-major, symmetric), summed in double. Returns 0, or -1 when memory is
 * short. */
int gram_f32(const float *F, long T, long P, long ld, float *out, int threads) {
    long chunks = (P + CH - 1) / CH;
    long parts = chunks < PARTS ? chunks : PARTS;
    double *part = (double *)calloc((size_t)((parts + 1) * T * T), sizeof(double));
    if (part == NULL) return -1;
    double *sum = part + parts * T * T;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (long q = 0; q < parts; q++) {
        double *g = part + q * T * T;
        long c_lo = chunks * q / parts, c_hi = chunks * (q + 1) / parts;
        for (long c = c_lo; c < c_hi; c++) {
            long p0 = c * CH, n = P - p0 < CH ? P - p0 : CH;
            for (long i0 = 0; i0 < T; i0 += 4)
                for (long j0 = 0; j0 < i0 + 4 && j0 < T; j0 += 2) {
                    double acc[8] = {0};
                    tile(F + p0, T, ld, i0, j0, n, acc);
                    for (int i = 0; i < 4; i++)
                        for (int j = 0; j < 2; j++)
                            if (i0 + i < T && j0 + j <= i0 + i)
                                g[(i0 + i) * T + j0 + j] += acc[i * 2 + j];
                }
        }
    }
    for (long q = 0; q < parts; q++)
        for (long k = 0; k < T * T; k++) sum[k] += part[q * T * T + k];
    for (long t = 0; t < T; t++)
        for (long s = 0; s <= t; s++) out[t * T + s] = out[s * T + t] = (float)sum[t * T + s];
    free(part);
    return 0;
}
