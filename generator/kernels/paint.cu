// tumorforge's synthesis kernels for the `paper` and `paper-train` recipes (generator/kernels/paint.py
// launches them; tests/kernel_twins.py holds one NumPy twin per kernel).
//
// One launch covers a whole batch: blockIdx.y is the tumor (or crop), and a grid-stride loop walks
// its box, so every kernel compiles once whatever the boxes' sizes. Per-tumor numbers come from
// packed tables whose column names paint.py defines once and prepends here as #defines
// (TI_* int32 columns of `ti`, TF_* float32 columns of `tf`, TD_* float64 columns of `td`).
// Boxes, all (i, j, k) = (R, A, S) voxel boxes:
//   crop  the output crop (crop voxels [0, size)); scan voxels = crop_lo + crop voxels
//   R     where a tumor is painted: its tumor box cut to the crop (crop voxels)
//   S     R plus the mask blur's reach, inside the tumor box: where shape and mask are computed
// Floating point: products and sums use the _rn intrinsics, which a compiler may not contract into
// fused multiply-adds, so each operation rounds as NumPy's does and the kernels give NumPy's float
// results (the texture's sums run in another order than BLAS; Box-Muller's log/cos/sin are the
// device's libm, within 2 ulp in float64).
// The same text compiles as C++ on a CPU (TF_CPU, module.py): the tests run it there.

#ifdef TF_CPU
#define FMUL(a, b) ((a) * (b))
#define FADD(a, b) ((a) + (b))
#define FSUB(a, b) ((a) - (b))
#define FDIV(a, b) ((a) / (b))
#define DMUL(a, b) ((a) * (b))
#define DADD(a, b) ((a) + (b))
#else
#define FMUL(a, b) __fmul_rn(a, b)
#define FADD(a, b) __fadd_rn(a, b)
#define FSUB(a, b) __fsub_rn(a, b)
#define FDIV(a, b) __fdiv_rn(a, b)
#define DMUL(a, b) __dmul_rn(a, b)
#define DADD(a, b) __dadd_rn(a, b)
#endif

typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

#define LIVER 1
#define TUMOR 2

// ---- grid-stride loop over n items of the block row blockIdx.y
#define FOR_ITEMS(v, n) \
    for (i64 v = (i64)blockIdx.x * blockDim.x + threadIdx.x; v < (i64)(n); \
         v += (i64)gridDim.x * blockDim.x)

__device__ __forceinline__ const int* row_i(const int* ti, int t) { return ti + (i64)t * TI_COLUMNS; }

// ---- Philox4x32-10 (noise.py): counter (idx lo, idx hi, stream, 0), key = seed
__device__ __forceinline__ void philox(u64 idx, u64 seed, u32 stream, u32* w0, u32* w1) {
    u32 c0 = (u32)(idx & 0xFFFFFFFFull), c1 = (u32)(idx >> 32), c2 = stream, c3 = 0u;
    u32 k0 = (u32)(seed & 0xFFFFFFFFull), k1 = (u32)(seed >> 32);
    for (int r = 0; r < 10; ++r) {
        u64 p0 = (u64)c0 * 0xD2511F53ull;
        u64 p1 = (u64)c2 * 0xCD9E8D57ull;
        u32 n0 = (u32)(p1 >> 32) ^ c1 ^ k0;
        u32 n1 = (u32)p1;
        u32 n2 = (u32)(p0 >> 32) ^ c3 ^ k1;
        u32 n3 = (u32)p0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    *w0 = c0;
    *w1 = c1;
}

// ---- shape (shape.py, _paper_shape): the deformed ellipsoid, 0/1, on S
__device__ __forceinline__ void lagrange3(int idx, int g, float w[3]) {
    // linspace(-1, 1, 2g + 1, float32)[idx] as NumPy makes it (float64, then rounded)
    double step = 2.0 / (double)(2 * g);
    float u = (idx == 2 * g) ? 1.0f : (float)DADD(DMUL((double)idx, step), -1.0);
    u = fminf(fmaxf(u, -1.0f), 1.0f);
    w[0] = FMUL(FMUL(0.5f, u), FSUB(u, 1.0f));
    w[1] = FSUB(1.0f, FMUL(u, u));
    w[2] = FMUL(FMUL(0.5f, u), FADD(u, 1.0f));
}

extern "C" __global__ void paint_shape(const int* ti, const float* tf, float* ws) {
    const int t = blockIdx.y;
    const int* r = row_i(ti, t);
    const float* f = tf + (i64)t * TF_COLUMNS;
    const int n0 = r[TI_S_HI0] - r[TI_S_LO0], n1 = r[TI_S_HI1] - r[TI_S_LO1],
              n2 = r[TI_S_HI2] - r[TI_S_LO2];
    float* out = ws + r[TI_WS];
    FOR_ITEMS(v, (i64)n0 * n1 * n2) {
        const int c[3] = {(int)(v / ((i64)n1 * n2)) + r[TI_SHAPE_OFF0],
                          (int)((v / n2) % n1) + r[TI_SHAPE_OFF1],
                          (int)(v % n2) + r[TI_SHAPE_OFF2]};
        float wx[3], wy[3], wz[3];
        lagrange3(c[0], r[TI_GRID_HALF0], wx);
        lagrange3(c[1], r[TI_GRID_HALF1], wy);
        lagrange3(c[2], r[TI_GRID_HALF2], wz);
        float q = 0.0f;
        for (int a = 0; a < 3; ++a) {
            const float* ga = f + TF_GRID + 27 * a;          // control displacements g[a, i, j, k]
            float d1[3][3];                                   // contract i (x)
            for (int j = 0; j < 3; ++j)
                for (int k = 0; k < 3; ++k)
                    d1[j][k] = FADD(FADD(FMUL(wx[0], ga[0 * 9 + j * 3 + k]),
                                         FMUL(wx[1], ga[1 * 9 + j * 3 + k])),
                                    FMUL(wx[2], ga[2 * 9 + j * 3 + k]));
            float d2[3];                                      // contract j (y)
            for (int k = 0; k < 3; ++k)
                d2[k] = FADD(FADD(FMUL(d1[0][k], wy[0]), FMUL(d1[1][k], wy[1])),
                             FMUL(d1[2][k], wy[2]));
            float d = FADD(FADD(FMUL(d2[0], wz[0]), FMUL(d2[1], wz[1])), FMUL(d2[2], wz[2]));
            d = FADD(d, (float)c[a]);
            d = FSUB(d, (float)r[TI_GRID_HALF0 + a]);
            d = FDIV(d, f[TF_HALF_AXES + a]);
            d = FMUL(d, d);
            q = (a == 0) ? d : FADD(q, d);
        }
        out[v] = (q <= 1.0f) ? 1.0f : 0.0f;
    }
}

// ---- blurs: one axis of scipy's gaussian_filter, mode constant, in float64, summed as scipy's
// correlate1d does for a symmetric kernel (the centre, then the pairs from the outermost in).
// which 0: the mask blur (shape.py, tumor_mask) on S, sigma_c; which 1: the capsule's edge blur
// (effects.capsule, eq. 7) on the work box W, sigma_d. Rows: every tumor (sel == 0) or the
// tumors listed in sel. Weights (float64, scipy's) from `wt`.
__device__ __forceinline__ int tumor_of(const int* sel) { return sel ? sel[blockIdx.y] : blockIdx.y; }

// one voxel v (at position p of a line of n, neighbours stride apart) of the blur along that line
__device__ __forceinline__ float blur_at(const float* in, i64 v, int p, int n, i64 stride,
                                         int radius, const double* w) {
    double acc = DMUL((double)in[v], w[0]);
    for (int j = -radius; j < 0; ++j) {
        const double a = (p + j >= 0) ? (double)in[v + j * stride] : 0.0;
        const double b = (p - j < n) ? (double)in[v - j * stride] : 0.0;
        acc = DADD(acc, DMUL(DADD(a, b), w[j]));
    }
    return (float)acc;
}

extern "C" __global__ void paint_blur(const int* ti, const int* sel, const double* wt,
                                      const float* src, float* dst, int axis, int which) {
    const int* r = row_i(ti, tumor_of(sel));
    const int* lo = r + (which ? TI_W_LO0 : TI_S_LO0);
    const int* hi = r + (which ? TI_W_HI0 : TI_S_HI0);
    const int n[3] = {hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]};
    const i64 stride = axis == 0 ? (i64)n[1] * n[2] : (axis == 1 ? n[2] : 1);
    const int radius = r[which ? TI_CAP_RADIUS : TI_RADIUS];
    const double* w = wt + r[which ? TI_CAP_W_OFF : TI_W_OFF] + radius;   // w[-radius .. radius]
    const float* in = src + r[which ? TI_WK_OFF : TI_WS];
    float* out = dst + r[which ? TI_WK_OFF : TI_WS];
    FOR_ITEMS(v, (i64)n[0] * n[1] * n[2])
        out[v] = blur_at(in, v, (int)((v / stride) % n[axis]), n[axis], stride, radius, w);
}

// ---- texture noise (noise.py, normal): the block [z_lo, z_lo + z_dim) of the tumor's coarse
// grid of Box-Muller normals (float32 values, stored as float64). single 0: the transform in
// float64 as NumPy computes it; single 1: in float32 (log, sqrt, sincospi), values within a few
// float32 ulp of those, at a fraction of the float64 cost on a GPU
extern "C" __global__ void paint_noise(const int* ti, const u64* seeds, double* zbuf, int single) {
    const int t = blockIdx.y;
    const int* r = row_i(ti, t);
    const int d1 = r[TI_Z_DIM1], d2 = r[TI_Z_DIM2];
    const i64 c1 = r[TI_COARSE1], half = (r[TI_COARSE2] + 1) / 2;
    double* out = zbuf + r[TI_Z_OFF];
    FOR_ITEMS(v, (i64)r[TI_Z_DIM0] * d1 * d2) {
        const i64 gi = v / ((i64)d1 * d2) + r[TI_Z_LO0];
        const i64 gj = (v / d2) % d1 + r[TI_Z_LO1];
        const i64 gk = v % d2 + r[TI_Z_LO2];
        u32 w0, w1;
        philox((u64)((gi * c1 + gj) * half + gk / 2), seeds[t], 0u, &w0, &w1);
        float z;
        if (single) {
            const float u1 = FMUL((float)((w0 >> 11) + 1u), 4.76837158203125e-07f);      // exact
            const float u2 = FMUL((float)(w1 >> 8), 5.9604644775390625e-08f);            // exact
            const float radius = sqrtf(FMUL(-2.0f, logf(u1)));
            z = FMUL(radius, (gk % 2) ? sinpif(FMUL(2.0f, u2)) : cospif(FMUL(2.0f, u2)));
        } else {
            const double u1 = DMUL((double)((w0 >> 11) + 1u), 4.76837158203125e-07);     // 2^-21
            const double u2 = DMUL((double)(w1 >> 8), 5.9604644775390625e-08);           // 2^-24
            const double radius = sqrt(DMUL(-2.0, log(u1)));
            const double angle = DMUL(6.283185307179586, u2);
            z = (float)DMUL(radius, (gk % 2) ? sin(angle) : cos(angle));
        }
        out[v] = (double)z;
    }
}

// ---- texture field (texture.py, paper_texture): the three axis operators (float64, rows of
// the R part: row i of axis a at ops[op_base_a + i * op_c_a], columns of the noise block from
// z_lo_a) contracted as NumPy does: x, then z, then y; the last pass writes mu_t + sigma_p x field
// (float32) on R. Each row sums over its band of non-zero columns (bands: first, last + 1 per
// row, from band_row_a), in column order: the zeros left out add nothing.
__device__ __forceinline__ void band_of(const int* bands, i64 row, int z_lo, int n, int* u0,
                                        int* u1) {
    *u0 = max(bands[2 * row] - z_lo, 0);
    *u1 = min(bands[2 * row + 1] - z_lo, n);
}

extern "C" __global__ void paint_texture(const int* ti, const double* td, const double* ops,
                                         const int* bands, const double* src, double* dst,
                                         float* tex, int pass) {
    const int t = blockIdx.y;
    const int* r = row_i(ti, t);
    const int m0 = r[TI_R_HI0] - r[TI_R_LO0], m1 = r[TI_R_HI1] - r[TI_R_LO1],
              m2 = r[TI_R_HI2] - r[TI_R_LO2];
    const int z0 = r[TI_Z_DIM0], z1 = r[TI_Z_DIM1], z2 = r[TI_Z_DIM2];
    int u0, u1;
    if (pass == 0) {            // (z0, z1, z2) -> (m0, z1, z2)
        const double* in = src + r[TI_Z_OFF];
        double* out = dst + r[TI_P1_OFF];
        FOR_ITEMS(v, (i64)m0 * z1 * z2) {
            const i64 i = v / ((i64)z1 * z2), jk = v % ((i64)z1 * z2);
            const double* op = ops + r[TI_OP_BASE0] + i * r[TI_OP_C0] + r[TI_Z_LO0];
            band_of(bands, r[TI_BAND_ROW0] + i, r[TI_Z_LO0], z0, &u0, &u1);
            double acc = 0.0;
            for (int u = u0; u < u1; ++u)
                acc = DADD(acc, DMUL(op[u], in[u * (i64)z1 * z2 + jk]));
            out[v] = acc;
        }
    } else if (pass == 1) {     // (m0, z1, z2) -> (m0, z1, m2)
        const double* in = src + r[TI_P1_OFF];
        double* out = dst + r[TI_P2_OFF];
        FOR_ITEMS(v, (i64)m0 * z1 * m2) {
            const i64 ij = v / m2, k = v % m2;
            const double* op = ops + r[TI_OP_BASE2] + k * r[TI_OP_C2] + r[TI_Z_LO2];
            band_of(bands, r[TI_BAND_ROW2] + k, r[TI_Z_LO2], z2, &u0, &u1);
            double acc = 0.0;
            for (int u = u0; u < u1; ++u)
                acc = DADD(acc, DMUL(in[ij * z2 + u], op[u]));
            out[v] = acc;
        }
    } else {                    // (m0, z1, m2) -> (m0, m1, m2), scaled to HU
        const double* in = src + r[TI_P2_OFF];
        float* out = tex + r[TI_TEX_OFF];
        const double* d = td + (i64)t * TD_COLUMNS;
        FOR_ITEMS(v, (i64)m0 * m1 * m2) {
            const i64 i = v / ((i64)m1 * m2), j = (v / m2) % m1, k = v % m2;
            const double* op = ops + r[TI_OP_BASE1] + j * r[TI_OP_C1] + r[TI_Z_LO1];
            band_of(bands, r[TI_BAND_ROW1] + j, r[TI_Z_LO1], z1, &u0, &u1);
            double acc = 0.0;
            for (int u = u0; u < u1; ++u)
                acc = DADD(acc, DMUL(in[(i * z1 + u) * m2 + k], op[u]));
            out[v] = (float)DADD(DMUL(acc, d[TD_SIGMA_P]), d[TD_MU_T]);
        }
    }
}

// ---- one voxel of a crop's scan (scan voxel a, b, e): HU and label; air and background outside
__device__ __forceinline__ void scan_voxel(const u64* scan_ptrs, const int* scan_shapes, int scan,
                                           int a, int b, int e, float* img, unsigned char* lab) {
    const int* shp = scan_shapes + 3 * scan;
    *img = -1024.0f;
    *lab = 0;
    if (a >= 0 && b >= 0 && e >= 0 && a < shp[0] && b < shp[1] && e < shp[2]) {
        const i64 at = ((i64)a * shp[1] + b) * shp[2] + e;
        *img = (float)((const short*)scan_ptrs[2 * scan])[at];
        *lab = ((const unsigned char*)scan_ptrs[2 * scan + 1])[at];
    }
}

// ---- canvas, eq. 4 blend and label, output (synthesize.py, effects.place): one thread per output
// voxel of a crop (blockIdx.y: the crop's row of `ci`). Reads the scan (air and background outside
// it), paints the crop's tumors in their order (m = mask x liver, img = (1 - m) img + m texture,
// tumor where m >= 0.5), writes int16 HU (rint, clipped) and uint8 labels in (Z, Y, X) order.
extern "C" __global__ void paint_blend(const int* ci, const int* ti, const u64* scan_ptrs,
                                       const int* scan_shapes, const float* mask, const float* tex,
                                       short* images, unsigned char* labels,
                                       int sx, int sy, int sz) {
    const int* c = ci + (i64)blockIdx.y * CI_COLUMNS;
    const int scan = c[CI_SCAN];
    const i64 n = (i64)sx * sy * sz;
    short* out_img = images + (i64)c[CI_OUT] * n;
    unsigned char* out_lab = labels + (i64)c[CI_OUT] * n;
    FOR_ITEMS(o, n) {
        const int i = (int)(o % sx), j = (int)((o / sx) % sy), k = (int)(o / ((i64)sx * sy));
        float img;
        unsigned char lab;
        scan_voxel(scan_ptrs, scan_shapes, scan, i + c[CI_LO0], j + c[CI_LO1], k + c[CI_LO2],
                   &img, &lab);
        for (int t = c[CI_T0]; t < c[CI_T1]; ++t) {
            const int* r = row_i(ti, t);
            if (i < r[TI_R_LO0] || i >= r[TI_R_HI0] || j < r[TI_R_LO1] || j >= r[TI_R_HI1] ||
                k < r[TI_R_LO2] || k >= r[TI_R_HI2]) continue;
            const int s1 = r[TI_S_HI1] - r[TI_S_LO1], s2 = r[TI_S_HI2] - r[TI_S_LO2];
            float m = mask[r[TI_WS] + ((i64)(i - r[TI_S_LO0]) * s1 + (j - r[TI_S_LO1])) * s2
                           + (k - r[TI_S_LO2])];
            m = FMUL(m, lab >= LIVER ? 1.0f : 0.0f);
            const int m1 = r[TI_R_HI1] - r[TI_R_LO1], m2 = r[TI_R_HI2] - r[TI_R_LO2];
            const float x = tex[r[TI_TEX_OFF] + ((i64)(i - r[TI_R_LO0]) * m1 + (j - r[TI_R_LO1])) * m2
                                + (k - r[TI_R_LO2])];
            img = FADD(FMUL(FSUB(1.0f, m), img), FMUL(m, x));
            if (m >= 0.5f) lab = TUMOR;
        }
        out_img[o] = (short)fminf(fmaxf(rintf(img), -1024.0f), 3071.0f);
        out_lab[o] = lab;
    }
}

// ---- crops whose tumors have mass effect or capsule (synthesize.py, _paper_crop): painted on a
// canvas (the crop and every work box that reaches it, CI_CV_*), tumor by tumor in their order;
// each launch handles the tumors listed in sel (the k-th of their crop), blockIdx.y one of them.
// Canvas coordinates: R, S, W and centre columns; W-sized buffers (mask_w, edge) at TI_WK_OFF.

__device__ __forceinline__ i64 cv_at(const int* c, int i, int j, int k) {
    return c[CI_CV_OFF] + ((i64)i * c[CI_CV_DIM1] + j) * c[CI_CV_DIM2] + k;
}

extern "C" __global__ void paint_canvas(const int* ci, const u64* scan_ptrs,
                                        const int* scan_shapes, float* cimg, unsigned char* clab) {
    const int* c = ci + (i64)blockIdx.y * CI_COLUMNS;
    const int d0 = c[CI_CV_DIM0], d1 = c[CI_CV_DIM1], d2 = c[CI_CV_DIM2];
    FOR_ITEMS(v, (i64)d0 * d1 * d2) {
        const int i = (int)(v / ((i64)d1 * d2)), j = (int)((v / d2) % d1), k = (int)(v % d2);
        scan_voxel(scan_ptrs, scan_shapes, c[CI_SCAN], i + c[CI_CV_LO0], j + c[CI_CV_LO1],
                   k + c[CI_CV_LO2], cimg + c[CI_CV_OFF] + v, clab + c[CI_CV_OFF] + v);
    }
}

// eq. 4 on R of the canvas (effects.place); a tumor with post-processing also keeps its mask m
// in mask_w (zero elsewhere in W), which mass effect and capsule then use
extern "C" __global__ void paint_place(const int* ci, const int* ti, const int* sel,
                                       const float* mask, const float* tex, float* cimg,
                                       unsigned char* clab, float* mask_w) {
    const int* r = row_i(ti, tumor_of(sel));
    const int* c = ci + (i64)r[TI_CROP] * CI_COLUMNS;
    const int m0 = r[TI_R_HI0] - r[TI_R_LO0], m1 = r[TI_R_HI1] - r[TI_R_LO1],
              m2 = r[TI_R_HI2] - r[TI_R_LO2];
    const int s1 = r[TI_S_HI1] - r[TI_S_LO1], s2 = r[TI_S_HI2] - r[TI_S_LO2];
    const int w1 = r[TI_W_HI1] - r[TI_W_LO1], w2 = r[TI_W_HI2] - r[TI_W_LO2];
    FOR_ITEMS(v, (i64)m0 * m1 * m2) {
        const int i = (int)(v / ((i64)m1 * m2)) + r[TI_R_LO0], j = (int)((v / m2) % m1) + r[TI_R_LO1],
                  k = (int)(v % m2) + r[TI_R_LO2];
        const i64 at = cv_at(c, i, j, k);
        float m = mask[r[TI_WS] + ((i64)(i - r[TI_S_LO0]) * s1 + (j - r[TI_S_LO1])) * s2
                       + (k - r[TI_S_LO2])];
        m = FMUL(m, clab[at] >= LIVER ? 1.0f : 0.0f);
        cimg[at] = FADD(FMUL(FSUB(1.0f, m), cimg[at]), FMUL(m, tex[r[TI_TEX_OFF] + v]));
        if (m >= 0.5f) clab[at] = TUMOR;
        if (r[TI_POST])
            mask_w[r[TI_WK_OFF] + ((i64)(i - r[TI_W_LO0]) * w1 + (j - r[TI_W_LO1])) * w2
                   + (k - r[TI_W_LO2])] = m;
    }
}

// eq. 5 (effects.mass_effect), first half: the cube of half-width g around the centre, as it is
// before the warp (image, label and mask), into the tumor's cube buffers at TI_CUBE_OFF
extern "C" __global__ void paint_warp_copy(const int* ci, const int* ti, const int* sel,
                                           const float* cimg, const unsigned char* clab,
                                           const float* mask_w, float* q_img,
                                           unsigned char* q_lab, float* q_mask) {
    const int* r = row_i(ti, tumor_of(sel));
    const int* c = ci + (i64)r[TI_CROP] * CI_COLUMNS;
    const int n = 2 * r[TI_CUBE] + 1;
    const int w1 = r[TI_W_HI1] - r[TI_W_LO1], w2 = r[TI_W_HI2] - r[TI_W_LO2];
    FOR_ITEMS(v, (i64)n * n * n) {
        const int i = (int)(v / ((i64)n * n)) + r[TI_CENTER0] - r[TI_CUBE];
        const int j = (int)((v / n) % n) + r[TI_CENTER1] - r[TI_CUBE];
        const int k = (int)(v % n) + r[TI_CENTER2] - r[TI_CUBE];
        const i64 at = cv_at(c, i, j, k);
        q_img[r[TI_CUBE_OFF] + v] = cimg[at];
        q_lab[r[TI_CUBE_OFF] + v] = clab[at];
        q_mask[r[TI_CUBE_OFF] + v] = mask_w[r[TI_WK_OFF] + ((i64)(i - r[TI_W_LO0]) * w1
                                            + (j - r[TI_W_LO1])) * w2 + (k - r[TI_W_LO2])];
    }
}

// second half: each cube voxel samples the copy at the local scaling warp's coordinates
// (effects._warp_coords, float32), linearly (image, mask) or at the nearest voxel (label), the
// coordinates clamped to the cube (ndimage.map_coordinates, mode "nearest")
__device__ __forceinline__ float linear3(const float* q, int n, const double x[3]) {
    int b[3]; double w[3][2];
    for (int a = 0; a < 3; ++a) {
        double t = fmin(fmax(x[a], 0.0), (double)(n - 1));
        b[a] = (int)floor(t);
        w[a][1] = t - (double)b[a];
        w[a][0] = 1.0 - w[a][1];
    }
    double acc = 0.0;
    for (int p = 0; p < 2; ++p)
        for (int e = 0; e < 2; ++e)
            for (int f = 0; f < 2; ++f) {
                const int i = min(b[0] + p, n - 1), j = min(b[1] + e, n - 1), k = min(b[2] + f, n - 1);
                double v = (double)q[((i64)i * n + j) * n + k];
                v = DMUL(DMUL(DMUL(v, w[0][p]), w[1][e]), w[2][f]);
                acc = DADD(acc, v);
            }
    return (float)acc;
}

extern "C" __global__ void paint_warp(const int* ci, const int* ti, const int* sel,
                                      const float* tf, float* cimg, unsigned char* clab,
                                      float* mask_w, const float* q_img,
                                      const unsigned char* q_lab, const float* q_mask) {
    const int t = tumor_of(sel);
    const int* r = row_i(ti, t);
    const float* f = tf + (i64)t * TF_COLUMNS;
    const int* c = ci + (i64)r[TI_CROP] * CI_COLUMNS;
    const int g = r[TI_CUBE], n = 2 * g + 1;
    const int w1 = r[TI_W_HI1] - r[TI_W_LO1], w2 = r[TI_W_HI2] - r[TI_W_LO2];
    const float gamma = f[TF_GAMMA], inten = f[TF_INTENSITY], gf = (float)g;
    const float* qi = q_img + r[TI_CUBE_OFF];
    const unsigned char* ql = q_lab + r[TI_CUBE_OFF];
    const float* qm = q_mask + r[TI_CUBE_OFF];
    FOR_ITEMS(v, (i64)n * n * n) {
        const int o[3] = {(int)(v / ((i64)n * n)), (int)((v / n) % n), (int)(v % n)};
        float d[3];
        for (int a = 0; a < 3; ++a) d[a] = FSUB((float)o[a], gf);
        const float dist = sqrtf(FADD(FADD(FMUL(d[0], d[0]), FMUL(d[1], d[1])), FMUL(d[2], d[2])));
        float scale = 1.0f;
        if (dist < gamma) {
            const float u = FSUB(1.0f, FDIV(dist, gamma));
            scale = FSUB(1.0f, FMUL(FMUL(u, u), inten));
        }
        double x[3];
        for (int a = 0; a < 3; ++a) x[a] = (double)FADD(gf, FMUL(d[a], scale));
        const int i = o[0] + r[TI_CENTER0] - g, j = o[1] + r[TI_CENTER1] - g,
                  k = o[2] + r[TI_CENTER2] - g;
        const i64 at = cv_at(c, i, j, k);
        cimg[at] = linear3(qi, n, x);
        int b[3];
        for (int a = 0; a < 3; ++a)
            b[a] = min(max((int)floor(fmin(fmax(x[a], 0.0), (double)(n - 1)) + 0.5), 0), n - 1);
        clab[at] = ql[((i64)b[0] * n + b[1]) * n + b[2]];
        mask_w[r[TI_WK_OFF] + ((i64)(i - r[TI_W_LO0]) * w1 + (j - r[TI_W_LO1])) * w2
               + (k - r[TI_W_LO2])] = linear3(qm, n, x);
    }
}

// eqs. 6-8 (effects.capsule): the edge band lb <= m <= ub of the mask on W into `edge`; after
// its blur (paint_blur, which 1), img += capsule_hu x blurred edge on W
extern "C" __global__ void paint_band(const int* ti, const int* sel, const float* tf,
                                      const float* mask_w, float* edge) {
    const int t = tumor_of(sel);
    const int* r = row_i(ti, t);
    const float* f = tf + (i64)t * TF_COLUMNS;
    const i64 n = (i64)(r[TI_W_HI0] - r[TI_W_LO0]) * (r[TI_W_HI1] - r[TI_W_LO1])
                  * (r[TI_W_HI2] - r[TI_W_LO2]);
    FOR_ITEMS(v, n) {
        const float m = mask_w[r[TI_WK_OFF] + v];
        edge[r[TI_WK_OFF] + v] = (m >= f[TF_BAND_LO] && m <= f[TF_BAND_HI]) ? 1.0f : 0.0f;
    }
}

extern "C" __global__ void paint_capsule(const int* ci, const int* ti, const int* sel,
                                         const float* tf, const float* blurred, float* cimg) {
    const int t = tumor_of(sel);
    const int* r = row_i(ti, t);
    const float* f = tf + (i64)t * TF_COLUMNS;
    const int* c = ci + (i64)r[TI_CROP] * CI_COLUMNS;
    const int n1 = r[TI_W_HI1] - r[TI_W_LO1], n2 = r[TI_W_HI2] - r[TI_W_LO2];
    FOR_ITEMS(v, (i64)(r[TI_W_HI0] - r[TI_W_LO0]) * n1 * n2) {
        const int i = (int)(v / ((i64)n1 * n2)) + r[TI_W_LO0], j = (int)((v / n2) % n1) + r[TI_W_LO1],
                  k = (int)(v % n2) + r[TI_W_LO2];
        const i64 at = cv_at(c, i, j, k);
        cimg[at] = FADD(cimg[at], FMUL(f[TF_CAPSULE_HU], blurred[r[TI_WK_OFF] + v]));
    }
}

// the crop out of its canvas: int16 HU (rint, clipped) and uint8 labels in (Z, Y, X) order
extern "C" __global__ void paint_output(const int* ci, const float* cimg, const unsigned char* clab,
                                        short* images, unsigned char* labels,
                                        int sx, int sy, int sz) {
    const int* c = ci + (i64)blockIdx.y * CI_COLUMNS;
    const i64 n = (i64)sx * sy * sz;
    FOR_ITEMS(o, n) {
        const int i = (int)(o % sx), j = (int)((o / sx) % sy), k = (int)(o / ((i64)sx * sy));
        const i64 at = cv_at(c, i + c[CI_LO0] - c[CI_CV_LO0], j + c[CI_LO1] - c[CI_CV_LO1],
                             k + c[CI_LO2] - c[CI_CV_LO2]);
        images[(i64)c[CI_OUT] * n + o] = (short)fminf(fmaxf(rintf(cimg[at]), -1024.0f), 3071.0f);
        labels[(i64)c[CI_OUT] * n + o] = clab[at];
    }
}
