/*
 * TraceCode native matcher kernel (optional CPython extension `tracecode._matchcore`).
 *
 * For each diagnosis key (TEK, rolling start, rolling period):
 *     RPIK  = HKDF-SHA256(ikm=TEK, salt=none, info="EN-RPIK", L=16)
 *           = HMAC-SHA256(PRK, "EN-RPIK" || 0x01)[:16],  PRK = HMAC-SHA256(32 zero bytes, TEK)
 *     RPI_j = AES-128-ECB(RPIK, "EN-RPI" || 6 zero bytes || uint32_le(ENIN_j))
 * and every RPI is looked up among the heard RPIs: a bitmap on the low bits of the first 8
 * bytes (read little-endian) first, then a binary search in the sorted, distinct heard RPIs.
 *
 * The cryptography is the platform's OpenSSL libcrypto (SHA-256 and AES-128-ECB through EVP,
 * which use the CPU's SHA and AES instructions on x86-64 and ARMv8): no primitive is written
 * here. The module is not linked against libcrypto and needs no OpenSSL headers; Python
 * (`tracecode.native`) finds the libcrypto the interpreter already loaded and hands the
 * addresses of the few functions below to `bind_crypto`. Until then `available()` is False.
 *
 * It also walks the protobuf wire format of an export.bin into columns (`walk_export`), so
 * that reading a batch creates no Python object per key.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------- libcrypto */

/* OpenSSL's SHA256_CTX holds no pointers; 112 bytes in 1.1 and 3.x. We keep a larger opaque
 * buffer and copy it whole, so the exact layout never matters. */
typedef struct {
    uint64_t opaque[32];
} sha_ctx;

typedef int (*sha_init_fn)(void *c);
typedef int (*sha_update_fn)(void *c, const void *data, size_t len);
typedef int (*sha_final_fn)(unsigned char *md, void *c);
typedef void *(*ctx_new_fn)(void);
typedef void (*ctx_free_fn)(void *ctx);
typedef int (*enc_init_fn)(void *ctx, const void *cipher, void *engine, const unsigned char *key,
                           const unsigned char *iv);
typedef int (*enc_update_fn)(void *ctx, unsigned char *out, int *outl, const unsigned char *in, int inl);
typedef int (*set_padding_fn)(void *ctx, int pad);
typedef int (*enc_init2_fn)(void *ctx, const void *cipher, const unsigned char *key, const unsigned char *iv,
                            const void *params);

static struct {
    int bound;
    sha_init_fn sha_init;
    sha_update_fn sha_update;
    sha_final_fn sha_final;
    ctx_new_fn ctx_new;
    ctx_free_fn ctx_free;
    enc_init_fn enc_init;
    enc_update_fn enc_update;
    set_padding_fn set_padding;
    const void *cipher; /* EVP_CIPHER for AES-128-ECB */
    enc_init2_fn enc_init2; /* OpenSSL 3's EVP_EncryptInit_ex2 (a cheaper re-key), or NULL */
} C;

typedef void (*sha_transform_fn)(void *c, const unsigned char *block);
static sha_transform_fn sha_transform;

/* HMAC with a 32-byte key by whole compressions: SHA256_Transform on a context whose first
 * 8 words are the chaining state (OpenSSL's SHA256_CTX layout since 0.9.8: h[8] first).
 * The known-answer check in tracecode.native refuses the kernel if that ever changes. */
static sha_ctx zero_ipad, zero_opad; /* HMAC(32 zero bytes) after the pad block */

static inline void store_be32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

/* The 32-byte digest (big-endian) of the chaining state in c. */
static inline void state_bytes(const sha_ctx *c, uint8_t out[32])
{
    uint32_t h[8];
    memcpy(h, c, sizeof h);
    for (int i = 0; i < 8; i++)
        store_be32(out + 4 * i, h[i]);
}

static void init_zero_key_states(void)
{
    uint8_t pad[64];
    memset(pad, 0x36, sizeof pad);
    C.sha_init(&zero_ipad);
    sha_transform(&zero_ipad, pad);
    memset(pad, 0x5c, sizeof pad);
    C.sha_init(&zero_opad);
    sha_transform(&zero_opad, pad);
}

/* RPIK of one TEK (HKDF-SHA256 with an empty salt, info "EN-RPIK", 16 bytes): six compressions. */
static void derive_rpik(const uint8_t tek[16], uint8_t out[16])
{
    sha_ctx c, ki, ko;
    uint8_t blk[64], prk[32], d[32];

    /* extract: PRK = HMAC(zeros32, TEK); the inner message is 16 bytes after the pad block */
    memset(blk, 0, sizeof blk);
    memcpy(blk, tek, 16);
    blk[16] = 0x80;
    blk[62] = ((64 + 16) * 8) >> 8;
    blk[63] = ((64 + 16) * 8) & 0xff;
    c = zero_ipad;
    sha_transform(&c, blk);
    memset(blk, 0, sizeof blk);
    state_bytes(&c, blk);
    blk[32] = 0x80;
    blk[62] = ((64 + 32) * 8) >> 8;
    blk[63] = ((64 + 32) * 8) & 0xff;
    c = zero_opad;
    sha_transform(&c, blk);
    state_bytes(&c, prk);

    /* expand, one block: T(1) = HMAC(PRK, "EN-RPIK" || 0x01) */
    memset(blk, 0x36, sizeof blk);
    for (int i = 0; i < 32; i++)
        blk[i] ^= prk[i];
    C.sha_init(&ki);
    sha_transform(&ki, blk);
    memset(blk, 0x5c, sizeof blk);
    for (int i = 0; i < 32; i++)
        blk[i] ^= prk[i];
    C.sha_init(&ko);
    sha_transform(&ko, blk);
    memset(blk, 0, sizeof blk);
    memcpy(blk, "EN-RPIK\x01", 8);
    blk[8] = 0x80;
    blk[62] = ((64 + 8) * 8) >> 8;
    blk[63] = ((64 + 8) * 8) & 0xff;
    sha_transform(&ki, blk);
    memset(blk, 0, sizeof blk);
    state_bytes(&ki, blk);
    blk[32] = 0x80;
    blk[62] = ((64 + 32) * 8) >> 8;
    blk[63] = ((64 + 32) * 8) & 0xff;
    sha_transform(&ko, blk);
    state_bytes(&ko, d);
    memcpy(out, d, 16);
}

PyDoc_STRVAR(bind_crypto_doc,
             "bind_crypto(addresses) -> None: the addresses (ints) of SHA256_Init, SHA256_Update,\n"
             "SHA256_Final, EVP_CIPHER_CTX_new, EVP_CIPHER_CTX_free, EVP_EncryptInit_ex,\n"
             "EVP_EncryptUpdate, EVP_CIPHER_CTX_set_padding, SHA256_Transform and an AES-128-ECB\n"
             "EVP_CIPHER (key 'cipher'), in a dict.");

static void *addr_of(PyObject *d, const char *name)
{
    PyObject *v = PyDict_GetItemString(d, name);
    if (!v) {
        PyErr_Format(PyExc_KeyError, "missing %s", name);
        return NULL;
    }
    void *p = PyLong_AsVoidPtr(v);
    if (!p && !PyErr_Occurred())
        PyErr_Format(PyExc_ValueError, "%s is NULL", name);
    return p;
}

static PyObject *mc_bind_crypto(PyObject *self, PyObject *d)
{
    if (!PyDict_Check(d)) {
        PyErr_SetString(PyExc_TypeError, "bind_crypto takes a dict");
        return NULL;
    }
    void *p[10];
    const char *names[10] = {"SHA256_Init", "SHA256_Update", "SHA256_Final", "EVP_CIPHER_CTX_new",
                            "EVP_CIPHER_CTX_free", "EVP_EncryptInit_ex", "EVP_EncryptUpdate",
                            "EVP_CIPHER_CTX_set_padding", "cipher", "SHA256_Transform"};
    for (int i = 0; i < 10; i++)
        if (!(p[i] = addr_of(d, names[i])))
            return NULL;
    C.bound = 0;
    C.sha_init = (sha_init_fn)p[0];
    C.sha_update = (sha_update_fn)p[1];
    C.sha_final = (sha_final_fn)p[2];
    C.ctx_new = (ctx_new_fn)p[3];
    C.ctx_free = (ctx_free_fn)p[4];
    C.enc_init = (enc_init_fn)p[5];
    C.enc_update = (enc_update_fn)p[6];
    C.set_padding = (set_padding_fn)p[7];
    C.cipher = p[8];
    sha_transform = (sha_transform_fn)p[9];
    PyObject *v2 = PyDict_GetItemString(d, "EVP_EncryptInit_ex2");
    C.enc_init2 = v2 && v2 != Py_None ? (enc_init2_fn)PyLong_AsVoidPtr(v2) : NULL;
    if (PyErr_Occurred())
        return NULL;
    init_zero_key_states();
    C.bound = 1;
    Py_RETURN_NONE;
}

static int require_kernel(void)
{
    if (!C.bound) {
        PyErr_SetString(PyExc_RuntimeError, "native matcher kernel: libcrypto is not bound");
        return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------------- lookup */

typedef struct {
    const uint8_t *bitmap; /* 1 << bits bits */
    uint64_t mask; /* word index mask of the blocked Bloom filter */
    const uint8_t *sorted; /* n sorted, distinct 16-byte RPIs */
    Py_ssize_t n;
    const uint32_t *starts; /* 2**bbits + 1: where each value of the first bbits bits begins in sorted */
    int bbits;
} heard_index;

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
static inline uint64_t load_le64(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, 8);
    return v;
}

static inline void store_le32(uint8_t *p, uint32_t v)
{
    memcpy(p, &v, 4);
}
#else
static inline uint64_t load_le64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = (v << 8) | p[i];
    return v;
}

static inline void store_le32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v; p[1] = (uint8_t)(v >> 8); p[2] = (uint8_t)(v >> 16); p[3] = (uint8_t)(v >> 24);
}
#endif

static inline uint32_t load_be32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static int heard_contains(const heard_index *ix, const uint8_t rpi[16])
{
    uint32_t b = ix->bbits ? load_be32(rpi) >> (32 - ix->bbits) : 0;
    Py_ssize_t lo = ix->starts[b], hi = ix->starts[b + 1];
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

static void hits_push(hit_list *h, uint32_t key, uint32_t interval, const uint8_t rpi[16])
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

/* ------------------------------------------------------------------------- derive + scan */

#define RUN 144 /* intervals encrypted per EVP call */

/* The heard-RPI filter is a blocked Bloom filter: one 64-bit word per RPI (chosen by the low
 * bits of its first 8 bytes, read little-endian), three bits set in it (from bits 40..57).
 * One memory access per derived RPI and ~0.1% false candidates at 32 bits per heard RPI. */
static inline uint64_t filter_bits(uint64_t p)
{
    return (1ull << ((p >> 40) & 63)) | (1ull << ((p >> 46) & 63)) | (1ull << ((p >> 52) & 63));
}

/* Derives the RPIs of keys [lo, hi) and either looks them up (ix != NULL, hits appended) or
 * writes them all to dst. Runs without the GIL. Returns 0, or -1 if libcrypto failed. */
static int scan_range(const uint8_t *teks, const uint32_t *starts, const uint32_t *periods, Py_ssize_t lo,
                      Py_ssize_t hi, const heard_index *ix, hit_list *hits, uint8_t *dst)
{
    uint8_t pt[RUN * 16], ct[RUN * 16], rpik[16];
    void *ctx = C.ctx_new();
    if (!ctx)
        return -1;
    int rc = -1;
    if (C.enc_init(ctx, C.cipher, NULL, NULL, NULL) != 1)
        goto out;
    C.set_padding(ctx, 0);
    for (int j = 0; j < RUN; j++) {
        memcpy(pt + 16 * j, "EN-RPI", 6);
        memset(pt + 16 * j + 6, 0, 6);
    }
    for (Py_ssize_t k = lo; k < hi; k++) {
        derive_rpik(teks + 16 * k, rpik);
        if ((C.enc_init2 ? C.enc_init2(ctx, NULL, rpik, NULL, NULL) : C.enc_init(ctx, NULL, NULL, rpik, NULL)) != 1)
            goto out;
        uint32_t start = starts[k], period = periods[k];
        for (uint32_t off = 0; off < period; off += RUN) {
            int cnt = (int)(period - off < RUN ? period - off : RUN), outl = 0;
            for (int j = 0; j < cnt; j++)
                store_le32(pt + 16 * j + 12, start + off + (uint32_t)j);
            uint8_t *out = dst ? dst : ct;
            if (C.enc_update(ctx, out, &outl, pt, 16 * cnt) != 1 || outl != 16 * cnt)
                goto out;
            if (dst) {
                dst += 16 * cnt;
                continue;
            }
            uint64_t pref[RUN];
            const uint64_t *words = (const uint64_t *)ix->bitmap;
            for (int j = 0; j < cnt; j++) { /* all filter reads in flight before the first test */
                pref[j] = load_le64(ct + 16 * j);
#if defined(__GNUC__) || defined(__clang__)
                __builtin_prefetch(words + (pref[j] & ix->mask));
#endif
            }
            for (int j = 0; j < cnt; j++) {
                const uint8_t *r = ct + 16 * j;
                uint64_t p = pref[j], m = filter_bits(p);
                if ((words[p & ix->mask] & m) == m && heard_contains(ix, r))
                    hits_push(hits, (uint32_t)k, start + off + (uint32_t)j, r);
            }
        }
    }
    rc = 0;
out:
    C.ctx_free(ctx);
    return rc;
}

/* ------------------------------------------------------------------------- Python glue */

PyDoc_STRVAR(available_doc, "available() -> bool: True once libcrypto is bound.");

static PyObject *mc_available(PyObject *self, PyObject *noargs)
{
    return PyBool_FromLong(C.bound);
}

static int read_tek(PyObject *obj, uint8_t out[16])
{
    Py_buffer b;
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

PyDoc_STRVAR(rpik_doc, "rpik(tek) -> bytes: HKDF-SHA256(tek, salt=None, info=b'EN-RPIK', 16).");

static PyObject *mc_rpik(PyObject *self, PyObject *arg)
{
    uint8_t tek[16], out[16];
    if (!require_kernel() || !read_tek(arg, tek))
        return NULL;
    derive_rpik(tek, out);
    return PyBytes_FromStringAndSize((const char *)out, 16);
}

/* Key columns: teks (16 n bytes), starts and periods (n native uint32 each). */
typedef struct {
    Py_buffer t, s, p;
    Py_ssize_t n;
    uint64_t total;
} key_cols;

static void release_cols(key_cols *k)
{
    if (k->t.obj)
        PyBuffer_Release(&k->t);
    if (k->s.obj)
        PyBuffer_Release(&k->s);
    if (k->p.obj)
        PyBuffer_Release(&k->p);
}

static int get_cols(PyObject *teks, PyObject *starts, PyObject *periods, key_cols *k)
{
    memset(k, 0, sizeof *k);
    if (PyObject_GetBuffer(teks, &k->t, PyBUF_C_CONTIGUOUS) < 0 ||
        PyObject_GetBuffer(starts, &k->s, PyBUF_C_CONTIGUOUS) < 0 ||
        PyObject_GetBuffer(periods, &k->p, PyBUF_C_CONTIGUOUS) < 0) {
        release_cols(k);
        return 0;
    }
    k->n = k->t.len / 16;
    if (k->t.len % 16 || k->s.len != 4 * k->n || k->p.len != 4 * k->n) {
        release_cols(k);
        PyErr_SetString(PyExc_ValueError, "teks must be 16-byte blocks, starts and periods uint32 of as many keys");
        return 0;
    }
    const uint32_t *s = k->s.buf, *p = k->p.buf;
    for (Py_ssize_t i = 0; i < k->n; i++) {
        if ((uint64_t)s[i] + p[i] > 0x100000000ull) {
            release_cols(k);
            PyErr_SetString(PyExc_ValueError, "rolling start + period past 2**32");
            return 0;
        }
        k->total += p[i];
    }
    return 1;
}

PyDoc_STRVAR(derive_doc, "derive(teks, starts, periods) -> bytes: the RPIs of every key, concatenated.");

static PyObject *mc_derive(PyObject *self, PyObject *args)
{
    PyObject *teks, *starts, *periods;
    key_cols k;
    if (!require_kernel() || !PyArg_ParseTuple(args, "OOO", &teks, &starts, &periods))
        return NULL;
    if (!get_cols(teks, starts, periods, &k))
        return NULL;
    PyObject *out = NULL;
    if (k.total > (uint64_t)PY_SSIZE_T_MAX / 16) {
        PyErr_NoMemory();
        goto done;
    }
    out = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(16 * k.total));
    if (!out)
        goto done;
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = scan_range(k.t.buf, k.s.buf, k.p.buf, 0, k.n, NULL, NULL, (uint8_t *)PyBytes_AS_STRING(out));
    Py_END_ALLOW_THREADS
    if (rc) {
        Py_CLEAR(out);
        PyErr_SetString(PyExc_RuntimeError, "libcrypto failed");
    }
done:
    release_cols(&k);
    return out;
}

static int cmp16(const void *a, const void *b)
{
    return memcmp(a, b, 16);
}

PyDoc_STRVAR(build_index_doc,
             "build_index(rpis, bits) -> (bitmap, sorted, starts, sbits): index of heard RPIs given as\n"
             "one buffer of 16-byte blocks. bitmap: a blocked Bloom filter of 2**bits bits (see\n"
             "filter_bits); sorted holds the distinct RPIs in byte order; starts (2**sbits + 1 uint32)\n"
             "where each value of their first sbits bits begins.");

static PyObject *mc_build_index(PyObject *self, PyObject *args)
{
    Py_buffer in;
    int bits;
    if (!PyArg_ParseTuple(args, "y*i", &in, &bits))
        return NULL;
    if (in.len % 16 != 0 || bits < 6 || bits > 34) {
        PyBuffer_Release(&in);
        PyErr_SetString(PyExc_ValueError, "rpis must be 16-byte blocks and bits in 6..34");
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
    uint64_t wmask = ((uint64_t)1 << (bits - 6)) - 1; /* 64-bit words */
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
        uint64_t p = load_le64(sorted + 16 * m), w;
        memcpy(&w, bm + 8 * (p & wmask), 8);
        w |= filter_bits(p);
        memcpy(bm + 8 * (p & wmask), &w, 8);
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
    int bb = 0;
    while (bb < 24 && ((Py_ssize_t)1 << bb) < m)
        bb++;
    PyObject *st = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(4 * (((size_t)1 << bb) + 1)));
    if (!st) {
        Py_DECREF(bitmap);
        Py_DECREF(s);
        return NULL;
    }
    uint32_t *starts = (uint32_t *)PyBytes_AS_STRING(st);
    const uint8_t *sp = (const uint8_t *)PyBytes_AS_STRING(s);
    size_t nb = (size_t)1 << bb;
    Py_ssize_t i = 0;
    for (size_t b = 0; b <= nb; b++) { /* starts[b] = first entry whose bucket >= b */
        while (i < m && (bb ? (load_be32(sp + 16 * i) >> (32 - bb)) : 0) < b)
            i++;
        starts[b] = (uint32_t)i;
    }
    starts[nb] = (uint32_t)m;
    return Py_BuildValue("(NNNi)", bitmap, s, st, bb);
}

PyDoc_STRVAR(scan_doc,
             "scan(teks, starts, periods, lo, hi, bits, bitmap, sorted, buckets, sbits) -> (pairs, rpis):\n"
             "derive the RPIs of keys lo..hi-1 and return those found in the index made by\n"
             "build_index(rpis, bits): `pairs` holds native uint32 (key index, interval) per hit,\n"
             "`rpis` the 16-byte RPIs, in key order then interval order.");

static PyObject *mc_scan(PyObject *self, PyObject *args)
{
    PyObject *teks, *starts, *periods;
    Py_ssize_t lo, hi;
    int bits, bbits;
    Py_buffer bm, srt, bst;
    key_cols k;
    if (!require_kernel() || !PyArg_ParseTuple(args, "OOOnniy*y*y*i", &teks, &starts, &periods, &lo, &hi, &bits, &bm,
                                               &srt, &bst, &bbits))
        return NULL;
    PyObject *result = NULL;
    hit_list hits = {0};
    int have_cols = 0;
    if (bits < 6 || bits > 34 || (uint64_t)bm.len != ((uint64_t)1 << bits) / 8 || srt.len % 16 != 0 ||
        bbits < 0 || bbits > 24 || bst.len != 4 * (((Py_ssize_t)1 << bbits) + 1) ||
        ((const uint32_t *)bst.buf)[(size_t)1 << bbits] != (uint32_t)(srt.len / 16)) {
        PyErr_SetString(PyExc_ValueError, "index does not match its bit count");
        goto done;
    }
    if (!get_cols(teks, starts, periods, &k))
        goto done;
    have_cols = 1;
    if (lo < 0 || hi > k.n || lo > hi || k.n > 0xFFFFFFFFll) {
        PyErr_SetString(PyExc_ValueError, "key range out of bounds");
        goto done;
    }
    heard_index ix = {(const uint8_t *)bm.buf, ((uint64_t)1 << (bits - 6)) - 1, (const uint8_t *)srt.buf, srt.len / 16,
                      (const uint32_t *)bst.buf, bbits};
    int rc;
    Py_BEGIN_ALLOW_THREADS
    rc = scan_range(k.t.buf, k.s.buf, k.p.buf, lo, hi, &ix, &hits, NULL);
    Py_END_ALLOW_THREADS
    if (rc) {
        PyErr_SetString(PyExc_RuntimeError, "libcrypto failed");
        goto done;
    }
    if (hits.oom) {
        PyErr_NoMemory();
        goto done;
    }
    PyObject *pairs = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(8 * hits.n));
    PyObject *rpis = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)(16 * hits.n));
    if (!pairs || !rpis) {
        Py_XDECREF(pairs);
        Py_XDECREF(rpis);
        goto done;
    }
    uint32_t *pp = (uint32_t *)PyBytes_AS_STRING(pairs);
    uint8_t *rp = (uint8_t *)PyBytes_AS_STRING(rpis);
    for (size_t i = 0; i < hits.n; i++) {
        pp[2 * i] = hits.v[i].key;
        pp[2 * i + 1] = hits.v[i].interval;
        memcpy(rp + 16 * i, hits.v[i].rpi, 16);
    }
    result = Py_BuildValue("(NN)", pairs, rpis);
done:
    free(hits.v);
    if (have_cols)
        release_cols(&k);
    PyBuffer_Release(&bm);
    PyBuffer_Release(&srt);
    PyBuffer_Release(&bst);
    return result;
}

/* ------------------------------------------------------------------------- protobuf walk */

/*
 * The wire format of TemporaryExposureKeyExport (export.proto). Fields 7 (keys) and 8
 * (revised_keys) are parsed into columns; every other top-level field is copied, tag and
 * value, into `rest` (a few hundred bytes: the header and signature infos) for Python.
 * Malformed input is a ValueError whose message names the place; the walk is linear in the
 * input and allocates only once it has counted the keys (at most max_keys per field).
 */

typedef struct {
    const uint8_t *p, *end;
} rd;

static int rd_varint(rd *r, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift < 70; shift += 7) {
        if (r->p >= r->end)
            return 0;
        uint8_t b = *r->p++;
        if (shift == 63 && b > 1)
            return 0;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 1;
        }
    }
    return 0;
}

/* Skips a value of wire type wt. 0 on malformed input. */
static int rd_skip(rd *r, int wt, const uint8_t **val, size_t *len)
{
    uint64_t v;
    switch (wt) {
    case 0:
        return rd_varint(r, &v);
    case 1:
        if (r->end - r->p < 8)
            return 0;
        r->p += 8;
        return 1;
    case 2:
        if (!rd_varint(r, &v) || v > (uint64_t)(r->end - r->p))
            return 0;
        if (val) {
            *val = r->p;
            *len = (size_t)v;
        }
        r->p += v;
        return 1;
    case 5:
        if (r->end - r->p < 4)
            return 0;
        r->p += 4;
        return 1;
    default: /* groups (3, 4) and 6, 7 */
        return 0;
    }
}

typedef struct {
    Py_ssize_t n;
    uint8_t *key;
    uint32_t *start, *period;
    uint8_t *rtype, *has_dso;
    int32_t *trl, *dso;
    PyObject *objs[7];
} cols_out;

static int cols_alloc(cols_out *c, Py_ssize_t n)
{
    Py_ssize_t sizes[7] = {16 * n, 4 * n, 4 * n, n, 4 * n, 4 * n, n};
    for (int i = 0; i < 7; i++)
        if (!(c->objs[i] = PyBytes_FromStringAndSize(NULL, sizes[i])))
            return 0;
    c->key = (uint8_t *)PyBytes_AS_STRING(c->objs[0]);
    c->start = (uint32_t *)PyBytes_AS_STRING(c->objs[1]);
    c->period = (uint32_t *)PyBytes_AS_STRING(c->objs[2]);
    c->rtype = (uint8_t *)PyBytes_AS_STRING(c->objs[3]);
    c->trl = (int32_t *)PyBytes_AS_STRING(c->objs[4]);
    c->dso = (int32_t *)PyBytes_AS_STRING(c->objs[5]);
    c->has_dso = (uint8_t *)PyBytes_AS_STRING(c->objs[6]);
    c->n = 0;
    return 1;
}

static void cols_free(cols_out *c)
{
    for (int i = 0; i < 7; i++)
        Py_CLEAR(c->objs[i]);
}

static char werr[160];

/* One TemporaryExposureKey. 0 with werr set on error. */
static int parse_key(const uint8_t *p, size_t len, cols_out *c, const char *field, Py_ssize_t idx)
{
    rd r = {p, p + len};
    int have_key = 0, have_start = 0;
    uint32_t period = 144;
    uint8_t rtype = 0, has_dso = 0;
    int32_t trl = 0, dso = 0;
    int64_t start = 0;
    Py_ssize_t i = c->n;
    while (r.p < r.end) {
        uint64_t tag, v;
        if (!rd_varint(&r, &tag) || (tag >> 3) == 0 || (tag >> 3) > 0x1FFFFFFF)
            goto corrupt;
        uint64_t f = tag >> 3;
        int wt = (int)(tag & 7);
        if (f == 1) {
            const uint8_t *val;
            size_t vl;
            if (wt != 2 || !rd_skip(&r, 2, &val, &vl))
                goto corrupt;
            if (vl != 16) {
                snprintf(werr, sizeof werr, "%s[%zd]: key_data is %zu bytes, expected 16", field, idx, vl);
                return 0;
            }
            memcpy(c->key + 16 * i, val, 16);
            have_key = 1;
        } else if (f >= 2 && f <= 6) {
            if (wt != 0 || !rd_varint(&r, &v))
                goto corrupt;
            int32_t s32 = (int32_t)(uint32_t)v; /* int32 fields keep the low 32 bits */
            if (f == 2)
                trl = s32;
            else if (f == 3) {
                start = s32;
                have_start = 1;
            } else if (f == 4) {
                if (s32 < 1 || s32 > 144) {
                    snprintf(werr, sizeof werr, "%s[%zd]: rolling_period %d is outside 1..144", field, idx, (int)s32);
                    return 0;
                }
                period = (uint32_t)s32;
            } else if (f == 5) {
                if (s32 >= 0 && s32 <= 5)
                    rtype = (uint8_t)s32; /* a closed proto2 enum: other values are ignored */
            } else {
                uint32_t u = (uint32_t)v;
                dso = (int32_t)((u >> 1) ^ (~(u & 1) + 1)); /* sint32 zigzag */
                has_dso = 1;
            }
        } else if (!rd_skip(&r, wt, NULL, NULL)) {
            goto corrupt;
        }
    }
    if (!have_key) {
        snprintf(werr, sizeof werr, "%s[%zd]: key_data is missing", field, idx);
        return 0;
    }
    if (!have_start) {
        snprintf(werr, sizeof werr, "%s[%zd]: rolling_start_interval_number is missing", field, idx);
        return 0;
    }
    if (start < 0) {
        snprintf(werr, sizeof werr, "%s[%zd]: negative rolling_start_interval_number", field, idx);
        return 0;
    }
    c->start[i] = (uint32_t)start;
    c->period[i] = period;
    c->rtype[i] = rtype;
    c->trl[i] = trl;
    c->dso[i] = has_dso ? dso : 0;
    c->has_dso[i] = has_dso;
    c->n++;
    return 1;
corrupt:
    snprintf(werr, sizeof werr, "%s[%zd] is not a decodable TemporaryExposureKey", field, idx);
    return 0;
}

/* Walks the top level. counting: only count fields 7/8 and size the rest. */
static int walk_top(const uint8_t *p, size_t len, cols_out *k, cols_out *rv, uint8_t *rest, size_t *rest_len,
                    Py_ssize_t *nk, Py_ssize_t *nr, int counting)
{
    rd r = {p, p + len};
    size_t rl = 0;
    Py_ssize_t ck = 0, cr = 0;
    while (r.p < r.end) {
        const uint8_t *field_start = r.p;
        uint64_t tag;
        if (!rd_varint(&r, &tag) || (tag >> 3) == 0 || (tag >> 3) > 0x1FFFFFFF) {
            snprintf(werr, sizeof werr, "corrupt field tag at byte %zd", (Py_ssize_t)(field_start - p));
            return 0;
        }
        uint64_t f = tag >> 3;
        int wt = (int)(tag & 7);
        const uint8_t *val = NULL;
        size_t vl = 0;
        if (!rd_skip(&r, wt, &val, &vl)) {
            snprintf(werr, sizeof werr, "truncated or corrupt field %llu at byte %zd", (unsigned long long)f,
                     (Py_ssize_t)(field_start - p));
            return 0;
        }
        if ((f == 7 || f == 8) && wt != 2) {
            snprintf(werr, sizeof werr, "%s field has wire type %d", f == 7 ? "keys" : "revised_keys", wt);
            return 0;
        }
        if (f == 7 || f == 8) {
            if (counting) {
                if (f == 7)
                    ck++;
                else
                    cr++;
            } else if (!parse_key(val, vl, f == 7 ? k : rv, f == 7 ? "keys" : "revised_keys",
                                  f == 7 ? k->n : rv->n)) {
                return 0;
            }
        } else {
            size_t n = (size_t)(r.p - field_start);
            if (!counting)
                memcpy(rest + rl, field_start, n);
            rl += n;
        }
    }
    *rest_len = rl;
    if (counting) {
        *nk = ck;
        *nr = cr;
    }
    return 1;
}

static PyObject *cols_tuple(cols_out *c)
{
    PyObject *t = Py_BuildValue("(nOOOOOOO)", c->n, c->objs[0], c->objs[1], c->objs[2], c->objs[3], c->objs[4],
                                c->objs[5], c->objs[6]);
    return t;
}

PyDoc_STRVAR(walk_export_doc,
             "walk_export(data, offset, max_keys) -> (rest, keys, revised_keys): the protobuf after\n"
             "`offset` bytes of `data`. rest: the other top-level fields' bytes; keys, revised_keys:\n"
             "(n, key_data, start u32, period u32, report_type u8, trl i32, dso i32, has_dso u8),\n"
             "native byte order. ValueError names what is malformed; more than max_keys keys in\n"
             "either field is a ValueError before any key is parsed.");

static PyObject *mc_walk_export(PyObject *self, PyObject *args)
{
    Py_buffer in;
    Py_ssize_t offset, max_keys;
    if (!PyArg_ParseTuple(args, "y*nn", &in, &offset, &max_keys))
        return NULL;
    PyObject *result = NULL, *rest = NULL;
    cols_out k, rv;
    memset(&k, 0, sizeof k);
    memset(&rv, 0, sizeof rv);
    if (offset < 0 || offset > in.len) {
        PyErr_SetString(PyExc_ValueError, "offset outside the data");
        goto done;
    }
    const uint8_t *p = (const uint8_t *)in.buf + offset;
    size_t len = (size_t)(in.len - offset), rest_len = 0;
    Py_ssize_t nk = 0, nr = 0;
    werr[0] = 0;
    if (!walk_top(p, len, NULL, NULL, NULL, &rest_len, &nk, &nr, 1)) {
        PyErr_SetString(PyExc_ValueError, werr);
        goto done;
    }
    if (nk > max_keys || nr > max_keys) {
        PyErr_Format(PyExc_OverflowError, "%zd %s, over the limit of %zd per batch", nk > max_keys ? nk : nr,
                     nk > max_keys ? "keys" : "revised keys", max_keys);
        goto done;
    }
    if (!cols_alloc(&k, nk) || !cols_alloc(&rv, nr) || !(rest = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)rest_len)))
        goto done;
    if (!walk_top(p, len, &k, &rv, (uint8_t *)PyBytes_AS_STRING(rest), &rest_len, NULL, NULL, 0)) {
        PyErr_SetString(PyExc_ValueError, werr);
        goto done;
    }
    PyObject *kt = cols_tuple(&k), *rt = cols_tuple(&rv);
    if (kt && rt)
        result = Py_BuildValue("(ONN)", rest, kt, rt);
    else {
        Py_XDECREF(kt);
        Py_XDECREF(rt);
    }
done:
    Py_XDECREF(rest);
    cols_free(&k);
    cols_free(&rv);
    PyBuffer_Release(&in);
    return result;
}

static PyMethodDef mc_methods[] = {
    {"available", mc_available, METH_NOARGS, available_doc},
    {"bind_crypto", mc_bind_crypto, METH_O, bind_crypto_doc},
    {"rpik", mc_rpik, METH_O, rpik_doc},
    {"derive", mc_derive, METH_VARARGS, derive_doc},
    {"build_index", mc_build_index, METH_VARARGS, build_index_doc},
    {"scan", mc_scan, METH_VARARGS, scan_doc},
    {"walk_export", mc_walk_export, METH_VARARGS, walk_export_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef mc_module = {
    PyModuleDef_HEAD_INIT, "tracecode._matchcore",
    "Native Exposure Notification RPI derivation and lookup, and export.bin columns (optional).", -1,
    mc_methods,
};

PyMODINIT_FUNC PyInit__matchcore(void)
{
    return PyModule_Create(&mc_module);
}
