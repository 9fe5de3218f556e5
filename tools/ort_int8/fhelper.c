// Exact float emulation helpers for ORT/MLAS bit-exact reference (compiled with -ffp-contract=off).
#include <math.h>
#include <stdint.h>
#include <stddef.h>

// MLAS SgemmOperation emulation for C[M,N] (+)= A[M,K] * B[K,N], NoTrans/NoTrans, alpha=1.
// beta: 0 => overwrite, 1 => accumulate.  Inner kernel: per element acc=0; acc=fmaf(a,b,acc) over k in block;
// then C = acc (ZeroMode) or C = fmaf(acc,1,C) == acc + C.
// MlasSgemmKernelM1Avx (used by MlasSgemmOperation when M == 1, NoTrans A, alpha == 1, beta in {0,1}):
// no FMA; K consumed in groups of 4: t = ((p0 + p1) + p2) + p3 (each p = a*b rounded), C = t + C;
// then a remaining group of 2 (t = p0 + p1; C = t + C), then a remaining single (C = p + C).
static void sgemm_m1(const float* A, const float* B, size_t ldb, float* C, size_t N, size_t K, float beta) {
    for (size_t n = 0; n < N; n++) {
        float c = (beta == 0.0f) ? 0.0f : C[n];
        size_t k = 0;
        for (; k + 4 <= K; k += 4) {
            float t = A[k] * B[k * ldb + n];
            t = t + A[k + 1] * B[(k + 1) * ldb + n];
            t = t + A[k + 2] * B[(k + 2) * ldb + n];
            t = t + A[k + 3] * B[(k + 3) * ldb + n];
            c = t + c;
        }
        if ((K - k) & 2) {
            float t = A[k] * B[k * ldb + n];
            t = t + A[k + 1] * B[(k + 1) * ldb + n];
            c = t + c;
            k += 2;
        }
        if ((K - k) & 1) {
            c = A[k] * B[k * ldb + n] + c;
        }
        C[n] = c;
    }
}

// MlasSgemmKernelM1TransposeBAvx, used when N == 1 (and ldb == ldc == 1): C[m] = dot(A[m,:], b) + C.
// 8 lane accumulators (lane j sums products k = j mod 8, in k order, mul then add, no FMA); reduction
// depends on whether row m is processed in a group of 4, 2 or 1 rows (groups of 4 first, then 2, then 1).
static void sgemm_n1(const float* A, size_t lda, const float* b, float* C, size_t M, size_t K, float beta) {
    size_t m = 0;
    while (m < M) {
        size_t group = (M - m >= 4) ? 4 : ((M - m) & 2) ? 2 : 1;
        for (size_t r = m; r < m + group; r++) {
            float a[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (size_t k = 0; k < K; k++) a[k & 7] = a[k & 7] + A[r * lda + k] * b[k];
            float s;
            if (group == 4) {
                float lo = ((a[0] + a[1]) + a[2]) + a[3];
                float hi = ((a[4] + a[5]) + a[6]) + a[7];
                s = lo + hi;
            } else if (group == 2) {
                s = ((a[2] + a[0]) + (a[6] + a[4])) + ((a[3] + a[1]) + (a[7] + a[5]));
            } else {
                s = ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
            }
            float c = (beta == 0.0f) ? 0.0f : C[r];
            C[r] = s + c;
        }
        m += group;
    }
}

static void sgemm_op(const float* A, size_t lda, const float* B, size_t ldb, float* C, size_t ldc,
                     size_t M, size_t N, size_t K, float beta) {
    if (N == 1 && ldb == 1 && ldc == 1 && (beta == 0.0f || beta == 1.0f) && M != 1) { sgemm_n1(A, lda, B, C, M, K, beta); return; }
    if (M == 1 && (beta == 0.0f || beta == 1.0f)) { sgemm_m1(A, B, ldb, C, N, K, beta); return; }
    size_t StrideN = 128, StrideK = 128;
    if (N >= K) { while (StrideK / 2 >= K) { StrideN *= 2; StrideK /= 2; } }
    else { while (StrideN > 16 && StrideN / 2 >= N) { StrideK *= 2; StrideN /= 2; } }
    for (size_t n0 = 0; n0 < N; n0 += StrideN) {
        size_t CountN = N - n0 < StrideN ? N - n0 : StrideN;
        int zero = (beta == 0.0f);
        for (size_t k0 = 0; k0 < K; k0 += StrideK) {
            size_t CountK = K - k0 < StrideK ? K - k0 : StrideK;
            for (size_t m = 0; m < M; m++) {
                for (size_t n = n0; n < n0 + CountN; n++) {
                    float acc = 0.0f;
                    for (size_t k = k0; k < k0 + CountK; k++)
                        acc = fmaf(A[m * lda + k], B[k * ldb + n], acc);
                    if (zero) C[m * ldc + n] = acc; else C[m * ldc + n] = acc + C[m * ldc + n];
                }
            }
            zero = 0;
        }
    }
}

void sgemm_direct(const float* A, const float* B, float* C, size_t M, size_t N, size_t K) {
    sgemm_op(A, K, B, N, C, N, M, N, K, 0.0f);
}

// MlasConvOperation single-thread (ExpandThenGemmSegmented, SegmentStartN=0, SegmentCountN=OutputSize)
// col: full im2col matrix [K, OutputSize] (precomputed by caller, zeros for padding).
void conv_segmented(const float* Filter, const float* col, float* Out, size_t M, size_t OutputSize, size_t K) {
    uint32_t StrideN = 128, StrideK = 128;
    size_t SegmentCountN = OutputSize;
    if (SegmentCountN >= K) { while (StrideK / 2 >= K) { StrideN *= 2; StrideK /= 2; } }
    else { while (StrideN > 16 && StrideN / 2 >= SegmentCountN) { StrideK *= 2; StrideN /= 2; } }
    for (size_t n = 0; n < SegmentCountN; n += StrideN) {
        size_t CountN = SegmentCountN - n; if (CountN > StrideN) CountN = StrideN;
        float beta = 0.0f;
        for (size_t k = 0; k < K; k += StrideK) {
            size_t CountK = K - k; if (CountK > StrideK) CountK = StrideK;
            // ColumnBuffer is [CountK, CountN] with ld CountN; emulate by strided view of col
            sgemm_op(Filter + k, K, col + k * OutputSize + n, OutputSize, Out + n, OutputSize, M, CountN, CountK, beta);
            beta = 1.0f;
        }
    }
}

// QLinearAdd AVX2 kernel element formula: fmaf(a, rac, fmaf(b, rbc, fixed)) -> rne -> saturate
void qladd(const float* a, const float* b, float rac, float rbc, float fixed, int32_t* out, size_t n) {
    for (size_t i = 0; i < n; i++) {
        float t = fmaf(b[i], rbc, fixed);
        t = fmaf(a[i], rac, t);
        out[i] = (int32_t)nearbyintf(t);
    }
}
float c_fmaf(float a, float b, float c) { return fmaf(a, b, c); }
