/* NCnet's compiled CPU kernel: full-batch gradient descent for many runs, hand-derived
 * gradients, the same mathematics as gradcomp/ncnet/_fast.py (see its docstring).
 *
 * Layout (as _fast.py): W[u][i][r], b[u][r], V[u][t][r], c[g][t][r], r = setting * K + seed
 * innermost. Runs are processed in blocks of LANES consecutive runs of one width group; every
 * loop over lanes is vectorised, so each run's arithmetic is the same instruction sequence
 * whatever its lane: a run's result does not depend on the other runs in the batch.
 * Compiled twice, with REAL = float and REAL = double, by gradcomp/ncnet/_compiled.py.
 */
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stddef.h>
#include <stdlib.h>

#ifndef REAL
#define REAL float
#endif
#define LANES 16

/* The elementary functions and sums below are written out operation by operation, and
 * gradcomp/ncnet/_fast.py performs the same operations in the same order on tensors: with the
 * kernel compiled without contraction into fused multiply-adds (-ffp-contract=off) and without
 * -ffast-math, every run's parameters are bit-identical in both backends (IEEE-754 rounds each
 * +, −, ×, / the same way everywhere). Constants are double literals rounded to REAL, as torch
 * rounds a Python float to the tensor's dtype. */
#ifdef REAL_DOUBLE
typedef long long IREAL;
#define EXP_LO (-708.0)
#define EXP_HI 708.0
#define MAGIC 6755399441055744.0          /* 1.5 · 2^52: x + MAGIC − MAGIC rounds x to an integer */
#define MAGIC_BITS 0x4338000000000000LL   /* its bit pattern */
#define EXP_BIAS 1023LL
#define MANT 52
#define C1 0.693145751953125              /* ln 2 = C1 + C2, C1 with few bits (n · C1 exact) */
#define C2 1.42860682030941723212e-6
#define NPOLY 12
static const double POLY[NPOLY] = {/* 1/13!, 1/12!, ..., 1/2! (Taylor; |r| ≤ ln2/2: < 1e-17) */
                                   1.6059043836821613e-10, 2.08767569878681e-09,
                                   2.505210838544172e-08,  2.755731922398589e-07,
                                   2.7557319223985893e-06, 2.48015873015873e-05,
                                   0.0001984126984126984,  0.001388888888888889,
                                   0.008333333333333333,   0.041666666666666664,
                                   0.16666666666666666,    0.5};
#else
typedef int IREAL;
#define EXP_LO (-87.0)
#define EXP_HI 87.0
#define MAGIC 12582912.0 /* 1.5 · 2^23 */
#define MAGIC_BITS 0x4B400000
#define EXP_BIAS 127
#define MANT 23
#define C1 0.693359375 /* Cody & Waite (1980); cephes expf */
#define C2 (-2.12194440e-4)
#define NPOLY 6
static const double POLY[NPOLY] = {/* cephes expf minimax coefficients (≤ 1 ulp) */
                                   1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
                                   4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1};
#endif

/* exp(clamp(x, EXP_LO, EXP_HI)) by Cody-Waite range reduction: n = round(x / ln 2),
 * r = (x − n C1) − n C2, exp(r) ≈ ((poly(r) · r²) + r) + 1 (Horner), times 2^n built from the
 * exponent bits. The clamp keeps every result, and 1 / (1 + result), a normal number (no
 * overflow, no subnormal operands); it changes no result by more than 1e-37 (float; 1e-307
 * double). A NaN stays NaN. Mirrored by gradcomp.ncnet._fast.exp_fixed. */
static inline REAL exp_fixed(REAL x) {
    x = x < (REAL)EXP_LO ? (REAL)EXP_LO : x;
    x = x > (REAL)EXP_HI ? (REAL)EXP_HI : x;
    REAL t = x * (REAL)1.4426950408889634;
    t = t + (REAL)MAGIC;
    const REAL n = t - (REAL)MAGIC;
    REAL r = x - n * (REAL)C1;
    r = r - n * (REAL)C2;
    const REAL z = r * r;
    REAL p = (REAL)POLY[0];
    for (int j = 1; j < NPOLY; j++) p = p * r + (REAL)POLY[j];
    REAL y = p * z;
    y = y + r;
    y = y + (REAL)1;
    union {
        REAL f;
        IREAL i;
    } bits, scale;
    bits.f = t;
    scale.i = (bits.i - (IREAL)MAGIC_BITS + (IREAL)EXP_BIAS) << MANT;
    return y * scale.f;
}

/* 1 / (1 + exp(−x)) */
static inline REAL sigmoid_fixed(REAL x) { return (REAL)1 / (exp_fixed(-x) + (REAL)1); }

static inline REAL act_f(REAL z, int act) {
    if (act == 0) return (REAL)1 - (REAL)2 * ((REAL)1 / (exp_fixed(z * (REAL)2) + (REAL)1));
    if (act == 1) return z > 0 ? z : (REAL)0; /* relu */
    return sigmoid_fixed(z);
}

static inline REAL act_grad(REAL h, int act) {
    if (act == 0) return (REAL)1 - h * h;
    if (act == 1) return h > 0 ? (REAL)1 : (REAL)0;
    return h * ((REAL)1 - h);
}

/* Σ_p a[p][·] over p < P in place, result in a[0][·], in the fixed pairwise order of
 * gradcomp.ncnet._fast._tree_sum: while m > 1 rows remain, row p += row p + ⌈m/2⌉ for
 * p < ⌊m/2⌋, and m ← ⌈m/2⌉. */
static inline void tree_sum(REAL *a, int P) {
    for (int m = P; m > 1;) {
        const int h = m / 2, mm = m - h;
        for (int p = 0; p < h; p++) {
            REAL *dst = a + p * LANES;
            const REAL *src = a + (p + mm) * LANES;
#pragma omp simd
            for (int l = 0; l < LANES; l++) dst[l] = dst[l] + src[l];
        }
        m = mm;
    }
}

static inline __attribute__((always_inline)) void block(REAL *W, REAL *b, REAL *V, REAL *c, const REAL *mask, int u0, int n, int g,
                  const REAL *X, const REAL *Y, const REAL *wp, int k, int P, long B, long r0,
                  int s, int steps, REAL lr, int act) {
    REAL *w = malloc(sizeof(REAL) * LANES * (size_t)(2 * n * k + 6 * n + 2 * P * n + 3 * P));
    REAL *bb = w + n * k * LANES, *v = bb + n * LANES, *h = v + 2 * n * LANES;
    REAL *gd = h + P * n * LANES, *dw = gd + 2 * P * LANES, *db = dw + n * k * LANES;
    REAL *dv = db + n * LANES, *dz = dv + 2 * n * LANES, *tmp = dz + P * n * LANES;
    REAL cc[2][LANES], dc[2][LANES];
    for (int u = 0; u < n; u++) {
        for (int i = 0; i < k; i++)
            for (int l = 0; l < LANES; l++)
                w[(u * k + i) * LANES + l] = W[((long)(u0 + u) * k + i) * B + r0 + l];
        for (int l = 0; l < LANES; l++) bb[u * LANES + l] = b[(long)(u0 + u) * B + r0 + l];
        for (int t = 0; t < 2; t++)
            for (int l = 0; l < LANES; l++)
                v[(u * 2 + t) * LANES + l] = V[((long)(u0 + u) * 2 + t) * B + r0 + l];
    }
    for (int t = 0; t < 2; t++)
        for (int l = 0; l < LANES; l++) cc[t][l] = c[((long)g * 2 + t) * B + r0 + l];

    for (int step = 0; step < steps; step++) {
        /* forward: z = (b + x_0 w_0) + x_1 w_1 + ...; L_t = (c_t + h_0 v_0t) + h_1 v_1t + ... */
        for (int p = 0; p < P; p++) {
            const REAL *x = X + p * k;
            REAL L0[LANES], L1[LANES];
            for (int l = 0; l < LANES; l++) { L0[l] = cc[0][l]; L1[l] = cc[1][l]; }
            for (int u = 0; u < n; u++) {
                REAL z[LANES];
                REAL *hp = h + (p * n + u) * LANES;
                const REAL *v0 = v + (u * 2) * LANES, *v1 = v0 + LANES;
                for (int l = 0; l < LANES; l++) z[l] = bb[u * LANES + l];
                for (int i = 0; i < k; i++) {
                    const REAL xi = x[i];
                    const REAL *wi = w + (u * k + i) * LANES;
#pragma omp simd
                    for (int l = 0; l < LANES; l++) z[l] = z[l] + xi * wi[l];
                }
#pragma omp simd
                for (int l = 0; l < LANES; l++) {
                    hp[l] = act_f(z[l], act);
                    L0[l] = L0[l] + hp[l] * v0[l];
                    L1[l] = L1[l] + hp[l] * v1[l];
                }
            }
            const REAL y0 = Y[(p * 2 + 0) * 4 + s], y1 = Y[(p * 2 + 1) * 4 + s], wpp = wp[p];
#pragma omp simd
            for (int l = 0; l < LANES; l++) {
                gd[(p * 2) * LANES + l] = (sigmoid_fixed(L0[l]) - y0) * wpp;
                gd[(p * 2 + 1) * LANES + l] = (sigmoid_fixed(L1[l]) - y1) * wpp;
            }
        }
        /* backward: every sum over patterns by tree_sum */
        for (int t = 0; t < 2; t++) {
            for (int p = 0; p < P; p++)
                for (int l = 0; l < LANES; l++) tmp[p * LANES + l] = gd[(p * 2 + t) * LANES + l];
            tree_sum(tmp, P);
            for (int l = 0; l < LANES; l++) dc[t][l] = tmp[l];
        }
        for (int p = 0; p < P; p++) {
            const REAL *g0 = gd + (p * 2) * LANES, *g1 = g0 + LANES;
            for (int u = 0; u < n; u++) {
                const REAL *hp = h + (p * n + u) * LANES;
                const REAL *v0 = v + (u * 2) * LANES, *v1 = v0 + LANES;
                REAL *dzp = dz + (p * n + u) * LANES;
#pragma omp simd
                for (int l = 0; l < LANES; l++)
                    dzp[l] = (g0[l] * v0[l] + g1[l] * v1[l]) * act_grad(hp[l], act);
            }
        }
        for (int u = 0; u < n; u++) {
            for (int t = 0; t < 2; t++) {
                for (int p = 0; p < P; p++)
#pragma omp simd
                    for (int l = 0; l < LANES; l++)
                        tmp[p * LANES + l] =
                            gd[(p * 2 + t) * LANES + l] * h[(p * n + u) * LANES + l];
                tree_sum(tmp, P);
                for (int l = 0; l < LANES; l++) dv[(u * 2 + t) * LANES + l] = tmp[l];
            }
            for (int p = 0; p < P; p++)
                for (int l = 0; l < LANES; l++) tmp[p * LANES + l] = dz[(p * n + u) * LANES + l];
            tree_sum(tmp, P);
            for (int l = 0; l < LANES; l++) db[u * LANES + l] = tmp[l];
            for (int i = 0; i < k; i++) {
                for (int p = 0; p < P; p++) {
                    const REAL xi = X[p * k + i];
#pragma omp simd
                    for (int l = 0; l < LANES; l++)
                        tmp[p * LANES + l] = xi * dz[(p * n + u) * LANES + l];
                }
                tree_sum(tmp, P);
                for (int l = 0; l < LANES; l++) dw[(u * k + i) * LANES + l] = tmp[l];
            }
        }
        /* θ ← θ − lr · ∂θ (V: θ − (lr · mask) · ∂V) */
        for (int j = 0; j < n * k * LANES; j++) w[j] = w[j] - lr * dw[j];
        for (int j = 0; j < n * LANES; j++) bb[j] = bb[j] - lr * db[j];
        for (int u = 0; u < n; u++)
            for (int t = 0; t < 2; t++) {
                const REAL m = lr * mask[(u0 + u) * 2 + t];
                for (int l = 0; l < LANES; l++)
                    v[(u * 2 + t) * LANES + l] = v[(u * 2 + t) * LANES + l] - m * dv[(u * 2 + t) * LANES + l];
            }
        for (int t = 0; t < 2; t++)
            for (int l = 0; l < LANES; l++) cc[t][l] = cc[t][l] - lr * dc[t][l];
    }

    for (int u = 0; u < n; u++) {
        for (int i = 0; i < k; i++)
            for (int l = 0; l < LANES; l++)
                W[((long)(u0 + u) * k + i) * B + r0 + l] = w[(u * k + i) * LANES + l];
        for (int l = 0; l < LANES; l++) b[(long)(u0 + u) * B + r0 + l] = bb[u * LANES + l];
        for (int t = 0; t < 2; t++)
            for (int l = 0; l < LANES; l++)
                V[((long)(u0 + u) * 2 + t) * B + r0 + l] = v[(u * 2 + t) * LANES + l];
    }
    for (int t = 0; t < 2; t++)
        for (int l = 0; l < LANES; l++) c[((long)g * 2 + t) * B + r0 + l] = cc[t][l];
    free(w);
}

/* The argument list of ncnet_train, declared once (an X-macro): the struct below and the layout
 * that ncnet_args_layout() reports are both generated from it; gradcomp/ncnet/_compiled.py
 * compares that layout (field names, offsets, size) with its ctypes Structure before the first
 * call. `size` must be sizeof(struct ncnet_args): a caller built for another layout is refused. */
#define NCNET_ARGS(F)                                                                          \
    F(long, size)          /* sizeof(struct ncnet_args) */                                     \
    F(REAL *, W)           /* W[u][i][r] */                                                    \
    F(REAL *, b)           /* b[u][r] */                                                       \
    F(REAL *, V)           /* V[u][t][r] */                                                    \
    F(REAL *, c)           /* c[g][t][r] */                                                    \
    F(const REAL *, mask)  /* mask[u][t] */                                                    \
    F(const int *, gstart) /* G + 1 unit offsets of the width groups */                        \
    F(const REAL *, X)     /* X[p][i] input patterns */                                        \
    F(const REAL *, Y)     /* Y[p][t][s] targets per setting pair */                           \
    F(const REAL *, wp)    /* wp[p] pattern weights */                                         \
    F(long, K)             /* seeds per setting pair (a multiple of LANES) */                  \
    F(int, G)              /* width groups */                                                  \
    F(int, k)              /* inputs */                                                        \
    F(int, P)              /* patterns */                                                      \
    F(int, steps)          /* steps to take */                                                 \
    F(int, act)            /* 0 tanh, 1 relu, 2 sigmoid */                                     \
    F(REAL, lr)            /* learning rate */

#define NCNET_FIELD(type, name) type name;
struct ncnet_args { NCNET_ARGS(NCNET_FIELD) };
#undef NCNET_FIELD

#define NCNET_NAME(type, name) #name ","
/* "size,W,b,...,lr,": the field names in declaration order */
const char *ncnet_args_names(void) { return NCNET_ARGS(NCNET_NAME); }
#undef NCNET_NAME

/* Writes sizeof(struct ncnet_args), then each field's offset, into out[0..n); returns how many
 * values the layout has (1 + fields), so a caller with a shorter buffer learns it. */
#define NCNET_OFFSET(type, name) if (i < n) out[i] = (long)offsetof(struct ncnet_args, name); i++;
int ncnet_args_layout(long *out, int n) {
    int i = 0;
    if (i < n) out[i] = (long)sizeof(struct ncnet_args);
    i++;
    NCNET_ARGS(NCNET_OFFSET)
    return i;
}
#undef NCNET_OFFSET

/* Train all runs for `steps` steps in place. gstart[g]..gstart[g+1] are group g's units;
 * K (seeds per setting) must be a multiple of LANES. Returns 0, -1 on bad sizes, -2 when
 * args->size is not sizeof(struct ncnet_args). */
int ncnet_train(const struct ncnet_args *args) {
    if (args == NULL || args->size != (long)sizeof(struct ncnet_args)) return -2;
    REAL *W = args->W, *b = args->b, *V = args->V, *c = args->c;
    const REAL *mask = args->mask, *X = args->X, *Y = args->Y, *wp = args->wp;
    const int *gstart = args->gstart;
    const long K = args->K;
    const int G = args->G, k = args->k, P = args->P, steps = args->steps, act = args->act;
    const REAL lr = args->lr;
    if (K % LANES != 0) return -1;
    const long B = 4 * K, blocks = B / LANES;
#pragma omp parallel
    {
#pragma omp for schedule(dynamic) collapse(2)
        for (int g = 0; g < G; g++)
            for (long j = 0; j < blocks; j++) {
                const long r0 = j * LANES;
                const int u0 = gstart[g], n = gstart[g + 1] - gstart[g], s = (int)(r0 / K);
                /* a constant activation per call, so that each lane loop is branch-free */
                if (act == 0)
                    block(W, b, V, c, mask, u0, n, g, X, Y, wp, k, P, B, r0, s, steps, lr, 0);
                else if (act == 1)
                    block(W, b, V, c, mask, u0, n, g, X, Y, wp, k, P, B, r0, s, steps, lr, 1);
                else
                    block(W, b, V, c, mask, u0, n, g, X, Y, wp, k, P, B, r0, s, steps, lr, 2);
            }
    }
    return 0;
}

int ncnet_lanes(void) { return LANES; }

void ncnet_set_threads(int n) {
#ifdef _OPENMP
    omp_set_num_threads(n);
#else
    (void)n;
#endif
}
