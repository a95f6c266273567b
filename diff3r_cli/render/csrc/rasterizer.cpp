// Compiled CPU backend of diff3r's Gaussian rasterizer (gsplat "classic" conventions).
//
// Same arithmetic as the pure-PyTorch reference (render/torch_backend.py), in two stages
// the way gsplat splits them:
//   project_*  one (camera, Gaussian) entry at a time: EWA projection, culling, SH colour;
//   raster_*   one pixel at a time over a depth-sorted per-tile list of entries.
// Each stage has a forward, a hand-written backward (vjp) and a forward-mode jvp. The
// projection jvp runs the forward code on dual numbers (value + tangent), so it is exact
// by construction; the backwards are written out and tested against both.
//
// Determinism: forward and jvp write each output once (no reductions across threads).
// Backwards accumulate into per-thread buffers under a static schedule and sum them in
// thread order, so results are bit-identical from run to run at a fixed thread count.
#include <torch/library.h>
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <limits>
#include <mutex>
#include <vector>

namespace {

constexpr double NEAR_PLANE = 0.01;
constexpr double FAR_PLANE = 1e10;
constexpr double EPS2D = 0.3;
constexpr double EXTEND_MAX = 3.33;
constexpr double ALPHA_MIN = 1.0 / 255.0;
constexpr double ALPHA_MAX = 0.999;
constexpr double T_MIN = 1e-4;

const double SH_C0 = 0.28209479177387814;
const double SH_C1 = 0.4886025119029199;
const double SH_C2[5] = {1.0925484305920792, -1.0925484305920792, 0.31539156525252005,
                         -1.0925484305920792, 0.5462742152960396};
const double SH_C3[7] = {-0.5900435899266435, 2.890611442640554, -0.4570457994644658,
                         0.3731763325901154, -0.4570457994644658, 1.445305721320277,
                         -0.5900435899266435};

// ---- dual numbers for the forward-mode jvp of the projection ---------------------------

template <typename T>
struct Dual {
  T v, d;
  Dual() : v(0), d(0) {}
  Dual(T v_) : v(v_), d(0) {}
  Dual(T v_, T d_) : v(v_), d(d_) {}
};
template <typename T> inline Dual<T> operator+(Dual<T> a, Dual<T> b) { return {a.v + b.v, a.d + b.d}; }
template <typename T> inline Dual<T> operator-(Dual<T> a, Dual<T> b) { return {a.v - b.v, a.d - b.d}; }
template <typename T> inline Dual<T> operator-(Dual<T> a) { return {-a.v, -a.d}; }
template <typename T> inline Dual<T> operator*(Dual<T> a, Dual<T> b) { return {a.v * b.v, a.d * b.v + a.v * b.d}; }
// Divisions keep the primal a true quotient (not a·(1/b)), so a dual-number pass reproduces
// the plain forward bit for bit (the fused forward+jvp projection relies on it).
template <typename T> inline Dual<T> operator/(Dual<T> a, Dual<T> b) {
  const T q = a.v / b.v;
  return {q, (a.d - q * b.d) / b.v};
}
template <typename T> inline Dual<T> operator+(Dual<T> a, T b) { return {a.v + b, a.d}; }
template <typename T> inline Dual<T> operator+(T a, Dual<T> b) { return {a + b.v, b.d}; }
template <typename T> inline Dual<T> operator-(Dual<T> a, T b) { return {a.v - b, a.d}; }
template <typename T> inline Dual<T> operator-(T a, Dual<T> b) { return {a - b.v, -b.d}; }
template <typename T> inline Dual<T> operator*(Dual<T> a, T b) { return {a.v * b, a.d * b}; }
template <typename T> inline Dual<T> operator*(T a, Dual<T> b) { return {a * b.v, a * b.d}; }
template <typename T> inline Dual<T> operator/(Dual<T> a, T b) { return {a.v / b, a.d / b}; }
template <typename T> inline Dual<T> operator/(T a, Dual<T> b) {
  const T q = a / b.v;
  return {q, -q * b.d / b.v};
}
template <typename T> inline Dual<T> exp_(Dual<T> a) { T e = std::exp(a.v); return {e, e * a.d}; }
template <typename T> inline Dual<T> sqrt_(Dual<T> a) { T s = std::sqrt(a.v); return {s, a.d / (T(2) * s)}; }
template <typename T> inline T exp_(T a) { return std::exp(a); }
template <typename T> inline T sqrt_(T a) { return std::sqrt(a); }
template <typename T> inline T val(T a) { return a; }
template <typename T> inline T val(Dual<T> a) { return a.v; }
// clamp with the derivative of the selected branch (like torch.minimum/maximum/clamp_min)
template <typename S, typename T> inline S clamp_(S a, T lo, T hi) {
  if (val(a) < lo) return S(lo);
  if (val(a) > hi) return S(hi);
  return a;
}

template <typename T> struct Scalar { using type = T; };
template <typename T> struct Scalar<Dual<T>> { using type = T; };

// Real SH basis (3DGS / gsplat sign convention) at a *normalised* direction.
template <typename S>
inline void sh_basis(int degree, S x, S y, S z, S* b) {
  using T = typename Scalar<S>::type;
  b[0] = S(T(SH_C0));
  if (degree < 1) return;
  b[1] = T(-SH_C1) * y; b[2] = T(SH_C1) * z; b[3] = T(-SH_C1) * x;
  if (degree < 2) return;
  S xx = x * x, yy = y * y, zz = z * z, xy = x * y, yz = y * z, xz = x * z;
  b[4] = T(SH_C2[0]) * xy; b[5] = T(SH_C2[1]) * yz;
  b[6] = T(SH_C2[2]) * (T(2) * zz - xx - yy);
  b[7] = T(SH_C2[3]) * xz; b[8] = T(SH_C2[4]) * (xx - yy);
  if (degree < 3) return;
  b[9] = T(SH_C3[0]) * y * (T(3) * xx - yy);
  b[10] = T(SH_C3[1]) * xy * z;
  b[11] = T(SH_C3[2]) * y * (T(4) * zz - xx - yy);
  b[12] = T(SH_C3[3]) * z * (T(2) * zz - T(3) * xx - T(3) * yy);
  b[13] = T(SH_C3[4]) * x * (T(4) * zz - xx - yy);
  b[14] = T(SH_C3[5]) * z * (xx - yy);
  b[15] = T(SH_C3[6]) * x * (xx - T(3) * yy);
}

// Per-camera constants.
template <typename T>
struct Cam {
  T R[9], t[3], pos[3], fx, fy, cx, cy;
  T lxp, lxn, lyp, lyn;  // gsplat's clamp of the Jacobian's point to 1.3x the frustum
  int W, H;
};

template <typename T>
Cam<T> make_cam(const T* K, const T* w2c, const T* pos, int W, int H) {
  Cam<T> c;
  for (int i = 0; i < 3; ++i) {
    for (int j = 0; j < 3; ++j) c.R[3 * i + j] = w2c[4 * i + j];
    c.t[i] = w2c[4 * i + 3];
    c.pos[i] = pos[i];
  }
  c.fx = K[0]; c.fy = K[4]; c.cx = K[2]; c.cy = K[5];
  T tfx = T(0.5) * T(W) / c.fx, tfy = T(0.5) * T(H) / c.fy;
  c.lxp = (T(W) - c.cx) / c.fx + T(0.3) * tfx;
  c.lxn = c.cx / c.fx + T(0.3) * tfx;
  c.lyp = (T(H) - c.cy) / c.fy + T(0.3) * tfy;
  c.lyn = c.cy / c.fy + T(0.3) * tfy;
  c.W = W; c.H = H;
  return c;
}

// Differentiable outputs of one entry: geo = mean2d x, y, conic A, B, C, opacity;
// feat = r, g, b, depth. Also the dilated 2D covariance (a, b, c) and det for culling.
template <typename S>
struct ProjOut {
  S geo[6], feat[4];
  S a, b, c, det;
};

// The projection of one Gaussian into one camera (no culling decisions here).
template <typename S, typename T>
inline void project_core(const Cam<T>& cm, const S* m, const S* ls, const S* q, S ol,
                         const S* sh, int deg, ProjOut<S>& o) {
  // camera coordinates
  S p[3];
  for (int i = 0; i < 3; ++i) p[i] = cm.R[3 * i] * m[0] + cm.R[3 * i + 1] * m[1] + cm.R[3 * i + 2] * m[2] + cm.t[i];
  // rotation from the normalised quaternion (w, x, y, z)
  S qq = q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3];
  S qn_ = sqrt_(qq);
  if (val(qn_) < T(1e-12)) qn_ = S(T(1e-12));
  S w = q[0] / qn_, x = q[1] / qn_, y = q[2] / qn_, z = q[3] / qn_;
  S Rq[9] = {T(1) - T(2) * (y * y + z * z), T(2) * (x * y - w * z), T(2) * (x * z + w * y),
             T(2) * (x * y + w * z), T(1) - T(2) * (x * x + z * z), T(2) * (y * z - w * x),
             T(2) * (x * z - w * y), T(2) * (y * z + w * x), T(1) - T(2) * (x * x + y * y)};
  S s2[3];
  for (int j = 0; j < 3; ++j) { S s = exp_(ls[j]); s2[j] = s * s; }
  // world covariance Σ = Rq diag(s²) Rqᵀ
  S Sw[9];
  for (int i = 0; i < 3; ++i)
    for (int j = i; j < 3; ++j) {
      S v = Rq[3 * i] * s2[0] * Rq[3 * j] + Rq[3 * i + 1] * s2[1] * Rq[3 * j + 1] + Rq[3 * i + 2] * s2[2] * Rq[3 * j + 2];
      Sw[3 * i + j] = v; Sw[3 * j + i] = v;
    }
  // camera covariance Σc = R Σ Rᵀ
  S RS[9];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      RS[3 * i + j] = cm.R[3 * i] * Sw[j] + cm.R[3 * i + 1] * Sw[3 + j] + cm.R[3 * i + 2] * Sw[6 + j];
  S Sc[9];
  for (int i = 0; i < 3; ++i)
    for (int j = i; j < 3; ++j) {
      S v = RS[3 * i] * cm.R[3 * j] + RS[3 * i + 1] * cm.R[3 * j + 1] + RS[3 * i + 2] * cm.R[3 * j + 2];
      Sc[3 * i + j] = v; Sc[3 * j + i] = v;
    }
  S rz = T(1) / p[2];
  S u = clamp_(p[0] * rz, -cm.lxn, cm.lxp);
  S v = clamp_(p[1] * rz, -cm.lyn, cm.lyp);
  S J00 = cm.fx * rz, J02 = -cm.fx * u * rz, J11 = cm.fy * rz, J12 = -cm.fy * v * rz;
  S c00 = J00 * J00 * Sc[0] + T(2) * J00 * J02 * Sc[2] + J02 * J02 * Sc[8];
  S c01 = J00 * J11 * Sc[1] + J00 * J12 * Sc[2] + J02 * J11 * Sc[5] + J02 * J12 * Sc[8];
  S c11 = J11 * J11 * Sc[4] + T(2) * J11 * J12 * Sc[5] + J12 * J12 * Sc[8];
  o.a = c00 + T(EPS2D); o.b = c01; o.c = c11 + T(EPS2D);
  o.det = o.a * o.c - o.b * o.b;
  o.geo[0] = cm.fx * p[0] * rz + cm.cx;
  o.geo[1] = cm.fy * p[1] * rz + cm.cy;
  o.geo[2] = o.c / o.det;
  o.geo[3] = -o.b / o.det;
  o.geo[4] = o.a / o.det;
  o.geo[5] = T(1) / (T(1) + exp_(-ol));
  // colour: SH at the direction from the camera centre to the mean, + 0.5, clamped at 0
  int K = (deg + 1) * (deg + 1);
  S basis[16];
  S d0 = m[0] - cm.pos[0], d1 = m[1] - cm.pos[1], d2 = m[2] - cm.pos[2];
  if (deg >= 1) {
    S dn = sqrt_(d0 * d0 + d1 * d1 + d2 * d2);
    if (val(dn) < T(1e-12)) dn = S(T(1e-12));
    sh_basis<S>(deg, d0 / dn, d1 / dn, d2 / dn, basis);
  } else {
    basis[0] = S(T(SH_C0));
  }
  for (int ch = 0; ch < 3; ++ch) {
    S acc = S(T(0.5));
    for (int k = 0; k < K; ++k) acc = acc + basis[k] * sh[3 * k + ch];
    o.feat[ch] = val(acc) >= T(0) ? acc : S(T(0));
  }
  o.feat[3] = p[2];
}

int sh_degree_of(int64_t K) {
  int d = (int)std::lround(std::sqrt((double)K)) - 1;
  TORCH_CHECK(d >= 0 && d <= 3 && (d + 1) * (d + 1) == K, "SH must have 1, 4, 9 or 16 coefficients");
  return d;
}

// Culling and pixel box of one projected entry: false when it is culled (degenerate or
// non-finite 2D covariance, or its footprint misses the image); else writes box b = x0, x1, y0, y1.
template <typename T>
inline bool entry_box(T a, T c, T det, T mx, T my, T o, int64_t W, int64_t H, int32_t* b) {
  if (!(det > T(0)) || !std::isfinite(det) || !std::isfinite(mx) || !std::isfinite(my)) return false;
  T ext = std::min(std::sqrt(T(2) * std::log(std::max(o / T(ALPHA_MIN), T(1)))), T(EXTEND_MAX));
  T rx = std::ceil(ext * std::sqrt(std::max(a, T(0))));
  T ry = std::ceil(ext * std::sqrt(std::max(c, T(0))));
  if (!(rx > 0 || ry > 0)) return false;
  if (!(mx + rx > 0 && mx - rx < T(W) && my + ry > 0 && my - ry < T(H))) return false;
  // Tight box of the ellipse {dᵀΣ⁻¹d <= ext²}: pixel indices whose centres fall inside.
  T hx = ext * std::sqrt(a) + T(1e-3), hy = ext * std::sqrt(c) + T(1e-3);
  T x0 = std::min(std::max(std::ceil(mx - hx - T(0.5)), T(0)), T(W));
  T x1 = std::min(std::max(std::floor(mx + hx - T(0.5)), T(-1)), T(W - 1));
  T y0 = std::min(std::max(std::ceil(my - hy - T(0.5)), T(0)), T(H));
  T y1 = std::min(std::max(std::floor(my + hy - T(0.5)), T(-1)), T(H - 1));
  b[0] = (int32_t)x0; b[1] = (int32_t)x1; b[2] = (int32_t)y0; b[3] = (int32_t)y1;
  return true;
}

// ---- projection: forward (optionally with its jvp in the same pass) ----------------------
// Dense pass over all (camera, Gaussian) pairs, then compaction in (camera, Gaussian) order.
// With WithJvp (forward-mode AD), project_core runs on dual numbers: the primal (.v) is
// bit-identical to the plain pass (the same operations in the same order, and dual divisions
// form true quotients) and the tangent (.d) comes with it, so forward-mode AD does not project
// twice. Culling and boxes are always decided on the primal.
template <typename T, bool WithJvp>
std::vector<at::Tensor> project_forward_impl(const std::vector<at::Tensor>& P, const std::vector<at::Tensor>& D,
                                             const at::Tensor& K, const at::Tensor& w2c, const at::Tensor& campos,
                                             int64_t W, int64_t H) {
  const int64_t N = P[0].size(0), C = K.size(0), KS = P[4].size(1);
  const int deg = sh_degree_of(KS);
  const T *pm = P[0].data_ptr<T>(), *pl = P[1].data_ptr<T>(), *pq = P[2].data_ptr<T>(),
          *po = P[3].data_ptr<T>(), *ps = P[4].data_ptr<T>();
  const T *dm = nullptr, *dl = nullptr, *dq = nullptr, *dop = nullptr, *ds = nullptr;
  if (WithJvp) {
    dm = D[0].data_ptr<T>(); dl = D[1].data_ptr<T>(); dq = D[2].data_ptr<T>();
    dop = D[3].data_ptr<T>(); ds = D[4].data_ptr<T>();
  }
  std::vector<Cam<T>> cams;
  for (int64_t c = 0; c < C; ++c)
    cams.push_back(make_cam<T>(K.data_ptr<T>() + 9 * c, w2c.data_ptr<T>() + 16 * c,
                               campos.data_ptr<T>() + 3 * c, (int)W, (int)H));
  std::vector<T> dgeo(C * N * 6), dfeat(C * N * 4), tgeo(WithJvp ? C * N * 6 : 0), tfeat(WithJvp ? C * N * 4 : 0);
  std::vector<int32_t> dbox(C * N * 4);
  std::vector<uint8_t> ok(C * N, 0);
  using D_ = Dual<T>;
  const int nt = at::get_num_threads();
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t i = 0; i < C * N; ++i) {
    const int64_t c = i / N, n = i % N;
    const Cam<T>& cm = cams[c];
    const T* m = pm + 3 * n;
    T z = cm.R[6] * m[0] + cm.R[7] * m[1] + cm.R[8] * m[2] + cm.t[2];
    T o = T(1) / (T(1) + std::exp(-po[n]));
    if (!(z >= T(NEAR_PLANE) && z <= T(FAR_PLANE) && o >= T(ALPHA_MIN))) continue;
    if constexpr (WithJvp) {
      D_ md[3], ls[3], q[4], sh[48];
      for (int k = 0; k < 3; ++k) { md[k] = D_(m[k], dm[3 * n + k]); ls[k] = D_(pl[3 * n + k], dl[3 * n + k]); }
      for (int k = 0; k < 4; ++k) q[k] = D_(pq[4 * n + k], dq[4 * n + k]);
      for (int k = 0; k < 3 * KS; ++k) sh[k] = D_(ps[3 * KS * n + k], ds[3 * KS * n + k]);
      ProjOut<D_> r;
      project_core<D_, T>(cm, md, ls, q, D_(po[n], dop[n]), sh, deg, r);
      if (!entry_box<T>(r.a.v, r.c.v, r.det.v, r.geo[0].v, r.geo[1].v, o, W, H, dbox.data() + 4 * i)) continue;
      for (int k = 0; k < 6; ++k) { dgeo[6 * i + k] = r.geo[k].v; tgeo[6 * i + k] = r.geo[k].d; }
      for (int k = 0; k < 4; ++k) { dfeat[4 * i + k] = r.feat[k].v; tfeat[4 * i + k] = r.feat[k].d; }
    } else {
      ProjOut<T> r;
      project_core<T, T>(cm, m, pl + 3 * n, pq + 4 * n, po[n], ps + 3 * KS * n, deg, r);
      if (!entry_box<T>(r.a, r.c, r.det, r.geo[0], r.geo[1], o, W, H, dbox.data() + 4 * i)) continue;
      for (int k = 0; k < 6; ++k) dgeo[6 * i + k] = r.geo[k];
      for (int k = 0; k < 4; ++k) dfeat[4 * i + k] = r.feat[k];
    }
    ok[i] = 1;
  }
  std::vector<int64_t> idx;
  idx.reserve(C * N);
  for (int64_t i = 0; i < C * N; ++i)
    if (ok[i]) idx.push_back(i);
  const int64_t E = (int64_t)idx.size();
  auto fopt = P[0].options();
  at::Tensor geo = at::empty({E, 6}, fopt), feat = at::empty({E, 4}, fopt);
  at::Tensor tg = at::empty({WithJvp ? E : 0, 6}, fopt), tf = at::empty({WithJvp ? E : 0, 4}, fopt);
  at::Tensor cam = at::empty({E}, fopt.dtype(at::kLong)), gid = at::empty({E}, fopt.dtype(at::kLong));
  at::Tensor box = at::empty({E, 4}, fopt.dtype(at::kInt));
  T *g = geo.data_ptr<T>(), *f = feat.data_ptr<T>(), *g2 = tg.data_ptr<T>(), *f2 = tf.data_ptr<T>();
  int64_t* pc = cam.data_ptr<int64_t>();
  int64_t* pgd = gid.data_ptr<int64_t>();
  int32_t* pb = box.data_ptr<int32_t>();
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t e = 0; e < E; ++e) {
    const int64_t i = idx[e];
    pc[e] = i / N; pgd[e] = i % N;
    for (int k = 0; k < 6; ++k) g[6 * e + k] = dgeo[6 * i + k];
    for (int k = 0; k < 4; ++k) f[4 * e + k] = dfeat[4 * i + k];
    for (int k = 0; k < 4; ++k) pb[4 * e + k] = dbox[4 * i + k];
    if (WithJvp) {
      for (int k = 0; k < 6; ++k) g2[6 * e + k] = tgeo[6 * i + k];
      for (int k = 0; k < 4; ++k) f2[4 * e + k] = tfeat[4 * i + k];
    }
  }
  if (WithJvp) return {geo, feat, cam, gid, box, tg, tf};
  return {geo, feat, cam, gid, box};
}

// ---- projection: jvp (dual numbers through project_core) --------------------------------

template <typename T>
std::vector<at::Tensor> project_jvp_impl(const std::vector<at::Tensor>& P, const std::vector<at::Tensor>& D,
                                         const at::Tensor& K, const at::Tensor& w2c, const at::Tensor& campos,
                                         int64_t W, int64_t H, const at::Tensor& cam, const at::Tensor& gid) {
  const int64_t KS = P[4].size(1), E = cam.size(0), C = K.size(0);
  const int deg = sh_degree_of(KS);
  std::vector<Cam<T>> cams;
  for (int64_t c = 0; c < C; ++c)
    cams.push_back(make_cam<T>(K.data_ptr<T>() + 9 * c, w2c.data_ptr<T>() + 16 * c,
                               campos.data_ptr<T>() + 3 * c, (int)W, (int)H));
  const T *pm = P[0].data_ptr<T>(), *pl = P[1].data_ptr<T>(), *pq = P[2].data_ptr<T>(),
          *po = P[3].data_ptr<T>(), *ps = P[4].data_ptr<T>();
  const T *dm = D[0].data_ptr<T>(), *dl = D[1].data_ptr<T>(), *dq = D[2].data_ptr<T>(),
          *dop = D[3].data_ptr<T>(), *ds = D[4].data_ptr<T>();
  const int64_t* pc = cam.data_ptr<int64_t>();
  const int64_t* pg = gid.data_ptr<int64_t>();
  at::Tensor tgeo = at::empty({E, 6}, P[0].options()), tfeat = at::empty({E, 4}, P[0].options());
  T* tg = tgeo.data_ptr<T>();
  T* tf = tfeat.data_ptr<T>();
  using D_ = Dual<T>;
  const int nt = at::get_num_threads();
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t e = 0; e < E; ++e) {
    const int64_t n = pg[e];
    D_ m[3], ls[3], q[4], sh[48];
    for (int k = 0; k < 3; ++k) { m[k] = D_(pm[3 * n + k], dm[3 * n + k]); ls[k] = D_(pl[3 * n + k], dl[3 * n + k]); }
    for (int k = 0; k < 4; ++k) q[k] = D_(pq[4 * n + k], dq[4 * n + k]);
    for (int k = 0; k < 3 * KS; ++k) sh[k] = D_(ps[3 * KS * n + k], ds[3 * KS * n + k]);
    ProjOut<D_> r;
    project_core<D_, T>(cams[pc[e]], m, ls, q, D_(po[n], dop[n]), sh, deg, r);
    for (int k = 0; k < 6; ++k) tg[6 * e + k] = r.geo[k].d;
    for (int k = 0; k < 4; ++k) tf[4 * e + k] = r.feat[k].d;
  }
  return {tgeo, tfeat};
}

// ---- projection: backward (hand-written reverse mode of project_core) -------------------

template <typename T>
inline void project_entry_backward(const Cam<T>& cm, const T* m, const T* ls, const T* q, T ol,
                                   const T* sh, int deg, const T* gg, const T* gf,
                                   T* g_m, T* g_ls, T* g_q, T* g_ol, T* g_sh) {
  // --- recompute the forward intermediates
  T p[3];
  for (int i = 0; i < 3; ++i) p[i] = cm.R[3 * i] * m[0] + cm.R[3 * i + 1] * m[1] + cm.R[3 * i + 2] * m[2] + cm.t[i];
  T qnorm = std::sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2] + q[3] * q[3]);
  const bool qclamped = qnorm < T(1e-12);
  if (qclamped) qnorm = T(1e-12);
  T w = q[0] / qnorm, x = q[1] / qnorm, y = q[2] / qnorm, z = q[3] / qnorm;
  T Rq[9] = {1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
             2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
             2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)};
  T s[3], s2[3];
  for (int j = 0; j < 3; ++j) { s[j] = std::exp(ls[j]); s2[j] = s[j] * s[j]; }
  T Sw[9];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      Sw[3 * i + j] = Rq[3 * i] * s2[0] * Rq[3 * j] + Rq[3 * i + 1] * s2[1] * Rq[3 * j + 1] + Rq[3 * i + 2] * s2[2] * Rq[3 * j + 2];
  T RS[9], Sc[9];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      RS[3 * i + j] = cm.R[3 * i] * Sw[j] + cm.R[3 * i + 1] * Sw[3 + j] + cm.R[3 * i + 2] * Sw[6 + j];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      Sc[3 * i + j] = RS[3 * i] * cm.R[3 * j] + RS[3 * i + 1] * cm.R[3 * j + 1] + RS[3 * i + 2] * cm.R[3 * j + 2];
  T rz = T(1) / p[2];
  T u0 = p[0] * rz, v0 = p[1] * rz;
  const bool ufree = !(u0 < -cm.lxn) && !(u0 > cm.lxp);
  const bool vfree = !(v0 < -cm.lyn) && !(v0 > cm.lyp);
  T u = ufree ? u0 : (u0 < -cm.lxn ? -cm.lxn : cm.lxp);
  T v = vfree ? v0 : (v0 < -cm.lyn ? -cm.lyn : cm.lyp);
  T J00 = cm.fx * rz, J02 = -cm.fx * u * rz, J11 = cm.fy * rz, J12 = -cm.fy * v * rz;
  T a = J00 * J00 * Sc[0] + 2 * J00 * J02 * Sc[2] + J02 * J02 * Sc[8] + T(EPS2D);
  T b = J00 * J11 * Sc[1] + J00 * J12 * Sc[2] + J02 * J11 * Sc[5] + J02 * J12 * Sc[8];
  T c = J11 * J11 * Sc[4] + 2 * J11 * J12 * Sc[5] + J12 * J12 * Sc[8] + T(EPS2D);
  T det = a * c - b * b;
  T A = c / det, B = -b / det, Cc = a / det;

  // --- opacity
  T o = T(1) / (T(1) + std::exp(-ol));
  *g_ol += gg[5] * o * (T(1) - o);

  // --- colour (SH): basis derivatives w.r.t. the normalised direction by dual numbers
  const int KS = (deg + 1) * (deg + 1);
  T gdir[3] = {0, 0, 0};
  {
    T d[3] = {m[0] - cm.pos[0], m[1] - cm.pos[1], m[2] - cm.pos[2]};
    T dn = std::sqrt(d[0] * d[0] + d[1] * d[1] + d[2] * d[2]);
    const bool dclamped = dn < T(1e-12);
    if (dclamped) dn = T(1e-12);
    T nx = d[0] / dn, ny = d[1] / dn, nzz = d[2] / dn;
    T basis[16];
    if (deg >= 1) sh_basis<T>(deg, nx, ny, nzz, basis); else basis[0] = T(SH_C0);
    T gc[3];
    for (int ch = 0; ch < 3; ++ch) {
      T acc = T(0.5);
      for (int k = 0; k < KS; ++k) acc += basis[k] * sh[3 * k + ch];
      gc[ch] = acc >= T(0) ? gf[ch] : T(0);  // clamp_min(0) passes the gradient at >= 0
      for (int k = 0; k < KS; ++k) g_sh[3 * k + ch] += basis[k] * gc[ch];
    }
    if (deg >= 1) {
      T gb[16];
      for (int k = 0; k < KS; ++k) gb[k] = sh[3 * k] * gc[0] + sh[3 * k + 1] * gc[1] + sh[3 * k + 2] * gc[2];
      T gn[3];
      for (int axis = 0; axis < 3; ++axis) {
        Dual<T> dx(nx, axis == 0), dy(ny, axis == 1), dz(nzz, axis == 2), bd[16];
        sh_basis<Dual<T>>(deg, dx, dy, dz, bd);
        T acc = 0;
        for (int k = 1; k < KS; ++k) acc += gb[k] * bd[k].d;
        gn[axis] = acc;
      }
      // through d / max(|d|, 1e-12)
      if (dclamped) {
        for (int i = 0; i < 3; ++i) gdir[i] = gn[i] / dn;
      } else {
        T dot = gn[0] * nx + gn[1] * ny + gn[2] * nzz;
        gdir[0] = (gn[0] - nx * dot) / dn; gdir[1] = (gn[1] - ny * dot) / dn; gdir[2] = (gn[2] - nzz * dot) / dn;
      }
    }
  }

  // --- conic = inverse of the dilated 2D covariance [[a, b], [b, c]]
  T gA = gg[2], gB = gg[3], gC = gg[4];
  T gdet = -(gA * A + gB * B + gC * Cc) / det;
  T ga = gC / det + gdet * c;
  T gb = -gB / det - T(2) * b * gdet;
  T gcv = gA / det + gdet * a;
  // G2: gradient w.r.t. the symmetric 2D covariance (off-diagonal gradient split in two)
  T G00 = ga, G01 = T(0.5) * gb, G11 = gcv;
  // J = [[J00, 0, J02], [0, J11, J12]];  dL/dΣc = Jᵀ G2 J;  dL/dJ = 2 G2 J Σc
  T Jm[6] = {J00, 0, J02, 0, J11, J12};
  T GJ[6];  // G2 J (2x3)
  for (int j = 0; j < 3; ++j) {
    GJ[j] = G00 * Jm[j] + G01 * Jm[3 + j];
    GJ[3 + j] = G01 * Jm[j] + G11 * Jm[3 + j];
  }
  T gSc[9];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) gSc[3 * i + j] = Jm[i] * GJ[j] + Jm[3 + i] * GJ[3 + j];
  T gJ[6];  // 2 G2 J Σc
  for (int r = 0; r < 2; ++r)
    for (int j = 0; j < 3; ++j)
      gJ[3 * r + j] = T(2) * (GJ[3 * r] * Sc[j] + GJ[3 * r + 1] * Sc[3 + j] + GJ[3 * r + 2] * Sc[6 + j]);
  // camera point p: through J, mean2d and depth
  T gp[3] = {0, 0, 0};
  gp[0] += gg[0] * cm.fx * rz;
  gp[1] += gg[1] * cm.fy * rz;
  gp[2] += -(gg[0] * cm.fx * p[0] + gg[1] * cm.fy * p[1]) * rz * rz;
  gp[2] += gf[3];
  gp[2] += gJ[0] * (-cm.fx * rz * rz) + gJ[4] * (-cm.fy * rz * rz);
  // J02 = -fx u rz with u = clamp(x rz):  ∂/∂x = -fx rz (∂u/∂x),  ∂/∂z = fx u rz² - fx rz (∂u/∂z)
  if (ufree) {
    gp[0] += gJ[2] * (-cm.fx * rz * rz);
    gp[2] += gJ[2] * (cm.fx * u * rz * rz + cm.fx * rz * p[0] * rz * rz);
  } else {
    gp[2] += gJ[2] * (cm.fx * u * rz * rz);
  }
  if (vfree) {
    gp[1] += gJ[5] * (-cm.fy * rz * rz);
    gp[2] += gJ[5] * (cm.fy * v * rz * rz + cm.fy * rz * p[1] * rz * rz);
  } else {
    gp[2] += gJ[5] * (cm.fy * v * rz * rz);
  }
  // means: p = R m + t, plus the SH direction
  for (int j = 0; j < 3; ++j)
    g_m[j] += cm.R[j] * gp[0] + cm.R[3 + j] * gp[1] + cm.R[6 + j] * gp[2] + gdir[j];
  // Σc = R Σ Rᵀ  ->  dL/dΣ = Rᵀ gSc R
  T tmp[9], gS[9];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      tmp[3 * i + j] = cm.R[i] * gSc[j] + cm.R[3 + i] * gSc[3 + j] + cm.R[6 + i] * gSc[6 + j];  // Rᵀ gSc
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j)
      gS[3 * i + j] = tmp[3 * i] * cm.R[j] + tmp[3 * i + 1] * cm.R[3 + j] + tmp[3 * i + 2] * cm.R[6 + j];
  // Σ = M Mᵀ with M = Rq diag(s): dL/dM = (gS + gSᵀ) M
  T gM[9];
  for (int i = 0; i < 3; ++i)
    for (int j = 0; j < 3; ++j) {
      T acc = 0;
      for (int k = 0; k < 3; ++k) acc += (gS[3 * i + k] + gS[3 * k + i]) * Rq[3 * k + j] * s[j];
      gM[3 * i + j] = acc;
    }
  T gR[9];
  for (int j = 0; j < 3; ++j) {
    T gs = 0;
    for (int i = 0; i < 3; ++i) { gR[3 * i + j] = gM[3 * i + j] * s[j]; gs += gM[3 * i + j] * Rq[3 * i + j]; }
    g_ls[j] += gs * s[j];
  }
  // rotation matrix of the normalised quaternion
  T gw = 2 * (-z * gR[1] + y * gR[2] + z * gR[3] - x * gR[5] - y * gR[6] + x * gR[7]);
  T gx = 2 * (y * gR[1] + z * gR[2] + y * gR[3] - 2 * x * gR[4] - w * gR[5] + z * gR[6] + w * gR[7] - 2 * x * gR[8]);
  T gy = 2 * (-2 * y * gR[0] + x * gR[1] + w * gR[2] + x * gR[3] + z * gR[5] - w * gR[6] + z * gR[7] - 2 * y * gR[8]);
  T gz = 2 * (-2 * z * gR[0] - w * gR[1] + x * gR[2] + w * gR[3] - 2 * z * gR[4] + y * gR[5] + x * gR[6] + y * gR[7]);
  if (qclamped) {
    g_q[0] += gw / qnorm; g_q[1] += gx / qnorm; g_q[2] += gy / qnorm; g_q[3] += gz / qnorm;
  } else {
    T dot = gw * w + gx * x + gy * y + gz * z;
    g_q[0] += (gw - w * dot) / qnorm; g_q[1] += (gx - x * dot) / qnorm;
    g_q[2] += (gy - y * dot) / qnorm; g_q[3] += (gz - z * dot) / qnorm;
  }
}

template <typename T>
std::vector<at::Tensor> project_backward_impl(const std::vector<at::Tensor>& P, const at::Tensor& K,
                                              const at::Tensor& w2c, const at::Tensor& campos, int64_t W,
                                              int64_t H, const at::Tensor& cam, const at::Tensor& gid,
                                              const at::Tensor& g_geo, const at::Tensor& g_feat) {
  const int64_t N = P[0].size(0), KS = P[4].size(1), E = cam.size(0), C = K.size(0);
  const int deg = sh_degree_of(KS);
  std::vector<Cam<T>> cams;
  for (int64_t c = 0; c < C; ++c)
    cams.push_back(make_cam<T>(K.data_ptr<T>() + 9 * c, w2c.data_ptr<T>() + 16 * c,
                               campos.data_ptr<T>() + 3 * c, (int)W, (int)H));
  const T *pm = P[0].data_ptr<T>(), *pl = P[1].data_ptr<T>(), *pq = P[2].data_ptr<T>(),
          *po = P[3].data_ptr<T>(), *ps = P[4].data_ptr<T>();
  const int64_t* pc = cam.data_ptr<int64_t>();
  const int64_t* pg = gid.data_ptr<int64_t>();
  const T* gg = g_geo.data_ptr<T>();
  const T* gf = g_feat.data_ptr<T>();
  // entry of (camera, Gaussian), so each Gaussian sums its cameras in a fixed order
  std::vector<int32_t> entry(C * N, -1);
  for (int64_t e = 0; e < E; ++e) entry[pc[e] * N + pg[e]] = (int32_t)e;
  auto opt = P[0].options();
  at::Tensor Gm = at::zeros({N, 3}, opt), Gl = at::zeros({N, 3}, opt), Gq = at::zeros({N, 4}, opt),
             Go = at::zeros({N}, opt), Gs = at::zeros({N, KS, 3}, opt);
  T *gm = Gm.data_ptr<T>(), *gl = Gl.data_ptr<T>(), *gq = Gq.data_ptr<T>(), *go = Go.data_ptr<T>(),
    *gs = Gs.data_ptr<T>();
  const int nt = at::get_num_threads();
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t c = 0; c < C; ++c) {
      const int32_t e = entry[c * N + n];
      if (e < 0) continue;
      project_entry_backward<T>(cams[c], pm + 3 * n, pl + 3 * n, pq + 4 * n, po[n], ps + 3 * KS * n, deg,
                                gg + 6 * (int64_t)e, gf + 4 * (int64_t)e, gm + 3 * n, gl + 3 * n, gq + 4 * n,
                                go + n, gs + 3 * KS * n);
    }
  }
  return {Gm, Gl, Gq, Go, Gs};
}

// ---- binning: per-tile lists of entries in compositing (depth) order --------------------

// Order-preserving unsigned image of a float's bits: a < b as floats <=> key(a) < key(b)
// (negative numbers have every bit flipped, non-negative ones only the sign bit).
template <typename U, typename T>
inline U order_key(T x) {
  U b;
  std::memcpy(&b, &x, sizeof(T));
  constexpr U SIGN = U(1) << (8 * sizeof(U) - 1);
  return (b & SIGN) ? ~b : (b | SIGN);
}

template <typename T>
std::vector<int64_t> depth_order(const at::Tensor& feat, const int64_t* pc, int64_t E, int64_t C) {
  // Compositing order: (camera, depth), ties by entry index. An LSD radix sort on the depth
  // bits (16-bit digits; stable, so equal depths keep index order) followed by a stable
  // counting pass on the camera gives exactly the order of a comparison sort on
  // (camera, depth, index), in O(E) and independent of the thread count.
  using U = typename std::conditional<sizeof(T) == 4, uint32_t, uint64_t>::type;
  constexpr int BITS = 16;
  constexpr U MASK = (U(1) << BITS) - 1;
  const T* f = feat.data_ptr<T>();
  std::vector<U> key(E), key2(E);
  std::vector<int64_t> idx(E), idx2(E);
  for (int64_t e = 0; e < E; ++e) { key[e] = order_key<U>(f[4 * e + 3]); idx[e] = e; }
  std::vector<int64_t> hist((size_t)1 << BITS);
  for (int shift = 0; shift < (int)(8 * sizeof(U)); shift += BITS) {
    std::fill(hist.begin(), hist.end(), 0);
    for (int64_t i = 0; i < E; ++i) hist[(key[i] >> shift) & MASK]++;
    if (E > 0 && hist[(key[0] >> shift) & MASK] == E) continue;  // one digit value: order unchanged
    int64_t run = 0;
    for (auto& h : hist) { const int64_t c = h; h = run; run += c; }
    for (int64_t i = 0; i < E; ++i) {
      const int64_t pos = hist[(key[i] >> shift) & MASK]++;
      key2[pos] = key[i];
      idx2[pos] = idx[i];
    }
    key.swap(key2);
    idx.swap(idx2);
  }
  std::vector<int64_t> cstart(C + 1, 0);
  for (int64_t e = 0; e < E; ++e) cstart[pc[e] + 1]++;
  for (int64_t c = 0; c < C; ++c) cstart[c + 1] += cstart[c];
  std::vector<int64_t> order(E);
  for (int64_t i = 0; i < E; ++i) order[cstart[pc[idx[i]]]++] = idx[i];
  return order;
}

std::vector<at::Tensor> bin_tiles(const at::Tensor& box, const at::Tensor& cam, const at::Tensor& feat,
                                  int64_t C, int64_t W, int64_t H, int64_t tile) {
  const int64_t E = box.size(0);
  std::vector<int64_t> order_v;
  AT_DISPATCH_FLOATING_TYPES(feat.scalar_type(), "depth_order", [&] {
    order_v = depth_order<scalar_t>(feat, cam.data_ptr<int64_t>(), E, C);
  });
  const int64_t* po = order_v.data();
  const int64_t TX = (W + tile - 1) / tile, TY = (H + tile - 1) / tile, NT = C * TX * TY;
  const int32_t* b = box.data_ptr<int32_t>();
  const int64_t* pc = cam.data_ptr<int64_t>();
  // each camera's entries are a contiguous run of the order, and its tiles are its own, so
  // cameras are counted and filled in parallel without sharing a counter
  std::vector<int64_t> cstart(C + 1, E);
  for (int64_t k = E - 1; k >= 0; --k) cstart[pc[po[k]]] = k;
  for (int64_t c = C - 1; c >= 0; --c) cstart[c] = std::min(cstart[c], cstart[c + 1]);
  std::vector<int64_t> count(NT + 1, 0);
  const int nt = at::get_num_threads();
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t c = 0; c < C; ++c)
    for (int64_t k = cstart[c]; k < cstart[c + 1]; ++k) {
      const int32_t* bb = b + 4 * po[k];
      if (bb[1] < bb[0] || bb[3] < bb[2]) continue;
      const int64_t base = c * TX * TY;
      for (int64_t ty = bb[2] / tile; ty <= bb[3] / tile; ++ty)
        for (int64_t tx = bb[0] / tile; tx <= bb[1] / tile; ++tx) count[base + ty * TX + tx + 1]++;
    }
  for (int64_t i = 0; i < NT; ++i) count[i + 1] += count[i];
  at::Tensor offsets = at::empty({NT + 1}, cam.options());
  int64_t* off = offsets.data_ptr<int64_t>();
  std::copy(count.begin(), count.end(), off);
  at::Tensor list = at::empty({count[NT]}, cam.options().dtype(at::kInt));
  int32_t* l = list.data_ptr<int32_t>();
  // filling in depth order keeps every tile's list sorted by depth
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t c = 0; c < C; ++c)
    for (int64_t k = cstart[c]; k < cstart[c + 1]; ++k) {
      const int64_t e = po[k];
      const int32_t* bb = b + 4 * e;
      if (bb[1] < bb[0] || bb[3] < bb[2]) continue;
      const int64_t base = c * TX * TY;
      for (int64_t ty = bb[2] / tile; ty <= bb[3] / tile; ++ty)
        for (int64_t tx = bb[0] / tile; tx <= bb[1] / tile; ++tx) l[count[base + ty * TX + tx]++] = (int32_t)e;
    }
  return {offsets, list};
}

// ---- rasterization ---------------------------------------------------------------------

template <typename T>
struct Packed {  // one entry of a tile's list, gathered for locality
  T mx, my, A, B, Cc, o, f[4];
  T smax;  // beyond this σ the pair's α is certainly below 1/255: skip without exp
  int32_t x0, x1, y0, y1, e;
};

template <typename T>
inline void gather_tile(int64_t s, int64_t t, const int32_t* list, const T* geo, const T* feat,
                        const int32_t* box, std::vector<Packed<T>>& out) {
  out.resize(t - s);
  for (int64_t k = s; k < t; ++k) {
    const int32_t e = list[k];
    Packed<T>& P = out[k - s];
    const T* g = geo + 6 * (int64_t)e;
    const T* f = feat + 4 * (int64_t)e;
    const int32_t* b = box + 4 * (int64_t)e;
    P.mx = g[0]; P.my = g[1]; P.A = g[2]; P.B = g[3]; P.Cc = g[4]; P.o = g[5];
    // o·exp(-σ) >= 1/255  <=>  σ <= log(255·o); the 1e-4 margin (far above rounding) keeps
    // every decision exactly that of the full test below.
    P.smax = std::log(T(255) * P.o) + T(1e-4);
    P.f[0] = f[0]; P.f[1] = f[1]; P.f[2] = f[2]; P.f[3] = f[3];
    P.x0 = b[0]; P.x1 = b[1]; P.y0 = b[2]; P.y1 = b[3]; P.e = e;
  }
}

// Pixels of a tile covered by an entry's box: [x0, x1] x [y0, y1] in tile-local indices.
struct Span { int x0, x1, y0, y1; };

inline Span clip(int bx0, int bx1, int by0, int by1, int64_t tx0, int64_t ty0, int tw, int th) {
  Span s;
  s.x0 = std::max<int>(bx0 - (int)tx0, 0); s.x1 = std::min<int>(bx1 - (int)tx0, tw - 1);
  s.y0 = std::max<int>(by0 - (int)ty0, 0); s.y1 = std::min<int>(by1 - (int)ty0, th - 1);
  return s;
}

struct Grid {
  int64_t C, W, H, tile, TX, TY;
  Grid(int64_t C_, int64_t W_, int64_t H_, int64_t t_)
      : C(C_), W(W_), H(H_), tile(t_), TX((W_ + t_ - 1) / t_), TY((H_ + t_ - 1) / t_) {}
  int64_t tiles() const { return C * TX * TY; }
};

// One tile's geometry in the image: camera, origin and size (edge tiles are smaller).
struct TileInfo {
  int64_t c, x0, y0;
  int w, h;
  TileInfo(const Grid& G, int64_t ti) {
    c = ti / (G.TX * G.TY);
    const int64_t r = ti % (G.TX * G.TY);
    x0 = (r % G.TX) * G.tile; y0 = (r / G.TX) * G.tile;
    w = (int)std::min<int64_t>(G.tile, G.W - x0); h = (int)std::min<int64_t>(G.tile, G.H - y0);
  }
  int64_t pixel(const Grid& G, int lx, int ly) const { return (c * G.H + y0 + ly) * G.W + x0 + lx; }
};

// α of an entry at the centre of pixel (px, py) of the image; dx, dy = mean - centre.
template <typename T>
inline T pair_alpha(const Packed<T>& P, int64_t px, int64_t py, T& dx, T& dy) {
  dx = P.mx - (T(px) + T(0.5));
  dy = P.my - (T(py) + T(0.5));
  const T sigma = T(0.5) * (P.A * dx * dx + P.Cc * dy * dy) + P.B * dx * dy;
  if (sigma > P.smax) return T(0);
  return std::min(P.o * std::exp(-sigma), T(ALPHA_MAX));
}

// Compositing state of one tile's pixels. Entries are visited in depth order ("entry-major"):
// each entry touches only the pixels of its box, so no pixel tests entries that miss it,
// and the order of pairs at every pixel is still front to back.
struct TileState {
  std::vector<double> Tr, acc;
  std::vector<int32_t> last;   // list index of the last composited entry (-1: none)
  std::vector<uint8_t> done;   // transmittance cut-off reached
  int active = 0;
  void reset(int n, int nacc) {
    Tr.assign(n, 1.0); acc.assign((size_t)n * nacc, 0.0); last.assign(n, -1); done.assign(n, 0);
    active = n;
  }
};

// Front-to-back pass over one tile; calls f(k, P, pixel index in tile, α, T before, dx, dy)
// for every composited pair.
template <typename T, typename F>
inline void composite_tile(const std::vector<Packed<T>>& ents, const TileInfo& ti, int tile, TileState& st,
                           F&& f) {
  const int n = (int)ents.size();
  for (int k = 0; k < n && st.active > 0; ++k) {
    const Packed<T>& P = ents[k];
    const Span sp = clip(P.x0, P.x1, P.y0, P.y1, ti.x0, ti.y0, ti.w, ti.h);
    for (int ly = sp.y0; ly <= sp.y1; ++ly)
      for (int lx = sp.x0; lx <= sp.x1; ++lx) {
        const int i = ly * tile + lx;
        if (st.done[i]) continue;
        T dx, dy;
        const T al = pair_alpha<T>(P, ti.x0 + lx, ti.y0 + ly, dx, dy);
        if (al < T(ALPHA_MIN)) continue;
        const double nextT = st.Tr[i] * (1.0 - (double)al);
        if (nextT <= T_MIN) {  // exclusive cut-off, as gsplat: this pair and all behind it skipped
          st.done[i] = 1;
          --st.active;
          continue;
        }
        f(k, P, i, al, st.Tr[i], dx, dy);
        st.Tr[i] = nextT;
        st.last[i] = k;
      }
  }
}

inline int tile_pixels_inactive(const TileInfo& ti, int tile, TileState& st) {
  // pixels of the tile array that lie outside the image never take pairs
  int n = 0;
  for (int ly = 0; ly < tile; ++ly)
    for (int lx = 0; lx < tile; ++lx)
      if (lx >= ti.w || ly >= ti.h) { st.done[ly * tile + lx] = 1; ++n; }
  st.active -= n;
  return n;
}

template <typename T>
std::vector<at::Tensor> raster_forward_impl(const at::Tensor& geo, const at::Tensor& feat, const at::Tensor& box,
                                            const at::Tensor& offsets, const at::Tensor& list, const Grid& G) {
  at::Tensor out = at::zeros({G.C * G.H * G.W, 5}, geo.options());
  // kept for the backward: final transmittance and last composited list index per pixel
  at::Tensor tfin = at::ones({G.C * G.H * G.W}, geo.options().dtype(at::kDouble));
  at::Tensor lastk = at::full({G.C * G.H * G.W}, -1, geo.options().dtype(at::kInt));
  T* o = out.data_ptr<T>();
  double* pt = tfin.data_ptr<double>();
  int32_t* pk = lastk.data_ptr<int32_t>();
  const T* pg = geo.data_ptr<T>();
  const T* pf = feat.data_ptr<T>();
  const int32_t* pb = box.data_ptr<int32_t>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int32_t* pl = list.data_ptr<int32_t>();
  const int tile = (int)G.tile;
  const int nt = at::get_num_threads();
#pragma omp parallel num_threads(nt)
  {
    std::vector<Packed<T>> ents;
    TileState st;
#pragma omp for schedule(dynamic, 4)
    for (int64_t t = 0; t < G.tiles(); ++t) {
      if (off[t] == off[t + 1]) continue;
      const TileInfo ti(G, t);
      gather_tile<T>(off[t], off[t + 1], pl, pg, pf, pb, ents);
      st.reset(tile * tile, 5);
      tile_pixels_inactive(ti, tile, st);
      composite_tile<T>(ents, ti, tile, st, [&](int, const Packed<T>& P, int i, T al, double Tr, T, T) {
        const double w = (double)al * Tr;
        double* a = st.acc.data() + 5 * i;
        for (int k = 0; k < 4; ++k) a[k] += w * (double)P.f[k];
        a[4] += w;
      });
      for (int ly = 0; ly < ti.h; ++ly)
        for (int lx = 0; lx < ti.w; ++lx) {
          T* op = o + 5 * ti.pixel(G, lx, ly);
          const double* a = st.acc.data() + 5 * (ly * tile + lx);
          for (int k = 0; k < 5; ++k) op[k] = (T)a[k];
          pt[ti.pixel(G, lx, ly)] = st.Tr[ly * tile + lx];
          pk[ti.pixel(G, lx, ly)] = st.last[ly * tile + lx];
        }
    }
  }
  return {out, tfin, lastk};
}

// Tangent of the composite along (dgeo, dfeat); with_primal also writes the composite itself
// (one pass for forward-mode AD, which needs both).
template <typename T>
std::vector<at::Tensor> raster_jvp_impl(const at::Tensor& geo, const at::Tensor& feat, const at::Tensor& box,
                                        const at::Tensor& offsets, const at::Tensor& list, const Grid& G,
                                        const at::Tensor& dgeo, const at::Tensor& dfeat, bool with_primal) {
  at::Tensor out = at::zeros({G.C * G.H * G.W, 5}, geo.options());
  at::Tensor prim = with_primal ? at::zeros({G.C * G.H * G.W, 5}, geo.options()) : at::Tensor();
  T* o = out.data_ptr<T>();
  T* op0 = with_primal ? prim.data_ptr<T>() : nullptr;
  const T* pg = geo.data_ptr<T>();
  const T* pf = feat.data_ptr<T>();
  const T* dg = dgeo.data_ptr<T>();
  const T* df = dfeat.data_ptr<T>();
  const int32_t* pb = box.data_ptr<int32_t>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int32_t* pl = list.data_ptr<int32_t>();
  const int tile = (int)G.tile;
  const int nt = at::get_num_threads();
#pragma omp parallel num_threads(nt)
  {
    std::vector<Packed<T>> ents;
    std::vector<double> dlogT;  // d log T per pixel: Σ_{j<i} -dα_j / (1-α_j)
    std::vector<double> pacc;   // the primal composite (with_primal)
    TileState st;
#pragma omp for schedule(dynamic, 4)
    for (int64_t t = 0; t < G.tiles(); ++t) {
      if (off[t] == off[t + 1]) continue;
      const TileInfo ti(G, t);
      gather_tile<T>(off[t], off[t + 1], pl, pg, pf, pb, ents);
      st.reset(tile * tile, 5);
      dlogT.assign(tile * tile, 0.0);
      if (with_primal) pacc.assign(5 * tile * tile, 0.0);
      tile_pixels_inactive(ti, tile, st);
      composite_tile<T>(ents, ti, tile, st, [&](int, const Packed<T>& P, int i, T al, double Tr, T dx, T dy) {
        const T* d = dg + 6 * (int64_t)P.e;
        const T* dfe = df + 4 * (int64_t)P.e;
        // a clamped α has zero derivative (as gsplat)
        const T afree = al < T(ALPHA_MAX) ? al : T(0);
        const T dsig = (P.A * dx + P.B * dy) * d[0] + (P.Cc * dy + P.B * dx) * d[1] +
                       T(0.5) * dx * dx * d[2] + dx * dy * d[3] + T(0.5) * dy * dy * d[4];
        const double dal = (double)(afree * (d[5] / P.o - dsig));
        const double w = (double)al * Tr;
        const double dw = dal * Tr + w * dlogT[i];
        double* a = st.acc.data() + 5 * i;
        for (int k = 0; k < 4; ++k) a[k] += (double)P.f[k] * dw + (double)dfe[k] * w;
        a[4] += dw;
        dlogT[i] -= dal / (1.0 - (double)al);
        if (with_primal) {
          double* pa = pacc.data() + 5 * i;
          for (int k = 0; k < 4; ++k) pa[k] += w * (double)P.f[k];
          pa[4] += w;
        }
      });
      for (int ly = 0; ly < ti.h; ++ly)
        for (int lx = 0; lx < ti.w; ++lx) {
          T* op = o + 5 * ti.pixel(G, lx, ly);
          const double* a = st.acc.data() + 5 * (ly * tile + lx);
          for (int k = 0; k < 5; ++k) op[k] = (T)a[k];
          if (with_primal) {
            T* pp = op0 + 5 * ti.pixel(G, lx, ly);
            const double* pa = pacc.data() + 5 * (ly * tile + lx);
            for (int k = 0; k < 5; ++k) pp[k] = (T)pa[k];
          }
        }
    }
  }
  if (with_primal) return {prim, out};
  return {out};
}

// Reusable per-thread accumulator buffers for the backward pass (one caller at a time; a
// concurrent caller falls back to private buffers).
class AccPool {
 public:
  class Lease {
   public:
    Lease(int nt, size_t n) : owned_(pool_mutex().try_lock()) {
      bufs_ = owned_ ? &shared() : &private_;
      if ((int)bufs_->size() < nt) bufs_->resize(nt);
      for (int t = 0; t < nt; ++t) (*bufs_)[t].resize(n);
    }
    ~Lease() { if (owned_) pool_mutex().unlock(); }
    std::vector<std::vector<double>>& bufs() { return *bufs_; }
   private:
    bool owned_;
    std::vector<std::vector<double>> private_;
    std::vector<std::vector<double>>* bufs_;
  };
 private:
  static std::mutex& pool_mutex() { static std::mutex m; return m; }
  static std::vector<std::vector<double>>& shared() { static std::vector<std::vector<double>> b; return b; }
};

template <typename T>
std::vector<at::Tensor> raster_backward_impl(const at::Tensor& geo, const at::Tensor& feat,
                                             const at::Tensor& box, const at::Tensor& offsets,
                                             const at::Tensor& list, const Grid& G, const at::Tensor& tfin,
                                             const at::Tensor& lastk, const at::Tensor& grad) {
  const int64_t E = geo.size(0);
  const double* pt = tfin.data_ptr<double>();
  const int32_t* pk = lastk.data_ptr<int32_t>();
  const T* pg = geo.data_ptr<T>();
  const T* pf = feat.data_ptr<T>();
  const T* gu = grad.data_ptr<T>();
  const int32_t* pb = box.data_ptr<int32_t>();
  const int64_t* off = offsets.data_ptr<int64_t>();
  const int32_t* pl = list.data_ptr<int32_t>();
  const int tile = (int)G.tile;
  const int nt = std::max(1, at::get_num_threads());
  // per-thread accumulators (10 per entry: geo 6, feat 4), summed in thread order at the end.
  // They are kept between calls: allocating tens of MB afresh each time costs more in page
  // faults than the zeroing (another thread's concurrent call gets its own).
  AccPool::Lease lease(nt, (size_t)(10 * E));
  std::vector<std::vector<double>>& acc = lease.bufs();
#pragma omp parallel num_threads(nt)
  {
    const int tid = omp_get_thread_num();
    std::vector<double>& A = acc[tid];
    std::fill(A.begin(), A.end(), 0.0);
    std::vector<Packed<T>> ents;
    std::vector<double> loc, S;  // per-tile entry gradients; per-pixel Σ_{j>i} w_j s_j
    TileState st;
#pragma omp for schedule(static, 1)
    for (int64_t t = 0; t < G.tiles(); ++t) {
      if (off[t] == off[t + 1]) continue;
      const TileInfo ti(G, t);
      gather_tile<T>(off[t], off[t + 1], pl, pg, pf, pb, ents);
      // final transmittance and last composited entry of each pixel, from the forward pass
      st.Tr.assign(tile * tile, 1.0);
      st.last.assign(tile * tile, -1);
      for (int ly = 0; ly < ti.h; ++ly)
        for (int lx = 0; lx < ti.w; ++lx) {
          st.Tr[ly * tile + lx] = pt[ti.pixel(G, lx, ly)];
          st.last[ly * tile + lx] = pk[ti.pixel(G, lx, ly)];
        }
      // backward pass, back to front: T_i = T_{i+1} / (1-α_i),
      // dα_i = T_i s_i - Σ_{j>i} w_j s_j / (1-α_i),  s = ∂L/∂w
      loc.assign(10 * ents.size(), 0.0);
      S.assign(tile * tile, 0.0);
      int lastmax = -1;
      for (int i = 0; i < tile * tile; ++i) lastmax = std::max(lastmax, st.last[i]);
      for (int k = lastmax; k >= 0; --k) {
        const Packed<T>& P = ents[k];
        const Span sp = clip(P.x0, P.x1, P.y0, P.y1, ti.x0, ti.y0, ti.w, ti.h);
        double* L = loc.data() + 10 * k;
        for (int ly = sp.y0; ly <= sp.y1; ++ly)
          for (int lx = sp.x0; lx <= sp.x1; ++lx) {
            const int i = ly * tile + lx;
            if (st.last[i] < k) continue;  // behind this pixel's last composited pair
            T dx, dy;
            const T al = pair_alpha<T>(P, ti.x0 + lx, ti.y0 + ly, dx, dy);
            if (al < T(ALPHA_MIN)) continue;
            const T* u = gu + 5 * ti.pixel(G, lx, ly);
            const double inv1m = 1.0 / (1.0 - (double)al);
            const double Ti = st.Tr[i] * inv1m;
            st.Tr[i] = Ti;
            const double s = (double)u[0] * P.f[0] + (double)u[1] * P.f[1] + (double)u[2] * P.f[2] +
                             (double)u[3] * P.f[3] + (double)u[4];
            const double w = (double)al * Ti;
            const double dal = Ti * s - S[i] * inv1m;
            S[i] += w * s;
            const double afree = al < T(ALPHA_MAX) ? (double)al : 0.0;
            const double dsig = -afree * dal;
            const double ddx = dx, ddy = dy;
            L[0] += (P.A * ddx + P.B * ddy) * dsig;
            L[1] += (P.Cc * ddy + P.B * ddx) * dsig;
            L[2] += 0.5 * ddx * ddx * dsig;
            L[3] += ddx * ddy * dsig;
            L[4] += 0.5 * ddy * ddy * dsig;
            L[5] += afree / (double)P.o * dal;
            for (int c = 0; c < 4; ++c) L[6 + c] += (double)u[c] * w;
          }
      }
      for (size_t k = 0; k < ents.size(); ++k) {
        double* dst = A.data() + 10 * (int64_t)ents[k].e;
        const double* srcp = loc.data() + 10 * k;
        for (int j = 0; j < 10; ++j) dst[j] += srcp[j];
      }
    }
  }
  at::Tensor ggeo = at::empty({E, 6}, geo.options()), gfeat = at::empty({E, 4}, geo.options());
  T* g6 = ggeo.data_ptr<T>();
  T* g4 = gfeat.data_ptr<T>();
#pragma omp parallel for schedule(static) num_threads(nt)
  for (int64_t e = 0; e < E; ++e) {
    double s[10] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0};
    for (int t = 0; t < nt; ++t)
      for (int j = 0; j < 10; ++j) s[j] += acc[t][10 * e + j];
    for (int j = 0; j < 6; ++j) g6[6 * e + j] = (T)s[j];
    for (int j = 0; j < 4; ++j) g4[4 * e + j] = (T)s[6 + j];
  }
  return {ggeo, gfeat};
}

// ---- dispatch --------------------------------------------------------------------------

void check_cpu(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu(), name, " must be a CPU tensor");
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

// The Gaussians' five parameter tensors and their tangents, each checked: what the jvp ops take.
std::pair<std::vector<at::Tensor>, std::vector<at::Tensor>> checked_primal_tangent(
    const at::Tensor& means, const at::Tensor& log_scales, const at::Tensor& quats, const at::Tensor& opacity_logits,
    const at::Tensor& sh, const at::Tensor& t_means, const at::Tensor& t_log_scales, const at::Tensor& t_quats,
    const at::Tensor& t_opacity_logits, const at::Tensor& t_sh) {
  std::vector<at::Tensor> P = {means, log_scales, quats, opacity_logits, sh};
  std::vector<at::Tensor> D = {t_means, t_log_scales, t_quats, t_opacity_logits, t_sh};
  for (auto& t : P) check_cpu(t, "input");
  for (auto& t : D) check_cpu(t, "tangent");
  return {P, D};
}

std::vector<at::Tensor> project_forward(const at::Tensor& means, const at::Tensor& log_scales,
                                        const at::Tensor& quats, const at::Tensor& opacity_logits,
                                        const at::Tensor& sh, const at::Tensor& K, const at::Tensor& w2c,
                                        const at::Tensor& campos, int64_t W, int64_t H) {
  for (auto* t : {&means, &log_scales, &quats, &opacity_logits, &sh, &K, &w2c, &campos}) check_cpu(*t, "input");
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_forward", [&] {
    out = project_forward_impl<scalar_t, false>({means, log_scales, quats, opacity_logits, sh}, {}, K, w2c, campos, W, H);
  });
  return out;
}

std::vector<at::Tensor> project_backward(const at::Tensor& means, const at::Tensor& log_scales,
                                         const at::Tensor& quats, const at::Tensor& opacity_logits,
                                         const at::Tensor& sh, const at::Tensor& K, const at::Tensor& w2c,
                                         const at::Tensor& campos, int64_t W, int64_t H, const at::Tensor& cam,
                                         const at::Tensor& gid, const at::Tensor& g_geo, const at::Tensor& g_feat) {
  std::vector<at::Tensor> P = {means, log_scales, quats, opacity_logits, sh};
  for (auto& t : P) check_cpu(t, "input");
  check_cpu(g_geo, "g_geo"); check_cpu(g_feat, "g_feat");
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_backward", [&] {
    out = project_backward_impl<scalar_t>(P, K, w2c, campos, W, H, cam, gid, g_geo, g_feat);
  });
  return out;
}

std::vector<at::Tensor> project_forward_jvp(const at::Tensor& means, const at::Tensor& log_scales,
                                            const at::Tensor& quats, const at::Tensor& opacity_logits,
                                            const at::Tensor& sh, const at::Tensor& K, const at::Tensor& w2c,
                                            const at::Tensor& campos, int64_t W, int64_t H,
                                            const at::Tensor& t_means, const at::Tensor& t_log_scales,
                                            const at::Tensor& t_quats, const at::Tensor& t_opacity_logits,
                                            const at::Tensor& t_sh) {
  std::vector<at::Tensor> P, D;  // not a structured binding: lambdas capture those only from C++20
  std::tie(P, D) = checked_primal_tangent(means, log_scales, quats, opacity_logits, sh, t_means, t_log_scales, t_quats,
                                          t_opacity_logits, t_sh);
  for (auto* t : {&K, &w2c, &campos}) check_cpu(*t, "camera");
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_forward_jvp", [&] {
    out = project_forward_impl<scalar_t, true>(P, D, K, w2c, campos, W, H);
  });
  return out;
}

std::vector<at::Tensor> project_jvp(const at::Tensor& means, const at::Tensor& log_scales,
                                    const at::Tensor& quats, const at::Tensor& opacity_logits,
                                    const at::Tensor& sh, const at::Tensor& K, const at::Tensor& w2c,
                                    const at::Tensor& campos, int64_t W, int64_t H, const at::Tensor& cam,
                                    const at::Tensor& gid, const at::Tensor& t_means, const at::Tensor& t_log_scales,
                                    const at::Tensor& t_quats, const at::Tensor& t_opacity_logits,
                                    const at::Tensor& t_sh) {
  std::vector<at::Tensor> P, D;  // not a structured binding: lambdas capture those only from C++20
  std::tie(P, D) = checked_primal_tangent(means, log_scales, quats, opacity_logits, sh, t_means, t_log_scales, t_quats,
                                          t_opacity_logits, t_sh);
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(means.scalar_type(), "project_jvp", [&] {
    out = project_jvp_impl<scalar_t>(P, D, K, w2c, campos, W, H, cam, gid);
  });
  return out;
}

std::vector<at::Tensor> raster_forward(const at::Tensor& geo, const at::Tensor& feat, const at::Tensor& box,
                                       const at::Tensor& offsets, const at::Tensor& list, int64_t C, int64_t W,
                                       int64_t H, int64_t tile) {
  check_cpu(geo, "geo"); check_cpu(feat, "feat");
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(geo.scalar_type(), "raster_forward", [&] {
    out = raster_forward_impl<scalar_t>(geo, feat, box, offsets, list, Grid(C, W, H, tile));
  });
  return out;
}

at::Tensor raster_jvp(const at::Tensor& geo, const at::Tensor& feat, const at::Tensor& box,
                      const at::Tensor& offsets, const at::Tensor& list, int64_t C, int64_t W, int64_t H,
                      int64_t tile, const at::Tensor& dgeo, const at::Tensor& dfeat) {
  check_cpu(dgeo, "dgeo"); check_cpu(dfeat, "dfeat");
  at::Tensor out;
  AT_DISPATCH_FLOATING_TYPES(geo.scalar_type(), "raster_jvp", [&] {
    out = raster_jvp_impl<scalar_t>(geo, feat, box, offsets, list, Grid(C, W, H, tile), dgeo, dfeat, false)[0];
  });
  return out;
}

std::vector<at::Tensor> raster_forward_jvp(const at::Tensor& geo, const at::Tensor& feat, const at::Tensor& box,
                                           const at::Tensor& offsets, const at::Tensor& list, int64_t C, int64_t W,
                                           int64_t H, int64_t tile, const at::Tensor& dgeo, const at::Tensor& dfeat) {
  check_cpu(geo, "geo"); check_cpu(feat, "feat"); check_cpu(dgeo, "dgeo"); check_cpu(dfeat, "dfeat");
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(geo.scalar_type(), "raster_forward_jvp", [&] {
    out = raster_jvp_impl<scalar_t>(geo, feat, box, offsets, list, Grid(C, W, H, tile), dgeo, dfeat, true);
  });
  return out;
}

std::vector<at::Tensor> raster_backward(const at::Tensor& geo, const at::Tensor& feat, const at::Tensor& box,
                                        const at::Tensor& offsets, const at::Tensor& list, int64_t C, int64_t W,
                                        int64_t H, int64_t tile, const at::Tensor& tfin, const at::Tensor& lastk,
                                        const at::Tensor& grad) {
  check_cpu(grad, "grad");
  std::vector<at::Tensor> out;
  AT_DISPATCH_FLOATING_TYPES(geo.scalar_type(), "raster_backward", [&] {
    out = raster_backward_impl<scalar_t>(geo, feat, box, offsets, list, Grid(C, W, H, tile), tfin, lastk, grad);
  });
  return out;
}

// ---- fused Adam update (the TTO inner loop) ----------------------------------------------
// One pass over (x, m, v, grad, lr) instead of about ten tensor operations and two
// finiteness scans, which on a CPU cost a tenth of a refine step at 256². Same formula and
// operation order as tto.adam_run's torch path:
//   m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g²;  x -= (m lr) / sqrt(v / bc2 + eps²) / bc1
// Returns the number of non-finite entries among the gradient and the updated x.
template <typename T>
int64_t adam_step_impl(at::Tensor& x, at::Tensor& m, at::Tensor& v, const at::Tensor& g, const at::Tensor& lr,
                       double b1d, double b2d, double bc1d, double bc2d, double eps2d) {
  T* px = x.data_ptr<T>();
  T* pm = m.data_ptr<T>();
  T* pv = v.data_ptr<T>();
  const T* pg = g.data_ptr<T>();
  const T* pl = lr.data_ptr<T>();
  const T b1 = T(b1d), b2 = T(b2d), c1 = T(1 - b1d), c2 = T(1 - b2d), bc2 = T(bc2d), eps2 = T(eps2d);
  const T inv_bc1 = T(1.0 / bc1d);
  const int64_t n = x.numel();
  int64_t bad = 0;
  const int nt = at::get_num_threads();
#pragma omp parallel for schedule(static) reduction(+ : bad) num_threads(nt)
  for (int64_t i = 0; i < n; ++i) {
    const T gi = pg[i];
    const T mi = pm[i] * b1 + c1 * gi;
    const T vn = pv[i] * b2 + c2 * (gi * gi);
    pm[i] = mi;
    pv[i] = vn;
    const T xn = px[i] - ((mi * pl[i]) / std::sqrt(vn / bc2 + eps2)) * inv_bc1;
    px[i] = xn;
    bad += (!std::isfinite(gi) || !std::isfinite(xn)) ? 1 : 0;
  }
  return bad;
}

int64_t adam_step(at::Tensor x, at::Tensor m, at::Tensor v, const at::Tensor& g, const at::Tensor& lr, double b1,
                  double b2, double bc1, double bc2, double eps2) {
  for (const at::Tensor* t : {(const at::Tensor*)&x, (const at::Tensor*)&m, (const at::Tensor*)&v, &g, &lr}) {
    check_cpu(*t, "adam_step tensor");
    TORCH_CHECK(t->numel() == x.numel() && t->scalar_type() == x.scalar_type(), "adam_step: shape/dtype mismatch");
  }
  int64_t bad = 0;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "adam_step", [&] {
    bad = adam_step_impl<scalar_t>(x, m, v, g, lr, b1, b2, bc1, bc2, eps2);
  });
  return bad;
}

}  // namespace

// CPU dispatch key only: functorch/forward-AD wrappers are unwrapped by the dispatcher
// before these kernels see raw data pointers.
TORCH_LIBRARY(diff3r_cpu, m) {
  m.def("project_forward", torch::dispatch(c10::DispatchKey::CPU, &project_forward));
  m.def("project_backward", torch::dispatch(c10::DispatchKey::CPU, &project_backward));
  m.def("project_jvp", torch::dispatch(c10::DispatchKey::CPU, &project_jvp));
  m.def("project_forward_jvp", torch::dispatch(c10::DispatchKey::CPU, &project_forward_jvp));
  m.def("bin_tiles", torch::dispatch(c10::DispatchKey::CPU, &bin_tiles));
  m.def("raster_forward", torch::dispatch(c10::DispatchKey::CPU, &raster_forward));
  m.def("raster_jvp", torch::dispatch(c10::DispatchKey::CPU, &raster_jvp));
  m.def("raster_forward_jvp", torch::dispatch(c10::DispatchKey::CPU, &raster_forward_jvp));
  m.def("raster_backward", torch::dispatch(c10::DispatchKey::CPU, &raster_backward));
  m.def("adam_step", torch::dispatch(c10::DispatchKey::CPU, &adam_step));
}
