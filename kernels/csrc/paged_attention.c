/* Paged attention for CPUs: float32 queries and math over a float32 or bfloat16 KV cache
 * (kv_bf16), one function for decode and (chunked) prefill.
 *
 * Layouts are those of kernels/reference.py: k_cache/v_cache [num_blocks, block_size,
 * num_kv_heads, head_size], block_tables int32 [num_seqs, bt_stride], seq_lens int32,
 * query_start_loc int32 [num_seqs + 1] (NULL: decode, one query token per sequence).
 * q and out are [tokens, num_heads, head_size] with q's token stride given (q is often a
 * view of a fused qkv projection). Query i of a sequence with q_len new tokens and seq_len
 * cached ones sees positions [0, seq_len - q_len + i], or with a sliding window of W only
 * the last W of them (its own included). soft_cap > 0 turns each score s into
 * soft_cap * tanh(s / soft_cap) (Gemma 2's attention logit soft-capping).
 *
 * K/V rows are read in place through the block table, in tiles, with an online softmax:
 * no gather, no padding. All query heads of a KV head (GQA group) and up to a few query
 * tokens share one pass over the rows, so each row is read once per group, not per head.
 */
#define _GNU_SOURCE  /* pthread_setname_np */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <sched.h>
#include <time.h>
#include <unistd.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#ifdef __SSE__
#include <xmmintrin.h>
#endif
#ifdef __AVX2__
#include <immintrin.h>
#endif

#define TILE 64          /* cached positions scored before the running max is updated */
#define MAX_ROWS 32      /* query rows (tokens x group heads) sharing one pass over K/V */
#define MAX_HEAD 256
#define NEG_BIG (-1e30f) /* finite "minus infinity": stays finite under -ffast-math */
#define HELPER_SLICE_NS 100000  /* a helper's scheduler slice: the shortest Linux grants */

typedef struct {
    float *out;
    const float *q;
    const void *k_cache, *v_cache;  /* float or bfloat16 (uint16_t) elements */
    const int32_t *block_tables, *seq_lens, *query_start_loc;
    int64_t q_stride, bt_stride;
    int num_heads, num_kv_heads, head_size, block_size, sliding_window, kv_bf16;
    float scale, soft_cap;
} Params;

/* A work item: query tokens [q0, q1) of sequence seq, with the query heads of KV heads
 * [h0, h1). Several KV heads per item make each token's K/V read one contiguous run. */
typedef struct { int seq, q0, q1, h0, h1; } Chunk;

/* exp(x) for x <= 0 in plain arithmetic (Cody-Waite reduction, degree-6 polynomial,
 * relative error ~2e-7), so that loops calling it vectorize without a vector libm. */
static inline float exp_neg(float x) {
    const float y = x < -80.0f ? -80.0f : x;
    float n = __builtin_floorf(y * 1.44269504f + 0.5f);
    float r = y - n * 0.693145751953125f - n * 1.428606765330187e-6f;
    float p = 1.0f + r * (1.0f + r * (0.5f + r * (1.0f / 6 + r * (1.0f / 24 +
              r * (1.0f / 120 + r * (1.0f / 720))))));
    union { int32_t i; float f; } s = { .i = ((int32_t)n + 127) << 23 };
    /* exactly 0 below e^-80: weights that small would make denormals, which are slow */
    return x < -80.0f ? 0.0f : p * s.f;
}

/* tanh from exp_neg, so capping loops vectorize too (and no libm is needed) */
static inline float tanh_(float x) {
    const float e = exp_neg(-2.0f * (x < 0 ? -x : x));
    const float t = (1.0f - e) / (1.0f + e);
    return x < 0 ? -t : t;
}

/* 8 floats at any alignment. Explicit vectors keep the head_size loops vectorized along the
 * head dimension: left alone, gcc vectorizes across tokens with slow gathers instead. */
typedef float v8 __attribute__((vector_size(32), aligned(4)));
typedef int v8i __attribute__((vector_size(32)));
typedef unsigned int v8u __attribute__((vector_size(32)));
typedef uint16_t v8h __attribute__((vector_size(16), aligned(2)));

/* Cache element i as float. BF (a compile-time constant in every caller) picks bfloat16,
 * whose bits are a float's upper half: widening is a shift, so halving the bytes read costs
 * next to nothing in a loop that waits on memory. */
static inline float ld1(const int BF, const void *base, int64_t i) {
    if (!BF) return ((const float *)base)[i];
    union { uint32_t u; float f; } c = { .u = (uint32_t)((const uint16_t *)base)[i] << 16 };
    return c.f;
}

static inline v8 ld8(const int BF, const void *base, int64_t i) {
    if (!BF) return *(const v8 *)((const float *)base + i);
#ifdef __AVX2__
    const __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)base + i));
    return (v8)_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
#else
    const v8u w = __builtin_convertvector(*(const v8h *)((const uint16_t *)base + i), v8u);
    return (v8)(w << 16);
#endif
}

static inline float dot(const int D, const int BF, const float *restrict a, const void *k,
                        int64_t off) {
    if (D % 8) {
        float d = 0.0f;
        for (int e = 0; e < D; e++) d += a[e] * ld1(BF, k, off + e);
        return d;
    }
    v8 s = *(const v8 *)a * ld8(BF, k, off);
    for (int e = 8; e < D; e += 8) s += *(const v8 *)(a + e) * ld8(BF, k, off + e);
    return (s[0] + s[4]) + (s[1] + s[5]) + ((s[2] + s[6]) + (s[3] + s[7]));
}

static inline void axpy(const int D, const int BF, float *restrict y, float a, const void *v,
                        int64_t off) {
    if (D % 8) {
        for (int e = 0; e < D; e++) y[e] += a * ld1(BF, v, off + e);
        return;
    }
    for (int e = 0; e < D; e += 8) *(v8 *)(y + e) += a * ld8(BF, v, off + e);
}

/* Eight dot products at once: one vector of partial sums per key row, then a transposing
 * reduction, so the horizontal adds cost 3 shuffle levels per 8 scores instead of per one. */
static inline void dot8(const int D, const int BF, const float *restrict q, const void *k,
                        const int64_t *rows, int64_t off, float scale, float *restrict sc) {
    v8 a[8];
    for (int j = 0; j < 8; j++) a[j] = *(const v8 *)q * ld8(BF, k, rows[j] + off);
    for (int e = 8; e < D; e += 8) {
        const v8 qe = *(const v8 *)(q + e);
        for (int j = 0; j < 8; j++) a[j] += qe * ld8(BF, k, rows[j] + off + e);
    }
    const v8i lo = {0, 8, 2, 10, 4, 12, 6, 14}, hi = {1, 9, 3, 11, 5, 13, 7, 15};
    v8 s01 = __builtin_shuffle(a[0], a[1], lo) + __builtin_shuffle(a[0], a[1], hi);
    v8 s23 = __builtin_shuffle(a[2], a[3], lo) + __builtin_shuffle(a[2], a[3], hi);
    v8 s45 = __builtin_shuffle(a[4], a[5], lo) + __builtin_shuffle(a[4], a[5], hi);
    v8 s67 = __builtin_shuffle(a[6], a[7], lo) + __builtin_shuffle(a[6], a[7], hi);
    const v8i lo2 = {0, 1, 8, 9, 4, 5, 12, 13}, hi2 = {2, 3, 10, 11, 6, 7, 14, 15};
    v8 s03 = __builtin_shuffle(s01, s23, lo2) + __builtin_shuffle(s01, s23, hi2);
    v8 s47 = __builtin_shuffle(s45, s67, lo2) + __builtin_shuffle(s45, s67, hi2);
    const v8i lo3 = {0, 1, 2, 3, 8, 9, 10, 11}, hi3 = {4, 5, 6, 7, 12, 13, 14, 15};
    *(v8 *)sc = (__builtin_shuffle(s03, s47, lo3) + __builtin_shuffle(s03, s47, hi3)) * scale;
}

/* Scores of every query row against the tile's tn keys (element offsets rows_at), eight
 * keys per pass: each group of eight key rows is read for all heads before the next group,
 * so reads stream through whole rows (a token's KV heads are contiguous) instead of taking
 * one head's slice from each of a tile's rows per pass, which left the loads waiting. */
static inline __attribute__((always_inline)) void tile_scores(
        const int D, const int BF, const Params *p, int rows, const float *const *qrow,
        const int64_t *kv_off, const int64_t *rows_at, int tn, float (*sc)[TILE]) {
    for (int j0 = 0; j0 < tn; j0 += 8) {
        const int jn = tn - j0 < 8 ? tn - j0 : 8;
        for (int r = 0; r < rows; r++) {
            if (D % 8 == 0 && jn == 8) {
                dot8(D, BF, qrow[r], p->k_cache, rows_at + j0, kv_off[r], p->scale, sc[r] + j0);
                continue;
            }
            for (int j = j0; j < j0 + jn; j++)
                sc[r][j] = dot(D, BF, qrow[r], p->k_cache, rows_at[j] + kv_off[r]) * p->scale;
        }
    }
}

/* The online-softmax step of one row over its visible keys [lo, hi) of the tile: scores
 * become weights (zero outside the range), the running max, sum and output rescale. */
static inline __attribute__((always_inline)) void row_softmax(
        const int D, float *restrict s, int tn, int lo, int hi, float soft_cap,
        float *restrict acc, float *restrict m, float *restrict l) {
    if (soft_cap > 0.0f)  /* a separate loop keeps the uncapped one as it was */
        for (int j = lo; j < hi; j++) s[j] = soft_cap * tanh_(s[j] / soft_cap);
    float mx = *m, sum = 0.0f;
    for (int j = lo; j < hi; j++) mx = s[j] > mx ? s[j] : mx;
    const float alpha = exp_neg(*m - mx);
    for (int j = lo; j < hi; j++) {
        s[j] = exp_neg(s[j] - mx);
        sum += s[j];
    }
    for (int j = 0; j < lo; j++) s[j] = 0.0f;
    for (int j = hi; j < tn; j++) s[j] = 0.0f;
    for (int e = 0; e < D; e++) acc[e] *= alpha;
    *l = *l * alpha + sum;
    *m = mx;
}

/* acc += sum over J keys of w[j] * V[j]: eight output lanes at a time stay in a register
 * while the J rows are added in (J a constant where it can be, so the loop unrolls). */
static inline __attribute__((always_inline)) void values_group(
        const int D, const int BF, const int J, const void *v, const int64_t *rows_at,
        int64_t off, const float *restrict w, float *restrict acc) {
    if (D % 8) {
        for (int j = 0; j < J; j++) axpy(D, BF, acc, w[j], v, rows_at[j] + off);
        return;
    }
    for (int e = 0; e < D; e += 8) {
        v8 a = *(const v8 *)(acc + e);
        for (int j = 0; j < J; j++) a += w[j] * ld8(BF, v, rows_at[j] + off + e);
        *(v8 *)(acc + e) = a;
    }
}

/* Every row's weighted sum of the tile's values, in the same groups of eight key rows. */
static inline __attribute__((always_inline)) void tile_values(
        const int D, const int BF, const Params *p, int rows, const int64_t *kv_off,
        const int64_t *rows_at, int tn, float (*sc)[TILE], float *restrict acc) {
    for (int j0 = 0; j0 < tn; j0 += 8) {
        const int jn = tn - j0 < 8 ? tn - j0 : 8;
        for (int r = 0; r < rows; r++) {
            if (jn == 8)
                values_group(D, BF, 8, p->v_cache, rows_at + j0, kv_off[r], sc[r] + j0,
                             acc + r * D);
            else
                values_group(D, BF, jn, p->v_cache, rows_at + j0, kv_off[r], sc[r] + j0,
                             acc + r * D);
        }
    }
}

/* Element offsets of cached positions [t0, t0 + n) through the block table: one table
 * lookup per block, not an integer division per position. */
static inline void row_offsets(const Params *p, const int32_t *table, int t0, int n,
                               int64_t stride, int64_t *rows_at) {
    const int bs = p->block_size;
    int blk = t0 / bs, off = t0 % bs;
    int64_t base = (int64_t)table[blk] * bs;
    for (int j = 0; j < n; j++) {
        rows_at[j] = (base + off) * stride;
        if (++off == bs && j + 1 < n) {
            off = 0;
            base = (int64_t)table[++blk] * bs;
        }
    }
}

/* Where query row r of chunk c goes in an array laid out as the output. */
static inline float *out_row(float *base, const Params *p, Chunk c, int r) {
    const int G = p->num_heads / p->num_kv_heads, heads = (c.h1 - c.h0) * G;
    const int q_start = p->query_start_loc ? p->query_start_loc[c.seq] : c.seq;
    return base + ((int64_t)(q_start + c.q0 + r / heads) * p->num_heads + c.h0 * G
                   + r % heads) * p->head_size;
}

/* Attention of one chunk, its rows written to base (p->out, or rows laid out as it). */
static inline __attribute__((always_inline)) void run_chunk(const int D, const int BF,
                                                            const Params *p, Chunk c,
                                                            float *base) {
    const int G = p->num_heads / p->num_kv_heads, heads = (c.h1 - c.h0) * G;
    const int seq_len = p->seq_lens[c.seq];
    const int q_start = p->query_start_loc ? p->query_start_loc[c.seq] : c.seq;
    const int q_len = p->query_start_loc ? p->query_start_loc[c.seq + 1] - q_start : 1;
    const int first = seq_len - q_len;  /* position of the sequence's first new token */
    const int rows = (c.q1 - c.q0) * heads, n_kv = first + c.q1;
    const int32_t *table = p->block_tables + (int64_t)c.seq * p->bt_stride;
    const int64_t stride = (int64_t)p->num_kv_heads * D;
    float acc[MAX_ROWS * MAX_HEAD], m[MAX_ROWS], l[MAX_ROWS], sc[MAX_ROWS][TILE];
    const float *qrow[MAX_ROWS];
    int64_t kv_off[MAX_ROWS], rows_at[TILE];
    for (int r = 0; r < rows; r++) {
        m[r] = NEG_BIG;
        l[r] = 0.0f;
        qrow[r] = p->q + (int64_t)(q_start + c.q0 + r / heads) * p->q_stride
                  + (int64_t)(c.h0 * G + r % heads) * D;
        kv_off[r] = (int64_t)(c.h0 + r % heads / G) * D;
    }
    memset(acc, 0, sizeof(float) * rows * D);
    const int W = p->sliding_window;
    /* the chunk's first query sees the earliest key; later rows start further on */
    const int t_lo = W > 0 && first + c.q0 - W + 1 > 0 ? first + c.q0 - W + 1 : 0;
    for (int t0 = t_lo; t0 < n_kv; t0 += TILE) {
        const int tn = n_kv - t0 < TILE ? n_kv - t0 : TILE;
        row_offsets(p, table, t0, tn, stride, rows_at);
        tile_scores(D, BF, p, rows, qrow, kv_off, rows_at, tn, sc);
        for (int r = 0; r < rows; r++) {
            const int pos = first + c.q0 + r / heads;
            const int visible = pos + 1 - t0;  /* causal limit here */
            const int n = visible < tn ? visible : tn;
            const int skip = W > 0 && pos - W + 1 > t0 ? pos - W + 1 - t0 : 0;  /* window */
            row_softmax(D, sc[r], tn, skip, n > skip ? n : skip, p->soft_cap, acc + r * D,
                        m + r, l + r);
        }
        tile_values(D, BF, p, rows, kv_off, rows_at, tn, sc, acc);
    }
    for (int r = 0; r < rows; r++) {
        float *restrict o = out_row(base, p, c, r);
        const float inv = 1.0f / l[r];
        for (int e = 0; e < D; e++) o[e] = acc[r * D + e] * inv;
    }
}

/* Constant head sizes let the compiler unroll and vectorize the head_size loops fully. */
#define HEAD_SIZES(BF) \
    switch (p->head_size) { \
    case 8: run_chunk(8, BF, p, c, base); break; \
    case 16: run_chunk(16, BF, p, c, base); break; \
    case 32: run_chunk(32, BF, p, c, base); break; \
    case 64: run_chunk(64, BF, p, c, base); break; \
    case 128: run_chunk(128, BF, p, c, base); break; \
    default: run_chunk(p->head_size, BF, p, c, base); \
    }

static void run_item(const Params *p, Chunk c, float *base) {
    if (p->kv_bf16) {
        HEAD_SIZES(1)
    } else {
        HEAD_SIZES(0)
    }
}

static int q_len_of(const Params *p, int s) {
    return p->query_start_loc ? p->query_start_loc[s + 1] - p->query_start_loc[s] : 1;
}

/* Splits the work into items of at most MAX_ROWS query rows: as many KV heads per item as
 * fit while there are still a few items per thread, then as many query tokens as fit. */
static int make_chunks(const Params *p, int num_seqs, int num_threads, Chunk *chunks) {
    const int G = p->num_heads / p->num_kv_heads, Hkv = p->num_kv_heads;
    int hpi = MAX_ROWS / G < Hkv ? MAX_ROWS / G : Hkv, per = 1;
    for (;; hpi = (hpi + 1) / 2) {
        per = MAX_ROWS / (hpi * G);
        long items = 0;
        for (int s = 0; s < num_seqs; s++) items += (q_len_of(p, s) + per - 1) / per;
        if (hpi == 1 || items * ((Hkv + hpi - 1) / hpi) >= 4L * num_threads) break;
    }
    int n = 0;
    for (int s = 0; s < num_seqs; s++) {
        const int q_len = q_len_of(p, s);
        for (int q0 = 0; q0 < q_len; q0 += per)
            for (int h0 = 0; h0 < Hkv; h0 += hpi)
                chunks[n++] = (Chunk){ s, q0, q0 + per < q_len ? q0 + per : q_len, h0,
                                       h0 + hpi < Hkv ? h0 + hpi : Hkv };
    }
    return n;
}

/* ---- Threads --------------------------------------------------------------------------
 * The calling thread never waits for a helper. A serving engine's core has one core to
 * itself and shares the rest with its HTTP frontend, so a helper is often not running when
 * a call starts, or is preempted halfway through an item; a barrier (OpenMP's) then stalls
 * the whole step on it. Here every work item has a state. Helpers compute the items they
 * take into rows of the job's own; once no item is free, the caller copies out the items
 * helpers finished and computes again every one they have not, whatever their state.
 * Helpers sleep between calls and run at the caller's priority with a short scheduler slice
 * (below): woken by a call, one preempts what else runs on its CPU for the length of its
 * items, so it comes in time for most of the call, and it uses no CPU time between calls.
 * (At SCHED_IDLE, spinning between calls, they came to 60 % of a server's calls and did
 * 27 % of the items; now 92 % and 39 %.) The caller only ever try-locks the lock they take.
 * A helper still inside an item the caller took over reads the inputs after the call
 * returned: the caller keeps them alive while pool_inside() > 0 (kernels/cpu.py); the job's
 * own memory lives until its last helper leaves it. While torch runs on every CPU the
 * kernel may use, its OpenMP threads are all awake anyway and split the items instead
 * (work()). */

enum { FREE, BY_CALLER, BY_HELPER, HELPED };

typedef struct {
    Params p;
    Chunk *chunks;
    float *rows;            /* the helpers' results, laid out as the output */
    unsigned char *state;   /* per item, atomic */
    int total, helpers;
    int next, joined, refs; /* atomic */
} Job;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    Job *job;             /* the call helpers may join (a finished one, or NULL, between) */
    unsigned long gen;    /* counts published jobs: a helper takes each one once */
    int started;          /* helper threads started */
    int inside;           /* helpers inside a job (atomic) */
} pool = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, NULL, 0, 0, 0 };

static void job_release(Job *job) {
    if (__atomic_sub_fetch(&job->refs, 1, __ATOMIC_ACQ_REL) == 0) free(job);
}

static int take(Job *job, int i, int from, int to) {
    unsigned char expected = (unsigned char)from;
    return __atomic_compare_exchange_n(&job->state[i], &expected, (unsigned char)to, 0,
                                       __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
}

/* The next item nobody has been handed yet, or -1 when none is left. */
static int next_item(Job *job) {
    const int i = __atomic_fetch_add(&job->next, 1, __ATOMIC_RELAXED);
    return i < job->total ? i : -1;
}

static void help(Job *job) {
    for (int i; (i = next_item(job)) >= 0;) {
        if (!take(job, i, FREE, BY_HELPER)) continue;
        run_item(&job->p, job->chunks[i], job->rows);
        take(job, i, BY_HELPER, HELPED);  /* fails if the caller took it over meanwhile */
    }
}

/* Flushes denormals to zero in this thread and returns the old state, for restore_fp(): a
 * shared library gets no -ffast-math startup code for that, and products of tiny weights and
 * values are otherwise ~100x slower. */
static unsigned int flush_denormals(void) {
#ifdef __SSE__
    const unsigned int csr = _mm_getcsr();
    _mm_setcsr(csr | 0x8040);
    return csr;
#else
    return 0;
#endif
}

static void restore_fp(unsigned int state) {
#ifdef __SSE__
    _mm_setcsr(state);
#else
    (void)state;
#endif
}

/* EEVDF (Linux 6.12 on) lets a thread ask for a shorter slice than the default ~3 ms: its
 * deadline comes sooner, so on waking it preempts a longer-sliced thread instead of queueing
 * behind it. The nice value stays as the process has it; older kernels ignore the slice. */
static void short_slice(void) {
#if defined(__linux__) && defined(SYS_sched_setattr)
    struct {
        uint32_t size, policy;
        uint64_t flags;
        int32_t nice;
        uint32_t priority;
        uint64_t runtime, deadline, period;
    } attr = { .size = sizeof attr, .policy = SCHED_OTHER,
               .nice = getpriority(PRIO_PROCESS, 0), .runtime = HELPER_SLICE_NS };
    syscall(SYS_sched_setattr, 0, &attr, 0);  /* best effort: the default slice works too */
#endif
}

static void *helper_main(void *unused) {
    (void)unused;
    unsigned long seen = 0;
    flush_denormals();
    short_slice();
    for (;;) {
        pthread_mutex_lock(&pool.mu);
        while (pool.job == NULL || pool.gen == seen) pthread_cond_wait(&pool.cv, &pool.mu);
        Job *job = pool.job;
        seen = pool.gen;
        __atomic_add_fetch(&job->refs, 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&pool.inside, 1, __ATOMIC_RELAXED);
        pthread_mutex_unlock(&pool.mu);
        if (__atomic_add_fetch(&job->joined, 1, __ATOMIC_RELAXED) <= job->helpers) help(job);
        __atomic_sub_fetch(&pool.inside, 1, __ATOMIC_RELEASE);
        job_release(job);
    }
    return NULL;
}

/* after fork() the child has the pool's memory but none of its threads */
static void pool_after_fork(void) {
    pthread_mutex_init(&pool.mu, NULL);
    pthread_cond_init(&pool.cv, NULL);
    pool.job = NULL;
    pool.started = pool.inside = 0;
}

static void start_helpers(int n) {
    static int hooked;
    if (!hooked) hooked = pthread_atfork(NULL, NULL, pool_after_fork) == 0;
    for (; pool.started < n; pool.started++) {
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        const int rc = pthread_create(&t, &attr, helper_main, NULL);
        pthread_attr_destroy(&attr);
        if (rc) break;  /* fewer helpers, same results */
        pthread_setname_np(t, "pagedserve-attn");  /* for top -H and py-spy */
    }
}

static void copy_helped(const Job *job, int i) {
    const Chunk c = job->chunks[i];
    const int n = (c.q1 - c.q0) * (c.h1 - c.h0) * (job->p.num_heads / job->p.num_kv_heads);
    for (int r = 0; r < n; r++)
        memcpy(out_row(job->p.out, &job->p, c, r), out_row(job->rows, &job->p, c, r),
               sizeof(float) * job->p.head_size);
}

/* The caller's part: free items first, then every item a helper has not finished. */
static void run_job(Job *job) {
    for (int i; (i = next_item(job)) >= 0;)
        if (take(job, i, FREE, BY_CALLER)) run_item(&job->p, job->chunks[i], job->p.out);
    for (int i = 0; i < job->total; i++) {
        for (;;) {  /* again when a helper moved the item on between our load and take */
            const int s = __atomic_load_n(&job->state[i], __ATOMIC_ACQUIRE);
            if (s == HELPED) copy_helped(job, i);
            else if (s != BY_CALLER && take(job, i, s, BY_CALLER))
                run_item(&job->p, job->chunks[i], job->p.out);
            else if (s != BY_CALLER)
                continue;
            break;
        }
    }
}

/* Helpers inside a call right now (a finished call's inputs must outlive them). */
int pool_inside(void) {
    return __atomic_load_n(&pool.inside, __ATOMIC_ACQUIRE);
}

static Job *new_job(const Params *p, int num_seqs, int num_tokens, int threads, int pooled) {
    const size_t most = (size_t)(num_tokens + num_seqs) * p->num_kv_heads;
    const size_t rows = pooled ? (size_t)num_tokens * p->num_heads * p->head_size : 0;
    Job *job = malloc(sizeof(Job) + rows * sizeof(float) + most * (sizeof(Chunk) + 1));
    if (!job) return NULL;
    *job = (Job){ .p = *p, .refs = 1 };
    job->rows = (float *)(job + 1);
    job->chunks = (Chunk *)(job->rows + rows);
    job->state = (unsigned char *)(job->chunks + most);
    job->total = make_chunks(p, num_seqs, threads, job->chunks);
    memset(job->state, FREE, (size_t)job->total);
    job->helpers = pooled ? (threads < job->total ? threads : job->total) - 1 : 0;
    return job;
}

/* OpenMP's threads, all running: each takes the next item until none is left. */
static void work(Job *job) {
    const unsigned int fp = flush_denormals();
    for (int i; (i = next_item(job)) >= 0;) run_item(&job->p, job->chunks[i], job->p.out);
    restore_fp(fp);
}

/* Shows job to the helpers, unless one of them holds the pool's lock right now (then the
 * caller runs alone rather than block on a thread that may not be running). The pool keeps
 * a reference to the job it shows: a helper arriving late finds it allocated, and done. */
static int show(Job *job) {
    if (pthread_mutex_trylock(&pool.mu)) return 0;
    start_helpers(job->helpers);
    Job *old = pool.job;
    __atomic_add_fetch(&job->refs, 1, __ATOMIC_RELAXED);
    pool.job = job;
    __atomic_add_fetch(&pool.gen, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&pool.cv);
    pthread_mutex_unlock(&pool.mu);
    if (old) job_release(old);
    return 1;
}

/* Takes a finished job off show (or leaves that to the next show(), as above). */
static void hide(Job *job) {
    if (pthread_mutex_trylock(&pool.mu)) return;
    const int shown = pool.job == job;
    if (shown) pool.job = NULL;
    pthread_mutex_unlock(&pool.mu);
    if (shown) job_release(job);
}

/* Returns 0, or -1 for shapes this kernel does not take (the caller falls back).
 * helpers == 0: num_threads OpenMP threads (torch's, when they are all running);
 * helpers > 0: the calling thread, with that many pool helpers (see "Threads"). */
int paged_attention(float *out, const float *q, int64_t q_stride, const void *k_cache,
                    const void *v_cache, const int32_t *block_tables, int64_t bt_stride,
                    const int32_t *seq_lens, const int32_t *query_start_loc, int num_seqs,
                    int num_tokens, int num_heads, int num_kv_heads, int head_size,
                    int block_size, float scale, int sliding_window, float soft_cap,
                    int kv_bf16, int num_threads, int helpers) {
    if (head_size > MAX_HEAD || num_kv_heads <= 0 || num_heads % num_kv_heads
        || num_heads / num_kv_heads > MAX_ROWS)
        return -1;
    const Params p = { out, q, k_cache, v_cache, block_tables, seq_lens, query_start_loc,
                       q_stride, bt_stride, num_heads, num_kv_heads, head_size, block_size,
                       sliding_window, kv_bf16 != 0, scale, soft_cap };
    const int pooled = helpers > 0, threads = pooled ? helpers + 1 : num_threads;
    Job *job = new_job(&p, num_seqs, num_tokens, threads < 1 ? 1 : threads, pooled);
    if (!job) return -1;
    if (pooled) {
        const unsigned int fp = flush_denormals();
        const int shown = job->helpers > 0 && show(job);
        run_job(job);
        if (shown) hide(job);
        restore_fp(fp);
    } else {
        const int n = threads < job->total ? threads : job->total;
#pragma omp parallel num_threads(n) if (n > 1)
        work(job);
    }
    job_release(job);
    return 0;
}
