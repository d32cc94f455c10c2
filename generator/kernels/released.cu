// The `released` recipe's kernels (generator/kernels/released.py plans and launches them;
// tests/released_twins.py holds one NumPy twin per kernel). Compiled after paint.cu, in the same
// module: its macros (FMUL ..., FOR_ITEMS), blur_at and scan_voxel are used here.
//
// One crop's work, as synthesize.py's _released_crop does it: a canvas (the crop and its margin
// of 3 mask-blur sigmas + 1) holds the union of the crop's tumors' binary shapes (each on the part
// of its box on the canvas) within the liver; the union is blurred (scipy's gaussian_filter, mode
// constant, three axes); the texture is the window of the crop's bank volume over the canvas
// (mirror-folded rows), scaled to the drawn mean over its voxels above 0.12; the output voxel is
// the scan's HU minus texture x blurred union x liver x delta, tumor where the union is.
// Tables (column names in released.py, #defines RC_*, RT_*, RF_*, RTF_*, RTD_*):
//   rc   int32 per crop: scan, batch row, crop corner (scan voxels), margin, canvas dims and
//        offset, its tumor parts [t0, t1), bank volume index, edge and offsets, blur radius and
//        weights offset, whether it has tumor parts
//   rf   float32 per crop: target mean, delta HU
//   rt   int32 per tumor part: its crop, box corner on the canvas, part [a, b) in box voxels,
//        the box centre (shape_halves)
//   rtf  float32 per part: box half-sizes (max(n - 1, 1) / 2), the 3 x 2 x 3 x 3 control grid
//   rtd  float64 per part: the ellipsoid test's products and threshold, the centre

#ifdef TF_CPU
static inline double atomicAdd(double* at, double v) { double old = *at; *at = old + v; return old; }
static inline unsigned long long atomicAdd(unsigned long long* at, unsigned long long v) {
    unsigned long long old = *at; *at = old + v; return old;
}
#endif

__device__ __forceinline__ float rel_quadratic(float u, float g0, float g1, float g2) {
    // shape._quadratic: g1 + u ((g2 - g0) 0.5 + u ((g0 + g2) 0.5 - g1))
    const float b = FMUL(FSUB(g2, g0), 0.5f);
    const float c = FSUB(FMUL(FADD(g0, g2), 0.5f), g1);
    return FADD(g1, FMUL(u, FADD(b, FMUL(u, c))));
}

__device__ __forceinline__ float rel_unit(float p, float half) {
    return fminf(fmaxf(FSUB(FDIV(p, half), 1.0f), -1.0f), 1.0f);
}

// ---- union of the binary shapes (shape._released_shape, the part of each box on the canvas)
extern "C" __global__ void released_union(const int* rc, const int* rt, const float* rtf,
                                          const double* rtd, unsigned char* uni) {
    const int* r = rt + (i64)blockIdx.y * RT_COLUMNS;
    const int* c = rc + (i64)r[RT_CROP] * RC_COLUMNS;
    const float* f = rtf + (i64)blockIdx.y * RTF_COLUMNS;
    const double* d = rtd + (i64)blockIdx.y * RTD_COLUMNS;
    const int n0 = r[RT_B0] - r[RT_A0], n1 = r[RT_B1] - r[RT_A1], n2 = r[RT_B2] - r[RT_A2];
    const int d1 = c[RC_CV_DIM1], d2 = c[RC_CV_DIM2];
    const int pairs[3][2] = {{0, 1}, {1, 2}, {0, 2}};
    FOR_ITEMS(v, (i64)n0 * n1 * n2) {
        const int q[3] = {(int)(v / ((i64)n1 * n2)) + r[RT_A0], (int)((v / n2) % n1) + r[RT_A1],
                          (int)(v % n2) + r[RT_A2]};
        float pos[3] = {(float)q[0], (float)q[1], (float)q[2]};
        for (int p = 2; p >= 0; --p) {
            const int a = pairs[p][0], b = pairs[p][1];
            const float u = rel_unit(pos[a], f[RTF_HALF0 + a]);
            const float w = rel_unit(pos[b], f[RTF_HALF0 + b]);
            float moved[2];
            for (int comp = 0; comp < 2; ++comp) {
                const float* g = f + RTF_GRID + (p * 2 + comp) * 9;     // g[i, j] at i * 3 + j
                float rows[3];
                for (int j = 0; j < 3; ++j)
                    rows[j] = rel_quadratic(u, g[0 * 3 + j], g[1 * 3 + j], g[2 * 3 + j]);
                moved[comp] = rel_quadratic(w, rows[0], rows[1], rows[2]);
            }
            pos[a] = FADD(pos[a], moved[0]);
            pos[b] = FADD(pos[b], moved[1]);
        }
        double s2[3];
        for (int a = 0; a < 3; ++a) {
            const double x = DADD((double)floorf(FADD(pos[a], 0.5f)), -d[RTD_CENTER0 + a]);
            s2[a] = DMUL(x, x);
        }
        const double inside = DADD(DADD(DMUL(s2[0], d[RTD_P0]), DMUL(s2[1], d[RTD_P1])),
                                   DMUL(s2[2], d[RTD_P2]));
        if (inside < d[RTD_THRESHOLD]) {
            const int i = r[RT_CORNER0] + q[0], j = r[RT_CORNER1] + q[1], k = r[RT_CORNER2] + q[2];
            uni[c[RC_CV_OFF] + ((i64)i * d1 + j) * d2 + k] = 1;
        }
    }
}

// ---- the union within the liver (effects.darken), as float32 0/1 for the blur
extern "C" __global__ void released_liver(const int* rc, const u64* scan_ptrs,
                                          const int* scan_shapes, unsigned char* uni,
                                          float* field) {
    const int* c = rc + (i64)blockIdx.y * RC_COLUMNS;
    const int d0 = c[RC_CV_DIM0], d1 = c[RC_CV_DIM1], d2 = c[RC_CV_DIM2], m = c[RC_MARGIN];
    FOR_ITEMS(v, (i64)d0 * d1 * d2) {
        const int i = (int)(v / ((i64)d1 * d2)), j = (int)((v / d2) % d1), k = (int)(v % d2);
        float img;
        unsigned char lab;
        scan_voxel(scan_ptrs, scan_shapes, c[RC_SCAN], i + c[RC_LO0] - m, j + c[RC_LO1] - m,
                   k + c[RC_LO2] - m, &img, &lab);
        const i64 at = c[RC_CV_OFF] + v;
        const unsigned char u = (uni[at] && lab >= LIVER) ? 1 : 0;
        uni[at] = u;
        field[at] = u ? 1.0f : 0.0f;
    }
}

// ---- one axis of the union's blur over the canvas: scipy's gaussian_filter, mode constant,
// float64 sums in correlate1d's order (the centre, then the pairs from the outermost in)
extern "C" __global__ void released_blur(const int* rc, const double* wt, const float* src,
                                         float* dst, int axis) {
    const int* c = rc + (i64)blockIdx.y * RC_COLUMNS;
    const int n[3] = {c[RC_CV_DIM0], c[RC_CV_DIM1], c[RC_CV_DIM2]};
    const i64 stride = axis == 0 ? (i64)n[1] * n[2] : (axis == 1 ? n[2] : 1);
    const int radius = c[RC_RADIUS];
    const double* w = wt + c[RC_W_OFF] + radius;                     // w[-radius .. radius]
    const float* in = src + c[RC_CV_OFF];
    float* out = dst + c[RC_CV_OFF];
    FOR_ITEMS(v, (i64)n[0] * n[1] * n[2])
        out[v] = blur_at(in, v, (int)((v / stride) % n[axis]), n[axis], stride, radius, w);
}

// ---- the texture window: bank volume row of canvas voxel x along one axis (texture.mirror_rows)
__device__ __forceinline__ int rel_fold(int x, int offset, int edge) {
    const int period = 2 * (edge - 1);
    const int m = (offset + x) % period;
    return m < edge ? m : period - m;
}

__device__ __forceinline__ float rel_window(const int* c, const u64* bank_ptrs, int i, int j,
                                            int k) {
    const int e = c[RC_EDGE];
    const float* vol = (const float*)bank_ptrs[c[RC_BANK]];
    return vol[((i64)rel_fold(i, c[RC_OFF0], e) * e + rel_fold(j, c[RC_OFF1], e)) * e
               + rel_fold(k, c[RC_OFF2], e)];
}

// sum (float64) and count of the window's voxels above 0.12 (texture.scale_to_mean): every such
// value is a multiple of 2^-27 below 1, so the float64 sum of a canvas under 2^26 voxels is exact
// and the order of the atomic adds does not matter
extern "C" __global__ void released_stats(const int* rc, const u64* bank_ptrs, double* sums,
                                          unsigned long long* counts) {
    const int* c = rc + (i64)blockIdx.y * RC_COLUMNS;
    if (!c[RC_TUMORS]) return;
    const int d0 = c[RC_CV_DIM0], d1 = c[RC_CV_DIM1], d2 = c[RC_CV_DIM2];
    FOR_ITEMS(v, (i64)d0 * d1 * d2) {
        const int i = (int)(v / ((i64)d1 * d2)), j = (int)((v / d2) % d1), k = (int)(v % d2);
        const float x = rel_window(c, bank_ptrs, i, j, k);
        if (x > 0.12f) {
            atomicAdd(sums + blockIdx.y, (double)x);
            atomicAdd(counts + blockIdx.y, 1ull);
        }
    }
}

// no voxel above 0.12: the whole window's mean, summed by one thread in row-major order
extern "C" __global__ void released_fallback(const int* rc, const u64* bank_ptrs, double* sums,
                                             const unsigned long long* counts) {
    const int* c = rc + (i64)blockIdx.y * RC_COLUMNS;
    if (!c[RC_TUMORS] || counts[blockIdx.y] || blockIdx.x || threadIdx.x) return;
    const int d0 = c[RC_CV_DIM0], d1 = c[RC_CV_DIM1], d2 = c[RC_CV_DIM2];
    double acc = 0.0;
    for (int i = 0; i < d0; ++i)
        for (int j = 0; j < d1; ++j)
            for (int k = 0; k < d2; ++k)
                acc = DADD(acc, (double)rel_window(c, bank_ptrs, i, j, k));
    sums[blockIdx.y] = acc;
}

// ---- the output crop: scan HU darkened by texture x blurred union x liver x delta
// (effects.darken), tumor label on the union, int16 HU (rint, clipped) and uint8 in (Z, Y, X)
extern "C" __global__ void released_output(const int* rc, const float* rf, const u64* scan_ptrs,
                                           const int* scan_shapes, const u64* bank_ptrs,
                                           const unsigned char* uni, const float* blur,
                                           const double* sums, const unsigned long long* counts,
                                           short* images, unsigned char* labels, int sx, int sy,
                                           int sz) {
    const int* c = rc + (i64)blockIdx.y * RC_COLUMNS;
    const float* f = rf + (i64)blockIdx.y * RF_COLUMNS;
    const i64 n = (i64)sx * sy * sz;
    short* out_img = images + (i64)c[RC_OUT] * n;
    unsigned char* out_lab = labels + (i64)c[RC_OUT] * n;
    const int m = c[RC_MARGIN], d1 = c[RC_CV_DIM1], d2 = c[RC_CV_DIM2];
    float factor = 0.0f;
    if (c[RC_TUMORS]) {
        const unsigned long long count = counts[blockIdx.y];
        const i64 cells = (i64)c[RC_CV_DIM0] * d1 * d2;
        const float mean = (float)(sums[blockIdx.y] / (double)(count ? (i64)count : cells));
        factor = FDIV(f[RF_MEAN], fmaxf(mean, 1e-6f));
    }
    FOR_ITEMS(o, n) {
        const int i = (int)(o % sx), j = (int)((o / sx) % sy), k = (int)(o / ((i64)sx * sy));
        float img;
        unsigned char lab;
        scan_voxel(scan_ptrs, scan_shapes, c[RC_SCAN], i + c[RC_LO0], j + c[RC_LO1],
                   k + c[RC_LO2], &img, &lab);
        if (c[RC_TUMORS]) {
            const i64 at = c[RC_CV_OFF] + ((i64)(i + m) * d1 + (j + m)) * d2 + (k + m);
            const float t = fminf(fmaxf(FMUL(rel_window(c, bank_ptrs, i + m, j + m, k + m),
                                             factor), 0.0f), 1.0f);
            const float liver = lab >= LIVER ? 1.0f : 0.0f;
            img = FSUB(img, FMUL(FMUL(FMUL(t, blur[at]), liver), f[RF_DELTA]));
            if (uni[at]) lab = TUMOR;
        }
        out_img[o] = (short)fminf(fmaxf(rintf(img), -1024.0f), 3071.0f);
        out_lab[o] = lab;
    }
}
