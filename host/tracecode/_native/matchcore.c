/*
 * TraceCode native matcher kernel (optional CPython extension `tracecode._matchcore`).
 *
 * For each diagnosis key (TEK, rolling start, rolling period):
 *     RPIK  = HKDF-SHA256(ikm=TEK, salt=none, info="EN-RPIK", L=16)
 *           = HMAC-SHA256(PRK, "EN-RPIK" || 0x01)[:16],  PRK = HMAC-SHA256(32 zero bytes, TEK)
 *     RPI_j = AES-128-ECB(RPIK, "EN-RPI" || 6 zero bytes || uint32_le(ENIN_j))
 * and every RPI is looked up among the heard RPIs: a bitmap on the low bits of the first 8
 * bytes first, then a binary search in the sorted, de-duplicated heard RPIs.
 *
 * SHA-256 is plain C (with a SHA-NI compression used when the CPU has it); AES-128 uses
 * AES-NI. Only x86-64 with GCC/Clang is supported; elsewhere, or on a CPU without AES-NI,
 * `available()` returns False and the Python matcher path is used. Functions that use
 * special instructions carry a `target` attribute, so nothing else in the module needs them
 * and importing never executes an unsupported instruction.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define MC_X86 1
#include <cpuid.h>
#include <immintrin.h>
#else
#define MC_X86 0
#endif

/* ------------------------------------------------------------------------- SHA-256 (C) */

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static const uint32_t IV256[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

#if defined(__GNUC__) || defined(__clang__)
#define MC_MAYBE_UNUSED __attribute__((unused))
#else
#define MC_MAYBE_UNUSED
#endif

#define ROR32(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

/* One compression of a block given as 16 big-endian words already in host order. */
static void sha256_block_c(uint32_t st[8], const uint32_t in[16])
{
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = in[i];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR32(w[i - 15], 7) ^ ROR32(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR32(w[i - 2], 17) ^ ROR32(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = st[0], b = st[1], c = st[2], d = st[3], e = st[4], f = st[5], g = st[6], h = st[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (ROR32(e, 6) ^ ROR32(e, 11) ^ ROR32(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (ROR32(a, 2) ^ ROR32(a, 13) ^ ROR32(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1;
        d = c; c = b; b = a; a = t1 + t2;
    }
    st[0] += a; st[1] += b; st[2] += c; st[3] += d;
    st[4] += e; st[5] += f; st[6] += g; st[7] += h;
}

typedef void (*sha256_block_fn)(uint32_t st[8], const uint32_t in[16]);

#if MC_X86
/*
 * SHA-NI compression. The state lives in two registers in the order the instructions want:
 * ABEF and CDGH (most significant dword first). Message words are host-order uint32 already,
 * so no byte swap is needed when loading them.
 */
__attribute__((target("sha,sse4.1")))
static void sha256_block_ni(uint32_t st[8], const uint32_t in[16])
{
    __m128i dcba = _mm_loadu_si128((const __m128i *)&st[0]); /* D C B A (msd..lsd) */
    __m128i hgfe = _mm_loadu_si128((const __m128i *)&st[4]); /* H G F E */
    __m128i badc = _mm_shuffle_epi32(dcba, 0xB1);              /* C D A B */
    __m128i fehg = _mm_shuffle_epi32(hgfe, 0x1B);              /* E F G H */
    __m128i abef = _mm_alignr_epi8(badc, fehg, 8);             /* A B E F */
    __m128i cdgh = _mm_blend_epi16(fehg, badc, 0xF0);          /* C D G H */
    __m128i abef0 = abef, cdgh0 = cdgh;

    __m128i m[4];
    for (int i = 0; i < 4; i++)
        m[i] = _mm_loadu_si128((const __m128i *)&in[4 * i]);

    for (int r = 0; r < 16; r++) {
        __m128i cur = m[r & 3];
        if (r >= 4) {
            /* W[4r..4r+3] from the four previous groups. */
            __m128i t = _mm_sha256msg1_epu32(m[r & 3], m[(r + 1) & 3]);
            t = _mm_add_epi32(t, _mm_alignr_epi8(m[(r + 3) & 3], m[(r + 2) & 3], 4));
            cur = _mm_sha256msg2_epu32(t, m[(r + 3) & 3]);
            m[r & 3] = cur;
        }
        __m128i wk = _mm_add_epi32(cur, _mm_loadu_si128((const __m128i *)&K256[4 * r]));
        cdgh = _mm_sha256rnds2_epu32(cdgh, abef, wk);
        abef = _mm_sha256rnds2_epu32(abef, cdgh, _mm_shuffle_epi32(wk, 0x0E));
        /* The first call leaves ABEF (after 2 rounds) in `cdgh`; the second gives ABEF after
         * 4 rounds, and the old ABEF after 2 rounds is exactly the new CDGH. */
    }
    abef = _mm_add_epi32(abef, abef0);
    cdgh = _mm_add_epi32(cdgh, cdgh0);
    /* back to A..H in memory order */
    uint32_t a4[4], c4[4];
    _mm_storeu_si128((__m128i *)a4, abef); /* lsd..msd: F E B A */
    _mm_storeu_si128((__m128i *)c4, cdgh); /* H G D C */
    st[0] = a4[3]; st[1] = a4[2]; st[4] = a4[1]; st[5] = a4[0];
    st[2] = c4[3]; st[3] = c4[2]; st[6] = c4[1]; st[7] = c4[0];
}
#endif

static sha256_block_fn sha256_block = sha256_block_c;

/* ------------------------------------------------------------------------- HKDF (RPIK) */

/* HMAC-SHA256 keyed with 32 zero bytes: the states after the ipad and opad blocks. */
static uint32_t zero_ipad_state[8], zero_opad_state[8];

static void init_zero_key_states(void)
{
    uint32_t blk[16];
    memcpy(zero_ipad_state, IV256, sizeof IV256);
    for (int i = 0; i < 16; i++)
        blk[i] = 0x36363636u;
    sha256_block_c(zero_ipad_state, blk);
    memcpy(zero_opad_state, IV256, sizeof IV256);
    for (int i = 0; i < 16; i++)
        blk[i] = 0x5c5c5c5cu;
    sha256_block_c(zero_opad_state, blk);
}

static inline uint32_t load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static inline void store_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

/* RPIK of one TEK: six SHA-256 compressions. */
static void derive_rpik(const uint8_t tek[16], uint8_t out[16])
{
    uint32_t blk[16], st[8], prk[8];

    /* Extract: PRK = HMAC(zeros32, TEK). Inner message is 16 bytes after a 64-byte pad block. */
    memset(blk, 0, sizeof blk);
    for (int i = 0; i < 4; i++)
        blk[i] = load_be32(tek + 4 * i);
    blk[4] = 0x80000000u;
    blk[15] = (64 + 16) * 8;
    memcpy(st, zero_ipad_state, sizeof st);
    sha256_block(st, blk);
    memset(blk, 0, sizeof blk);
    for (int i = 0; i < 8; i++)
        blk[i] = st[i];
    blk[8] = 0x80000000u;
    blk[15] = (64 + 32) * 8;
    memcpy(prk, zero_opad_state, sizeof prk);
    sha256_block(prk, blk);

    /* Expand, one block: T(1) = HMAC(PRK, "EN-RPIK" || 0x01). */
    uint32_t ist[8], ost[8];
    memcpy(ist, IV256, sizeof ist);
    memcpy(ost, IV256, sizeof ost);
    for (int i = 0; i < 8; i++)
        blk[i] = prk[i] ^ 0x36363636u;
    for (int i = 8; i < 16; i++)
        blk[i] = 0x36363636u;
    sha256_block(ist, blk);
    for (int i = 0; i < 8; i++)
        blk[i] = prk[i] ^ 0x5c5c5c5cu;
    for (int i = 8; i < 16; i++)
        blk[i] = 0x5c5c5c5cu;
    sha256_block(ost, blk);

    memset(blk, 0, sizeof blk);
    blk[0] = 0x454e2d52u; /* "EN-R" */
    blk[1] = 0x50494b01u; /* "PIK" 0x01 */
    blk[2] = 0x80000000u;
    blk[15] = (64 + 8) * 8;
    sha256_block(ist, blk);
    memset(blk, 0, sizeof blk);
    for (int i = 0; i < 8; i++)
        blk[i] = ist[i];
    blk[8] = 0x80000000u;
    blk[15] = (64 + 32) * 8;
    sha256_block(ost, blk);
    for (int i = 0; i < 4; i++)
        store_be32(out + 4 * i, ost[i]);
}

/* ------------------------------------------------------------------------- lookup */

typedef struct {
    const uint8_t *bitmap; /* 1 << bits bits */
    uint64_t mask;
    const uint8_t *sorted; /* n sorted, distinct 16-byte RPIs */
    Py_ssize_t n;
} heard_index;

MC_MAYBE_UNUSED static int heard_contains(const heard_index *ix, const uint8_t rpi[16])
{
    Py_ssize_t lo = 0, hi = ix->n;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        int c = memcmp(ix->sorted + 16 * mid, rpi, 16);
        if (c == 0)
            return 1;
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return 0;
}

typedef struct {
    uint32_t key;
    uint32_t interval;
    uint8_t rpi[16];
} hit;

typedef struct {
    hit *v;
    size_t n, cap;
    int oom;
} hit_list;

MC_MAYBE_UNUSED static void hits_push(hit_list *h, uint32_t key, uint32_t interval, const uint8_t rpi[16])
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? 2 * h->cap : 64;
        hit *v = realloc(h->v, cap * sizeof(hit));
        if (!v) {
            h->oom = 1;
            return;
        }
        h->v = v;
        h->cap = cap;
    }
    h->v[h->n].key = key;
    h->v[h->n].interval = interval;
    memcpy(h->v[h->n].rpi, rpi, 16);
    h->n++;
}

/* ------------------------------------------------------------------------- AES-128 (AES-NI) */

#if MC_X86

#define EXPAND_STEP(k, rcon)                                                         \
    do {                                                                             \
        __m128i t_ = _mm_shuffle_epi32(_mm_aeskeygenassist_si128((k), (rcon)), 0xFF); \
        (k) = _mm_xor_si128((k), _mm_slli_si128((k), 4));                            \
        (k) = _mm_xor_si128((k), _mm_slli_si128((k), 4));                            \
        (k) = _mm_xor_si128((k), _mm_slli_si128((k), 4));                            \
        (k) = _mm_xor_si128((k), t_);                                                \
    } while (0)

__attribute__((target("aes,sse4.1")))
static inline void aes128_expand(const uint8_t key[16], __m128i rk[11])
{
    __m128i k = _mm_loadu_si128((const __m128i *)key);
    rk[0] = k;
    EXPAND_STEP(k, 0x01); rk[1] = k;
    EXPAND_STEP(k, 0x02); rk[2] = k;
    EXPAND_STEP(k, 0x04); rk[3] = k;
    EXPAND_STEP(k, 0x08); rk[4] = k;
    EXPAND_STEP(k, 0x10); rk[5] = k;
    EXPAND_STEP(k, 0x20); rk[6] = k;
    EXPAND_STEP(k, 0x40); rk[7] = k;
    EXPAND_STEP(k, 0x80); rk[8] = k;
    EXPAND_STEP(k, 0x1B); rk[9] = k;
    EXPAND_STEP(k, 0x36); rk[10] = k;
}

#define LANES 8

/* Encrypts the PaddedData of `count` (<= LANES) intervals from `enin` into out[]. */
__attribute__((target("aes,sse4.1")))
static inline void rpi_lanes(const __m128i rk[11], __m128i pad, uint32_t enin, int count, __m128i out[LANES])
{
    __m128i b[LANES];
    if (count == LANES) {
        for (int i = 0; i < LANES; i++)
            b[i] = _mm_xor_si128(_mm_insert_epi32(pad, (int)(enin + (uint32_t)i), 3), rk[0]);
        for (int r = 1; r < 10; r++)
            for (int i = 0; i < LANES; i++)
                b[i] = _mm_aesenc_si128(b[i], rk[r]);
        for (int i = 0; i < LANES; i++)
            out[i] = _mm_aesenclast_si128(b[i], rk[10]);
    } else {
        for (int i = 0; i < count; i++) {
            __m128i x = _mm_xor_si128(_mm_insert_epi32(pad, (int)(enin + (uint32_t)i), 3), rk[0]);
            for (int r = 1; r < 10; r++)
                x = _mm_aesenc_si128(x, rk[r]);
            out[i] = _mm_aesenclast_si128(x, rk[10]);
        }
    }
}

static const uint8_t PAD_PREFIX[16] = {'E', 'N', '-', 'R', 'P', 'I', 0, 0, 0, 0, 0, 0, 0, 0, 0, 0};

typedef struct {
    uint8_t tek[16];
    uint32_t start;
    uint32_t period;
} key_in;

/* Derive + look up. Runs without the GIL. */
__attribute__((target("aes,sse4.1")))
static void scan_keys(const key_in *keys, Py_ssize_t n, uint32_t base, const heard_index *ix, hit_list *hits)
{
    const __m128i pad = _mm_loadu_si128((const __m128i *)PAD_PREFIX);
    __m128i rk[11], out[LANES];
    uint8_t rpik[16];
    for (Py_ssize_t k = 0; k < n; k++) {
        derive_rpik(keys[k].tek, rpik);
        aes128_expand(rpik, rk);
        uint32_t start = keys[k].start, period = keys[k].period;
        for (uint32_t j = 0; j < period; j += LANES) {
            int cnt = (int)(period - j < LANES ? period - j : LANES);
            rpi_lanes(rk, pad, start + j, cnt, out);
            for (int i = 0; i < cnt; i++) {
                uint64_t p = (uint64_t)_mm_cvtsi128_si64(out[i]) & ix->mask;
                if (ix->bitmap[p >> 3] & (1u << (p & 7))) {
                    uint8_t r[16];
                    _mm_storeu_si128((__m128i *)r, out[i]);
                    if (heard_contains(ix, r))
                        hits_push(hits, base + (uint32_t)k, start + j + (uint32_t)i, r);
                }
            }
        }
    }
}

/* Derive only: all RPIs, concatenated. Runs without the GIL. */
__attribute__((target("aes,sse4.1")))
static void derive_keys(const key_in *keys, Py_ssize_t n, uint8_t *dst)
{
    const __m128i pad = _mm_loadu_si128((const __m128i *)PAD_PREFIX);
    __m128i rk[11], out[LANES];
    uint8_t rpik[16];
    for (Py_ssize_t k = 0; k < n; k++) {
        derive_rpik(keys[k].tek, rpik);
        aes128_expand(rpik, rk);
        uint32_t start = keys[k].start, period = keys[k].period;
        for (uint32_t j = 0; j < period; j += LANES) {
            int cnt = (int)(period - j < LANES ? period - j : LANES);
            rpi_lanes(rk, pad, start + j, cnt, out);
            for (int i = 0; i < cnt; i++) {
                _mm_storeu_si128((__m128i *)dst, out[i]);
                dst += 16;
            }
        }
    }
}

#endif /* MC_X86 */

/* ------------------------------------------------------------------------- CPU features */

static int have_aes = 0, have_sha = 0;

static void detect_cpu(void)
{
#if MC_X86
    __builtin_cpu_init();
    have_aes = __builtin_cpu_supports("aes") && __builtin_cpu_supports("sse4.1");
    unsigned int a, b, c, d;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d))
        have_sha = ((b >> 29) & 1) && __builtin_cpu_supports("sse4.1");
#endif
}

/* ------------------------------------------------------------------------- Python glue */

static int require_kernel(void)
{
    if (!have_aes) {
        PyErr_SetString(PyExc_RuntimeError, "native matcher kernel needs x86-64 with AES-NI");
        return 0;
    }
    return 1;
}

static int read_tek(PyObject *obj, uint8_t out[16])
{
    Py_buffer b;
    if (PyBytes_CheckExact(obj)) { /* the common case, without the buffer protocol */
        if (PyBytes_GET_SIZE(obj) != 16) {
            PyErr_SetString(PyExc_ValueError, "a TEK is 16 bytes");
            return 0;
        }
        memcpy(out, PyBytes_AS_STRING(obj), 16);
        return 1;
    }
    if (PyObject_GetBuffer(obj, &b, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        PyErr_SetString(PyExc_TypeError, "a TEK is a bytes-like object");
        return 0;
    }
    if (b.len != 16) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "a TEK is 16 bytes");
        return 0;
    }
    memcpy(out, b.buf, 16);
    PyBuffer_Release(&b);
    return 1;
}

#if MC_X86
/* (tek, start, period) tuples -> key_in array (malloc'd; caller frees). NULL on error. */
static key_in *read_chunk(PyObject *chunk, Py_ssize_t *n_out, uint64_t *total_out)
{
    PyObject *seq = PySequence_Fast(chunk, "keys must be a sequence of (tek, start, period)");
    if (!seq)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    key_in *keys = PyMem_RawMalloc((size_t)(n ? n : 1) * sizeof(key_in));
    if (!keys) {
        Py_DECREF(seq);
        PyErr_NoMemory();
        return NULL;
    }
    uint64_t total = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 3) {
            PyErr_SetString(PyExc_TypeError, "each key must be a (tek, start, period) tuple");
            goto fail;
        }
        if (!read_tek(PyTuple_GET_ITEM(t, 0), keys[i].tek))
            goto fail;
        long long start = PyLong_AsLongLong(PyTuple_GET_ITEM(t, 1));
        if (start == -1 && PyErr_Occurred())
            goto fail;
        long long period = PyLong_AsLongLong(PyTuple_GET_ITEM(t, 2));
        if (period == -1 && PyErr_Occurred())
            goto fail;
        if (start < 0 || period < 0 || start + period > 0x100000000LL) {
            PyErr_SetString(PyExc_ValueError, "rolling start/period out of range");
            goto fail;
        }
        keys[i].start = (uint32_t)start;
        keys[i].period = (uint32_t)period;
        total += (uint64_t)period;
    }
    Py_DECREF(seq);
    *n_out = n;
    if (total_out)
        *total_out = total;
    return keys;
fail:
    Py_DECREF(seq);
    PyMem_RawFree(keys);
    return NULL;
}
#endif

PyDoc_STRVAR(available_doc, "available() -> bool: True when this CPU can run the kernel (x86-64 with AES-NI).");

static PyObject *mc_available(PyObject *self, PyObject *noargs)
{
    return PyBool_FromLong(have_aes);
}

PyDoc_STRVAR(features_doc, "features() -> dict: CPU features the kernel uses.");

static PyObject *mc_features(PyObject *self, PyObject *noargs)
{
    return Py_BuildValue("{s:O,s:O}", "aes", have_aes ? Py_True : Py_False, "sha",
                         (have_sha && sha256_block != sha256_block_c) ? Py_True : Py_False);
}

PyDoc_STRVAR(rpik_doc, "rpik(tek) -> bytes: HKDF-SHA256(tek, salt=None, info=b'EN-RPIK', 16).");

static PyObject *mc_rpik(PyObject *self, PyObject *arg)
{
    uint8_t tek[16], out[16];
    if (!read_tek(arg, tek))
        return NULL;
    derive_rpik(tek, out);
    return PyBytes_FromStringAndSize((const char *)out, 16);
}

PyDoc_STRVAR(derive_doc, "derive(keys) -> bytes: the RPIs of every (tek, start, period), concatenated.");

static PyObject *mc_derive(PyObject *self, PyObject *chunk)
{
    if (!require_kernel())
        return NULL;
#if MC_X86
    Py_ssize_t n;
    uint64_t total;
    key_in *keys = read_chunk(chunk, &n, &total);
    if (!keys)
        return NULL;
    if (total > (uint64_t)PY_SSIZE_T_MAX / 16) {
        PyMem_RawFree(keys);
        return PyErr_NoMemory();
    }
    PyObject *out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(16 * total));
    if (!out) {
        PyMem_RawFree(keys);
        return NULL;
    }
    uint8_t *dst = (uint8_t *)PyBytes_AS_STRING(out);
    Py_BEGIN_ALLOW_THREADS
    derive_keys(keys, n, dst);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(keys);
    return out;
#else
    return NULL;
#endif
}

static int cmp16(const void *a, const void *b)
{
    return memcmp(a, b, 16);
}

PyDoc_STRVAR(build_index_doc,
             "build_index(rpis, bits) -> (bitmap, sorted): index of heard RPIs given as one buffer of\n"
             "16-byte blocks. bitmap has 2**bits bits set at (first 8 bytes as uint64 LE) mod 2**bits;\n"
             "sorted holds the distinct RPIs in byte order.");

static PyObject *mc_build_index(PyObject *self, PyObject *args)
{
    Py_buffer in;
    int bits;
    if (!PyArg_ParseTuple(args, "y*i", &in, &bits))
        return NULL;
    if (in.len % 16 != 0 || bits < 3 || bits > 34) {
        PyBuffer_Release(&in);
        PyErr_SetString(PyExc_ValueError, "rpis must be 16-byte blocks and bits in 3..34");
        return NULL;
    }
    Py_ssize_t n = in.len / 16;
    uint8_t *sorted = PyMem_RawMalloc((size_t)(in.len ? in.len : 1));
    PyObject *bitmap = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(((uint64_t)1 << bits) / 8));
    if (!sorted || !bitmap) {
        PyBuffer_Release(&in);
        PyMem_RawFree(sorted);
        Py_XDECREF(bitmap);
        return bitmap ? PyErr_NoMemory() : NULL;
    }
    uint8_t *bm = (uint8_t *)PyBytes_AS_STRING(bitmap);
    uint64_t mask = ((uint64_t)1 << bits) - 1;
    Py_ssize_t m = 0;
    Py_BEGIN_ALLOW_THREADS
    memset(bm, 0, (size_t)(((uint64_t)1 << bits) / 8));
    memcpy(sorted, in.buf, (size_t)in.len);
    qsort(sorted, (size_t)n, 16, cmp16);
    for (Py_ssize_t i = 0; i < n; i++) {
        if (m > 0 && memcmp(sorted + 16 * (m - 1), sorted + 16 * i, 16) == 0)
            continue;
        if (m != i)
            memcpy(sorted + 16 * m, sorted + 16 * i, 16);
        uint64_t p;
        memcpy(&p, sorted + 16 * m, 8); /* x86-64: little-endian */
        p &= mask;
        bm[p >> 3] |= (uint8_t)(1u << (p & 7));
        m++;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&in);
    PyObject *s = PyBytes_FromStringAndSize((const char *)sorted, 16 * m);
    PyMem_RawFree(sorted);
    if (!s) {
        Py_DECREF(bitmap);
        return NULL;
    }
    return Py_BuildValue("(NN)", bitmap, s);
}

PyDoc_STRVAR(scan_doc,
             "scan(keys, base, bits, bitmap, sorted) -> list[(key index, interval, rpi)]:\n"
             "derive the RPIs of every (tek, start, period) and return those found in the index\n"
             "made by build_index(rpis, bits). Key indices start at `base`.");

static PyObject *mc_scan(PyObject *self, PyObject *args)
{
    if (!require_kernel())
        return NULL;
#if MC_X86
    PyObject *chunk;
    unsigned long long base;
    int bits;
    Py_buffer bm, srt;
    if (!PyArg_ParseTuple(args, "OKiy*y*", &chunk, &base, &bits, &bm, &srt))
        return NULL;
    PyObject *result = NULL;
    key_in *keys = NULL;
    hit_list hits = {0};
    if (bits < 3 || bits > 34 || (uint64_t)bm.len != ((uint64_t)1 << bits) / 8 || srt.len % 16 != 0) {
        PyErr_SetString(PyExc_ValueError, "index does not match its bit count");
        goto done;
    }
    Py_ssize_t n;
    keys = read_chunk(chunk, &n, NULL);
    if (!keys)
        goto done;
    if (base + (unsigned long long)n > 0xFFFFFFFFull) {
        PyErr_SetString(PyExc_ValueError, "too many keys");
        goto done;
    }
    heard_index ix = {(const uint8_t *)bm.buf, ((uint64_t)1 << bits) - 1, (const uint8_t *)srt.buf, srt.len / 16};
    Py_BEGIN_ALLOW_THREADS
    scan_keys(keys, n, (uint32_t)base, &ix, &hits);
    Py_END_ALLOW_THREADS
    if (hits.oom) {
        PyErr_NoMemory();
        goto done;
    }
    result = PyList_New((Py_ssize_t)hits.n);
    if (!result)
        goto done;
    for (size_t i = 0; i < hits.n; i++) {
        PyObject *t = Py_BuildValue("(IIy#)", hits.v[i].key, hits.v[i].interval, (const char *)hits.v[i].rpi,
                                    (Py_ssize_t)16);
        if (!t) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, (Py_ssize_t)i, t);
    }
done:
    free(hits.v);
    if (keys)
        PyMem_RawFree(keys);
    PyBuffer_Release(&bm);
    PyBuffer_Release(&srt);
    return result;
#else
    return NULL;
#endif
}

PyDoc_STRVAR(use_sha_ni_doc, "_use_sha_ni(flag) -> bool: switch the SHA-NI compression on/off (tests).");

static PyObject *mc_use_sha_ni(PyObject *self, PyObject *arg)
{
    int on = PyObject_IsTrue(arg);
    if (on < 0)
        return NULL;
#if MC_X86
    sha256_block = (on && have_sha) ? sha256_block_ni : sha256_block_c;
    return PyBool_FromLong(sha256_block == sha256_block_ni);
#else
    return PyBool_FromLong(0);
#endif
}

static PyMethodDef mc_methods[] = {
    {"available", mc_available, METH_NOARGS, available_doc},
    {"features", mc_features, METH_NOARGS, features_doc},
    {"rpik", mc_rpik, METH_O, rpik_doc},
    {"derive", mc_derive, METH_O, derive_doc},
    {"build_index", mc_build_index, METH_VARARGS, build_index_doc},
    {"scan", mc_scan, METH_VARARGS, scan_doc},
    {"_use_sha_ni", mc_use_sha_ni, METH_O, use_sha_ni_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef mc_module = {
    PyModuleDef_HEAD_INIT, "tracecode._matchcore",
    "Native Exposure Notification RPI derivation and lookup (optional).", -1, mc_methods,
};

PyMODINIT_FUNC PyInit__matchcore(void)
{
    detect_cpu();
    init_zero_key_states();
#if MC_X86
    if (have_sha)
        sha256_block = sha256_block_ni;
#endif
    return PyModule_Create(&mc_module);
}
