/* One step of a rule over a list of CPU tensors, in one pass over memory (torchopt_zoo/tiers/cpu.py).
 *
 * The tensors are named by an address table, column-major, n rows: the parameter, the gradient,
 * the step counter, the NSTATE state tensors S0..S3 (0 where the rule's options leave one out), then
 * the NSCALAR per-tensor 0-dim state Z0.. (step_t). The rule's code is pasted in at three marks:
 *   TENSOR   per tensor, after its step counter is advanced (t, the new count): per-tensor
 *            scalars into u[0..3] (bias corrections, ...) and updates of its 0-dim state;
 *   REDUCED  once, with `total` = the sum over every element of REDUCE_TERM (only where REDUCE is
 *            defined): a group-wide statistic (AdaGrad-Norm's sum of g^2), which may update
 *            *group_scalar and set R (a T the element code reads);
 *   ELEMENT  per element: reads and updates p (T), S0[j].., with g the prepared gradient.
 * The gradient is prepared as the reference tier prepares it: divided by AMP's grad scale
 * (HAS_SCALE), negated (MAXIMIZE), plus wd * p (WD == 1), or p *= 1 - lr wd (WD == 2).
 * Arithmetic is in T, the parameters' dtype, as torch's kernels do it for float32 and float64.
 * Work is split into chunks of whole tensors or CHUNK elements, shared by OpenMP threads; the
 * reduction adds the chunks' partial sums in a fixed order, so a step is deterministic. A thread
 * walks its chunk's halves (the reduction: quarters) side by side: one stream of reads per array
 * keeps too few reads in flight to reach the memory bandwidth (about half of it for a reduction). */
#include <tgmath.h> /* sqrt, exp, pow of T's own precision */
#include <stdint.h>
#include <stdlib.h>

#if defined(__x86_64__) && defined(__GLIBC__) && defined(LIBMVEC)
/* glibc's vector exp (libmvec, within 4 ulp), so the element loops that call exp vectorise */
#pragma omp declare simd notinbranch
float (expf)(float);
#pragma omp declare simd notinbranch
double (exp)(double);
#endif

typedef SCALAR T;
typedef STEP_T step_t;

#define CHUNK 65536

static inline T maximum(T a, T b) { return (a > b || a != a) ? a : b; } /* torch.maximum: NaN wins */
static inline T sign(T x) { return x > 0 ? (T)1 : (x < 0 ? (T)-1 : (T)0); } /* torch.sign (NaN -> 0) */
static inline T lerp(T a, T b, T w) { return w < (T)0.5 ? a + w * (b - a) : b - (b - a) * ((T)1 - w); } /* torch.lerp */
static inline T sigmoid(T x) { return (T)1 / ((T)1 + exp(-x)); }

struct chunk { int64_t i, start, end; };

#define COLUMN(c, i) (table[(int64_t)(c) * n + (i)])
#define STATE(k, i) ((T *)COLUMN(3 + (k), (i)))
#define Z(k) (*(step_t *)COLUMN(3 + NSTATE + (k), i))

#define PREPARE(p, g)                      \
    if (HAS_SCALE) g = g / (T)scale;       \
    if (MAXIMIZE) g = -g;                  \
    if (WD == 1) g = g + (T)wd * p;        \
    if (WD == 2) p = p * (T)(1 - lr * wd)

#ifdef REDUCE
/* one element's REDUCE_TERM, of the prepared gradient */
static inline T term(T p, T g, double scale, double lr, double wd)
{
    PREPARE(p, g);
    return REDUCE_TERM;
}
#endif

/* the rule's update of element j (the template's only copy of the rule's element code) */
#define CONSTANTS k0, k1, k2, k3, k4, u0, u1, u2, u3, lr_t, R, scale, lr, wd
static inline __attribute__((always_inline)) void element(
    T *restrict P, const T *restrict G, T *restrict S0, T *restrict S1, T *restrict S2, const int64_t j,
    const T k0, const T k1, const T k2, const T k3, const T k4, const T u0, const T u1, const T u2, const T u3,
    const T lr_t, const T R, const double scale, const double lr, const double wd)
{
    (void)S0; (void)S1; (void)S2; (void)k0; (void)k1; (void)k2; (void)k3; (void)k4;
    (void)u0; (void)u1; (void)u2; (void)u3; (void)lr_t; (void)R; (void)scale; (void)lr; (void)wd;
    T p = P[j], g = G[j];
    PREPARE(p, g);
    /*ELEMENT*/
    P[j] = p;
}

int zoo_step(int64_t n, const int64_t *table, const int64_t *numel, const double *k, double lr, double wd,
             double scale, T *group_scalar, int threads)
{
    double *u = malloc(sizeof(double) * 4 * (size_t)(n > 0 ? n : 1));
    if (u == NULL) return 1;
    int64_t chunks = 0;
    for (int64_t i = 0; i < n; ++i) {
        step_t *step = (step_t *)COLUMN(2, i);
        *step += 1;
        const double t = (double)*step;
        double *ui = u + 4 * i;
        (void)t; (void)ui;
        /*TENSOR*/
        chunks += (numel[i] + CHUNK - 1) / CHUNK;
    }
    struct chunk *work = malloc(sizeof(struct chunk) * (size_t)(chunks > 0 ? chunks : 1));
    if (work == NULL) { free(u); return 1; }
    int64_t c = 0;
    for (int64_t i = 0; i < n; ++i)
        for (int64_t start = 0; start < numel[i]; start += CHUNK, ++c) {
            work[c].i = i;
            work[c].start = start;
            work[c].end = start + CHUNK < numel[i] ? start + CHUNK : numel[i];
        }
    (void)group_scalar;
    T R = 0;
    (void)R;
#ifdef REDUCE
    double *partial = malloc(sizeof(double) * (size_t)(chunks > 0 ? chunks : 1));
    if (partial == NULL) { free(u); free(work); return 1; }
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads)
    for (int64_t w = 0; w < chunks; ++w) {
        const int64_t i = work[w].i;
        const T *restrict P = (const T *)COLUMN(0, i);
        const T *restrict G = (const T *)COLUMN(1, i);
        /* the chunk's four quarters side by side */
        const int64_t start = work[w].start, q = (work[w].end - start) / 4;
        T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
        for (int64_t j = start; j < start + q; ++j) {
            s0 += term(P[j], G[j], scale, lr, wd);
            s1 += term(P[j + q], G[j + q], scale, lr, wd);
            s2 += term(P[j + 2 * q], G[j + 2 * q], scale, lr, wd);
            s3 += term(P[j + 3 * q], G[j + 3 * q], scale, lr, wd);
        }
        for (int64_t j = start + 4 * q; j < work[w].end; ++j) s0 += term(P[j], G[j], scale, lr, wd);
        partial[w] = (double)s0 + (double)s1 + (double)s2 + (double)s3;
    }
    double total = 0;
    for (int64_t w = 0; w < chunks; ++w) total += partial[w];
    free(partial);
    /*REDUCED*/
#endif
#pragma omp parallel for schedule(dynamic, 4) num_threads(threads)
    for (int64_t w = 0; w < chunks; ++w) {
        const int64_t i = work[w].i;
        T *restrict P = (T *)COLUMN(0, i);
        const T *restrict G = (const T *)COLUMN(1, i);
        T *restrict S0 = NSTATE > 0 ? STATE(0, i) : NULL;
        T *restrict S1 = NSTATE > 1 ? STATE(1, i) : NULL;
        T *restrict S2 = NSTATE > 2 ? STATE(2, i) : NULL;
        const T k0 = (T)k[0], k1 = (T)k[1], k2 = (T)k[2], k3 = (T)k[3], k4 = (T)k[4];
        const T u0 = (T)u[4 * i], u1 = (T)u[4 * i + 1], u2 = (T)u[4 * i + 2], u3 = (T)u[4 * i + 3];
        const T lr_t = (T)lr;
        /* the chunk's two halves side by side (they do not overlap: simd is safe) */
        const int64_t h = (work[w].end - work[w].start) / 2, a = work[w].start, b = a + h;
#pragma omp simd
        for (int64_t j = 0; j < h; ++j) {
            element(P + a, G + a, S0 ? S0 + a : S0, S1 ? S1 + a : S1, S2 ? S2 + a : S2, j, CONSTANTS);
            element(P + b, G + b, S0 ? S0 + b : S0, S1 ? S1 + b : S1, S2 ? S2 + b : S2, j, CONSTANTS);
        }
        for (int64_t j = a + 2 * h; j < work[w].end; ++j) element(P, G, S0, S1, S2, j, CONSTANTS);
    }
    free(work);
    free(u);
    return 0;
}
