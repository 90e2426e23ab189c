/* NCnet's compiled CPU kernel: full-batch gradient descent for many runs, hand-derived
 * gradients, the same mathematics as gradcomp/ncnet/_fast.py (see its docstring).
 *
 * Layout (as _fast.py): W[u][i][r], b[u][r], V[u][t][r], c[g][t][r], r = setting * K + seed
 * innermost. Runs are processed in blocks of LANES consecutive runs of one width group; every
 * loop over lanes is vectorised, so each run's arithmetic is the same instruction sequence
 * whatever its lane: a run's result does not depend on the other runs in the batch.
 * Compiled twice, with REAL = float and REAL = double, by gradcomp/ncnet/_compiled.py.
 */
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <stddef.h>
#include <stdlib.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif

#ifndef REAL
#define REAL float
#endif
#define LANES 16

#ifdef REAL_DOUBLE
#define EXP exp
#define EXP_MAX 700.0
#else
#define EXP expf
#define EXP_MAX 88.0f
#endif

/* exp(min(x, EXP_MAX)): never +inf. Under -ffast-math gcc divides by a reciprocal estimate plus a
 * Newton step, which turns 1 / inf into 0 * (2 - inf * 0) = NaN: an overflowing exp in a saturated
 * unit made finite runs NaN (float32, large learning rates). The cap changes no result: for
 * x > EXP_MAX the quotients below are < 2e-38 (float; 1e-304 double), flushed or negligible. */
static inline REAL exp_capped(REAL x) { return EXP(x < (REAL)EXP_MAX ? x : (REAL)EXP_MAX); }

static inline REAL act_f(REAL z, int act) {
    if (act == 0) return (REAL)1 - (REAL)2 / (exp_capped((REAL)2 * z) + (REAL)1); /* tanh */
    if (act == 1) return z > 0 ? z : (REAL)0;                                     /* relu */
    return (REAL)1 / ((REAL)1 + exp_capped(-z));                                  /* sigmoid */
}

static inline REAL act_grad(REAL h, int act) {
    if (act == 0) return (REAL)1 - h * h;
    if (act == 1) return h > 0 ? (REAL)1 : (REAL)0;
    return h * ((REAL)1 - h);
}

static inline __attribute__((always_inline)) void block(REAL *W, REAL *b, REAL *V, REAL *c, const REAL *mask, int u0, int n, int g,
                  const REAL *X, const REAL *Y, const REAL *wp, int k, int P, long B, long r0,
                  int s, int steps, REAL lr, int act) {
    REAL *w = malloc(sizeof(REAL) * LANES * (size_t)(2 * n * k + 6 * n + P * n + 2 * P));
    REAL *bb = w + n * k * LANES, *v = bb + n * LANES, *h = v + 2 * n * LANES;
    REAL *gd = h + P * n * LANES, *dw = gd + 2 * P * LANES, *db = dw + n * k * LANES;
    REAL *dv = db + n * LANES;
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
                    for (int l = 0; l < LANES; l++) z[l] += xi * wi[l];
                }
#pragma omp simd
                for (int l = 0; l < LANES; l++) {
                    hp[l] = act_f(z[l], act);
                    L0[l] += hp[l] * v0[l];
                    L1[l] += hp[l] * v1[l];
                }
            }
            const REAL y0 = Y[(p * 2 + 0) * 4 + s], y1 = Y[(p * 2 + 1) * 4 + s], wpp = wp[p];
#pragma omp simd
            for (int l = 0; l < LANES; l++) {
                gd[(p * 2) * LANES + l] = wpp * ((REAL)1 / ((REAL)1 + exp_capped(-L0[l])) - y0);
                gd[(p * 2 + 1) * LANES + l] =
                    wpp * ((REAL)1 / ((REAL)1 + exp_capped(-L1[l])) - y1);
            }
        }
        for (int j = 0; j < n * k * LANES; j++) dw[j] = 0;
        for (int j = 0; j < n * LANES; j++) db[j] = 0;
        for (int j = 0; j < 2 * n * LANES; j++) dv[j] = 0;
        for (int l = 0; l < LANES; l++) { dc[0][l] = 0; dc[1][l] = 0; }
        for (int p = 0; p < P; p++) {
            const REAL *x = X + p * k;
            const REAL *g0 = gd + (p * 2) * LANES, *g1 = g0 + LANES;
            for (int l = 0; l < LANES; l++) { dc[0][l] += g0[l]; dc[1][l] += g1[l]; }
            for (int u = 0; u < n; u++) {
                const REAL *hp = h + (p * n + u) * LANES;
                const REAL *v0 = v + (u * 2) * LANES, *v1 = v0 + LANES;
                REAL *dv0 = dv + (u * 2) * LANES, *dv1 = dv0 + LANES;
                REAL dz[LANES];
#pragma omp simd
                for (int l = 0; l < LANES; l++) {
                    dv0[l] += g0[l] * hp[l];
                    dv1[l] += g1[l] * hp[l];
                    dz[l] = (g0[l] * v0[l] + g1[l] * v1[l]) * act_grad(hp[l], act);
                    db[u * LANES + l] += dz[l];
                }
                for (int i = 0; i < k; i++) {
                    const REAL xi = x[i];
                    REAL *dwi = dw + (u * k + i) * LANES;
#pragma omp simd
                    for (int l = 0; l < LANES; l++) dwi[l] += xi * dz[l];
                }
            }
        }
        for (int j = 0; j < n * k * LANES; j++) w[j] -= lr * dw[j];
        for (int j = 0; j < n * LANES; j++) bb[j] -= lr * db[j];
        for (int u = 0; u < n; u++)
            for (int t = 0; t < 2; t++) {
                const REAL m = mask[(u0 + u) * 2 + t];
                for (int l = 0; l < LANES; l++)
                    v[(u * 2 + t) * LANES + l] -= lr * m * dv[(u * 2 + t) * LANES + l];
            }
        for (int t = 0; t < 2; t++)
            for (int l = 0; l < LANES; l++) cc[t][l] -= lr * dc[t][l];
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
#if defined(__SSE__)
        /* flush denormals to zero in this thread (restored below): saturated units produce
         * exp() results far below 1e-38, and denormal arithmetic is many times slower */
        const unsigned int csr = _mm_getcsr();
        _mm_setcsr(csr | 0x8040);
#endif
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
#if defined(__SSE__)
        _mm_setcsr(csr);
#endif
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
