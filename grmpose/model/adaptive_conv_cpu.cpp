// Fused CPU kernel of the grouped adaptive convolution (grmpose/model/adaptive_conv.py).
//
// One pass per (image, group) computes, for every pixel p, the 9 bilinear samples of the c input
// channels at q_k = p + A(p) r_k + t(p) (zero outside the map) and multiplies them by the group's
// c x 9c weight at once, so the 9c samples of a pixel live in a small local buffer instead of a
// B x G*c*9 x H x W tensor (what grid_sample + a batched matmul write and read back).
// The backward pass recomputes the samples and returns the gradients of the input, of the six
// transform maps (a11, a12, a21, a22, tx, ty) and of the weight. adaptive_conv_kernel.py compiles this
// file on first use; tests/test_adaptive_conv_kernel.py checks it against the grid_sample path, a naive
// loop, torch's grouped conv2d and finite differences.
//
// Layouts (the Python side prepares them):
//   x      B x G x H x W x c   input, channels last inside each group
//   tr     B x G x 6 x H x W   transform maps, in pixels
//   weight G x c x 9c          output channel o, then (tap k, input channel i) at k * c + i
//   out    B x G x c x H x W
// Bilinear convention (grid_sample's, align_corners=False, in pixel units): x0 = floor(qx),
// fx = qx - x0; the corners (x0, y0), (x0+1, y0), (x0, y0+1), (x0+1, y0+1) weigh
// (1-fx)(1-fy), fx(1-fy), (1-fx)fy, fx fy; a corner outside the map reads 0.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>
#include <vector>

namespace {

constexpr int kTaps = 9;

template <typename T>
struct Corners {
  // for each tap: the 4 corners' offsets into the group's map (-1: outside) and bilinear weights,
  // and the fractional parts (for the position gradients)
  int64_t idx[kTaps][4];
  T w[kTaps][4];
  T fx[kTaps], fy[kTaps];
};

template <typename T>
inline void corners_at(const T* tr, int64_t p, int64_t h, int64_t w, Corners<T>& c) {
  const int64_t hw = h * w, px = p % w, py = p / w;
  const T a11 = tr[0 * hw + p], a12 = tr[1 * hw + p], a21 = tr[2 * hw + p], a22 = tr[3 * hw + p];
  const T tx = tr[4 * hw + p], ty = tr[5 * hw + p];
  for (int k = 0; k < kTaps; ++k) {
    const T rx = static_cast<T>(k % 3 - 1), ry = static_cast<T>(k / 3 - 1);
    const T qx = static_cast<T>(px) + a11 * rx + a12 * ry + tx;
    const T qy = static_cast<T>(py) + a21 * rx + a22 * ry + ty;
    const T fx0 = std::floor(qx), fy0 = std::floor(qy);
    const T fx = qx - fx0, fy = qy - fy0;
    c.fx[k] = fx;
    c.fy[k] = fy;
    // a position far outside the map: all corners outside (avoid overflowing the integer cast)
    const bool far = !(fx0 > -2 && fx0 < static_cast<T>(w) + 1 && fy0 > -2 && fy0 < static_cast<T>(h) + 1);
    const int64_t x0 = far ? -2 : static_cast<int64_t>(fx0), y0 = far ? -2 : static_cast<int64_t>(fy0);
    const int64_t xs[4] = {x0, x0 + 1, x0, x0 + 1};
    const int64_t ys[4] = {y0, y0, y0 + 1, y0 + 1};
    const T ws[4] = {(1 - fx) * (1 - fy), fx * (1 - fy), (1 - fx) * fy, fx * fy};
    for (int j = 0; j < 4; ++j) {
      const bool inside = xs[j] >= 0 && xs[j] < w && ys[j] >= 0 && ys[j] < h;
      c.idx[k][j] = inside ? ys[j] * w + xs[j] : -1;
      c.w[k][j] = ws[j];
    }
  }
}

// s[k * ch + i] = bilinear sample of channel i at tap k
template <typename T, int CH>
inline void gather(const T* xg, int64_t ch_runtime, const Corners<T>& c, T* s) {
  const int64_t ch = CH > 0 ? CH : ch_runtime;
  for (int k = 0; k < kTaps; ++k) {
    T* sk = s + k * ch;
    for (int64_t i = 0; i < ch; ++i) sk[i] = 0;
    for (int j = 0; j < 4; ++j) {
      if (c.idx[k][j] < 0) continue;
      const T* src = xg + c.idx[k][j] * ch;
      const T wt = c.w[k][j];
#pragma omp simd
      for (int64_t i = 0; i < ch; ++i) sk[i] += wt * src[i];
    }
  }
}

// CH > 0: the channel count as a compile-time constant (the presets' 8 and 15), so that the
// compiler unrolls and vectorises the channel loops; CH = 0: any count, read at run time.
template <typename T, int CH>
void forward_impl(const at::Tensor& x, const at::Tensor& tr, const at::Tensor& weight, at::Tensor& out) {
  const int64_t b = x.size(0), g = x.size(1), h = x.size(2), w = x.size(3), ch = CH > 0 ? CH : x.size(4);
  const int64_t hw = h * w, kc = kTaps * ch;
  const T* xp = x.data_ptr<T>();
  const T* tp = tr.data_ptr<T>();
  const T* wp = weight.data_ptr<T>();
  T* op = out.data_ptr<T>();
  at::parallel_for(0, b * g, 1, [&](int64_t begin, int64_t end) {
    // the transposed weight's rows are padded to a multiple of 8 output channels (zeros), so that
    // the compile-time-channel loops run over whole vectors: 15 -> 16
    constexpr int CHP = CH > 0 ? (CH + 7) / 8 * 8 : 0;
    const int64_t row = CH > 0 ? CHP : ch;
    std::vector<T> s(kc), acc(ch), wt_buf(kc * row, T(0));
    T* wt = wt_buf.data();
    Corners<T> c;
    int64_t loaded = -1;
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t gi = bg % g;
      const T* xg = xp + bg * hw * ch;
      const T* tg = tp + bg * 6 * hw;
      if (gi != loaded) {  // the group's weight, transposed to j-major
        const T* wg = wp + gi * ch * kc;
        for (int64_t o = 0; o < ch; ++o)
          for (int64_t j = 0; j < kc; ++j) wt[j * row + o] = wg[o * kc + j];
        loaded = gi;
      }
      T* og = op + bg * ch * hw;
      for (int64_t p = 0; p < hw; ++p) {
        corners_at(tg, p, h, w, c);
        gather<T, CH>(xg, ch, c, s.data());
        // acc[o] = sum_j weight[o, j] s[j], with the weight stored j-major (wt) so that the inner
        // loop runs over contiguous output channels
        if constexpr (CH > 0) {
          // four partial sums over the taps' samples: four independent chains of multiply-adds
          // instead of one that waits on the previous addition at every step
          T part[4][CHP] = {};
          for (int64_t j = 0; j < kTaps * CH; j += 4) {
            for (int u = 0; u < 4 && j + u < kTaps * CH; ++u) {
              const T sj = s[j + u];
              const T* wj = wt + (j + u) * CHP;
#pragma omp simd
              for (int o = 0; o < CHP; ++o) part[u][o] += wj[o] * sj;
            }
          }
          for (int o = 0; o < CH; ++o) og[o * hw + p] = (part[0][o] + part[1][o]) + (part[2][o] + part[3][o]);
        } else {
          for (int64_t o = 0; o < ch; ++o) acc[o] = 0;
          for (int64_t j = 0; j < kc; ++j) {
            const T sj = s[j];
            const T* wj = wt + j * ch;
#pragma omp simd
            for (int64_t o = 0; o < ch; ++o) acc[o] += wj[o] * sj;
          }
          for (int64_t o = 0; o < ch; ++o) og[o * hw + p] = acc[o];
        }
      }
    }
  });
}

template <typename T, int CH>
void backward_impl(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& tr, const at::Tensor& weight,
                   at::Tensor& grad_x, at::Tensor& grad_tr, at::Tensor& grad_w) {
  const int64_t b = x.size(0), g = x.size(1), h = x.size(2), w = x.size(3), ch = CH > 0 ? CH : x.size(4);
  const int64_t hw = h * w, kc = kTaps * ch;
  const T* gop = grad_out.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  const T* tp = tr.data_ptr<T>();
  const T* wp = weight.data_ptr<T>();
  T* gxp = grad_x.data_ptr<T>();
  T* gtp = grad_tr.data_ptr<T>();
  T* gwp = grad_w.data_ptr<T>();  // B x G x c x 9c: one slice per (image, group), summed over B by the caller
  at::parallel_for(0, b * g, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> s(kc), gs(kc), go(ch);
    Corners<T> c;
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t gi = bg % g;
      const T* xg = xp + bg * hw * ch;
      const T* tg = tp + bg * 6 * hw;
      const T* wg = wp + gi * ch * kc;
      const T* gog = gop + bg * ch * hw;
      T* gxg = gxp + bg * hw * ch;  // this task's own slice: the scatter needs no lock
      T* gtg = gtp + bg * 6 * hw;
      T* gwg = gwp + bg * ch * kc;
      for (int64_t p = 0; p < hw; ++p) {
        corners_at(tg, p, h, w, c);
        gather<T, CH>(xg, ch, c, s.data());
        for (int64_t o = 0; o < ch; ++o) go[o] = gog[o * hw + p];
        // weight gradient and the samples' gradient
        for (int64_t j = 0; j < kc; ++j) gs[j] = 0;
        for (int64_t o = 0; o < ch; ++o) {
          const T gv = go[o];
          const T* wo = wg + o * kc;
          T* gwo = gwg + o * kc;
#pragma omp simd
          for (int64_t j = 0; j < kc; ++j) {
            gwo[j] += gv * s[j];
            gs[j] += gv * wo[j];
          }
        }
        T ga11 = 0, ga12 = 0, ga21 = 0, ga22 = 0, gtx = 0, gty = 0;
        for (int k = 0; k < kTaps; ++k) {
          const T* gsk = gs.data() + k * ch;
          const T fx = c.fx[k], fy = c.fy[k];
          // d(weight)/d(qx) and d(weight)/d(qy) of the 4 corners
          const T dwx[4] = {-(1 - fy), 1 - fy, -fy, fy};
          const T dwy[4] = {-(1 - fx), -fx, 1 - fx, fx};
          T gqx = 0, gqy = 0;
          for (int j = 0; j < 4; ++j) {
            if (c.idx[k][j] < 0) continue;
            const T* src = xg + c.idx[k][j] * ch;
            T* dst = gxg + c.idx[k][j] * ch;
            const T wt = c.w[k][j];
            T dot = 0;
#pragma omp simd reduction(+ : dot)
            for (int64_t i = 0; i < ch; ++i) {
              dst[i] += wt * gsk[i];
              dot += gsk[i] * src[i];
            }
            gqx += dwx[j] * dot;
            gqy += dwy[j] * dot;
          }
          const T rx = static_cast<T>(k % 3 - 1), ry = static_cast<T>(k / 3 - 1);
          ga11 += gqx * rx;
          ga12 += gqx * ry;
          ga21 += gqy * rx;
          ga22 += gqy * ry;
          gtx += gqx;
          gty += gqy;
        }
        gtg[0 * hw + p] = ga11;
        gtg[1 * hw + p] = ga12;
        gtg[2 * hw + p] = ga21;
        gtg[3 * hw + p] = ga22;
        gtg[4 * hw + p] = gtx;
        gtg[5 * hw + p] = gty;
      }
    }
  });
}

// Calls f(std::integral_constant<int, CH>) with CH = the channel count when it is one the presets use
// (8: tiny, 15: DEKR's and grmpose's), so that those get loops of a fixed length; CH = 0 otherwise.
template <typename F>
void with_channels(int64_t ch, F&& f) {
  switch (ch) {
    case 8: f(std::integral_constant<int, 8>{}); break;
    case 15: f(std::integral_constant<int, 15>{}); break;
    default: f(std::integral_constant<int, 0>{});
  }
}

void check_inputs(const at::Tensor& x, const at::Tensor& tr, const at::Tensor& weight) {
  TORCH_CHECK(x.dim() == 5 && tr.dim() == 5 && weight.dim() == 3, "adaptive_conv: x B,G,H,W,c; tr B,G,6,H,W; weight G,c,9c");
  TORCH_CHECK(x.device().is_cpu(), "adaptive_conv: CPU tensors only");
  TORCH_CHECK(x.is_contiguous() && tr.is_contiguous() && weight.is_contiguous(), "adaptive_conv: contiguous tensors only");
  TORCH_CHECK(tr.size(0) == x.size(0) && tr.size(1) == x.size(1) && tr.size(2) == 6 && tr.size(3) == x.size(2) &&
                  tr.size(4) == x.size(3),
              "adaptive_conv: transform shape does not match the input");
  TORCH_CHECK(weight.size(0) == x.size(1) && weight.size(1) == x.size(4) && weight.size(2) == kTaps * x.size(4),
              "adaptive_conv: weight shape does not match the input");
  TORCH_CHECK(tr.scalar_type() == x.scalar_type() && weight.scalar_type() == x.scalar_type(),
              "adaptive_conv: one dtype for all inputs");
}

at::Tensor adaptive_conv_forward(const at::Tensor& x, const at::Tensor& tr, const at::Tensor& weight) {
  check_inputs(x, tr, weight);
  auto out = at::empty({x.size(0), x.size(1), x.size(4), x.size(2), x.size(3)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "adaptive_conv_forward", [&] {
    with_channels(x.size(4), [&](auto ch) { forward_impl<scalar_t, decltype(ch)::value>(x, tr, weight, out); });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adaptive_conv_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                                      const at::Tensor& tr, const at::Tensor& weight) {
  check_inputs(x, tr, weight);
  auto go = grad_out.contiguous();
  auto grad_x = at::zeros_like(x);
  auto grad_tr = at::empty_like(tr);
  auto grad_w = at::zeros({x.size(0), weight.size(0), weight.size(1), weight.size(2)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "adaptive_conv_backward", [&] {
    with_channels(x.size(4), [&](auto ch) {
      backward_impl<scalar_t, decltype(ch)::value>(go, x, tr, weight, grad_x, grad_tr, grad_w);
    });
  });
  return {grad_x, grad_tr, grad_w.sum(0)};
}

// ---------------------------------------------------------------------------------------------
// The A/t predictor: a grouped 3x3 convolution (padding 1) from each group's c channels to its 6
// transform maps, on the same channels-last layout (oneDNN's grouped convolution with 8 channels
// per group spent ~60 ms of a 470 ms tiny training step on it, mostly in its backward).
//   tw  G x 6 x 9c   output o, then (tap k, input channel i) at k * c + i; tap k reads p + (kx-1, ky-1)
//   tb  G x 6
// Output: B x G x 6 x H x W.

constexpr int kOut = 6;

// offset in the map of tap k's pixel (px + kx - 1, py + ky - 1) of pixel p; -1 outside the map
inline int64_t neighbour_at(int64_t p, int k, int64_t h, int64_t w) {
  const int64_t qx = p % w + k % 3 - 1, qy = p / w + k / 3 - 1;
  return qx < 0 || qx >= w || qy < 0 || qy >= h ? -1 : qy * w + qx;
}

// n[k * ch + i] = x at tap k's pixel, channel i; 0 outside the map
template <typename T, int CH>
inline void neighbours(const T* xg, int64_t ch_runtime, int64_t p, int64_t h, int64_t w, T* n) {
  const int64_t ch = CH > 0 ? CH : ch_runtime;
  for (int k = 0; k < kTaps; ++k) {
    const int64_t q = neighbour_at(p, k, h, w);
    T* nk = n + k * ch;
    for (int64_t i = 0; i < ch; ++i) nk[i] = q < 0 ? T(0) : xg[q * ch + i];
  }
}

template <typename T, int CH>
void transform_forward_impl(const at::Tensor& x, const at::Tensor& tw, const at::Tensor& tb, at::Tensor& out) {
  const int64_t b = x.size(0), g = x.size(1), h = x.size(2), w = x.size(3), ch = CH > 0 ? CH : x.size(4);
  const int64_t hw = h * w, kc = kTaps * ch;
  const T* xp = x.data_ptr<T>();
  const T* twp = tw.data_ptr<T>();
  const T* tbp = tb.data_ptr<T>();
  T* op = out.data_ptr<T>();
  constexpr int kOutPad = 8;  // the 6 outputs padded to 8 (zeros): one vector per partial sum
  at::parallel_for(0, b * g, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> n(kc), wt(kc * kOutPad, T(0));
    int64_t loaded = -1;
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t gi = bg % g;
      const T* xg = xp + bg * hw * ch;
      if (gi != loaded) {  // the group's weight, transposed to j-major
        const T* wg = twp + gi * kOut * kc;
        for (int o = 0; o < kOut; ++o)
          for (int64_t j = 0; j < kc; ++j) wt[j * kOutPad + o] = wg[o * kc + j];
        loaded = gi;
      }
      T* og = op + bg * kOut * hw;
      for (int64_t p = 0; p < hw; ++p) {
        neighbours<T, CH>(xg, ch, p, h, w, n.data());
        // out[o] = sum_j weight[o, j] n[j] as four partial sums over j (independent chains)
        T part[4][kOutPad] = {};
        int64_t j = 0;
        for (; j + 4 <= kc; j += 4)
          for (int u = 0; u < 4; ++u) {
            const T nj = n[j + u];
            const T* wj = wt.data() + (j + u) * kOutPad;
#pragma omp simd
            for (int o = 0; o < kOutPad; ++o) part[u][o] += wj[o] * nj;
          }
        for (; j < kc; ++j) {
          const T nj = n[j];
          const T* wj = wt.data() + j * kOutPad;
#pragma omp simd
          for (int o = 0; o < kOutPad; ++o) part[0][o] += wj[o] * nj;
        }
        for (int o = 0; o < kOut; ++o)
          og[o * hw + p] = (part[0][o] + part[1][o]) + (part[2][o] + part[3][o]) + tbp[gi * kOut + o];
      }
    }
  });
}

template <typename T, int CH>
void transform_backward_impl(const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& tw, at::Tensor& grad_x,
                             at::Tensor& grad_w, at::Tensor& grad_b) {
  const int64_t b = x.size(0), g = x.size(1), h = x.size(2), w = x.size(3), ch = CH > 0 ? CH : x.size(4);
  const int64_t hw = h * w, kc = kTaps * ch;
  const T* gop = grad_out.data_ptr<T>();
  const T* xp = x.data_ptr<T>();
  const T* twp = tw.data_ptr<T>();
  T* gxp = grad_x.data_ptr<T>();
  T* gwp = grad_w.data_ptr<T>();  // B x G x 6 x 9c and B x G x 6: summed over B by the caller
  T* gbp = grad_b.data_ptr<T>();
  at::parallel_for(0, b * g, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> n(kc), gn(kc);
    for (int64_t bg = begin; bg < end; ++bg) {
      const int64_t gi = bg % g;
      const T* xg = xp + bg * hw * ch;
      const T* wg = twp + gi * kOut * kc;
      const T* gog = gop + bg * kOut * hw;
      T* gxg = gxp + bg * hw * ch;
      T* gwg = gwp + bg * kOut * kc;
      T* gbg = gbp + bg * kOut;
      for (int64_t p = 0; p < hw; ++p) {
        neighbours<T, CH>(xg, ch, p, h, w, n.data());
        for (int64_t j = 0; j < kc; ++j) gn[j] = 0;
        for (int o = 0; o < kOut; ++o) {
          const T gv = gog[o * hw + p];
          const T* wo = wg + o * kc;
          T* gwo = gwg + o * kc;
          gbg[o] += gv;
#pragma omp simd
          for (int64_t j = 0; j < kc; ++j) {
            gwo[j] += gv * n[j];
            gn[j] += gv * wo[j];
          }
        }
        for (int k = 0; k < kTaps; ++k) {
          const int64_t q = neighbour_at(p, k, h, w);
          if (q < 0) continue;
          T* dst = gxg + q * ch;
          const T* gnk = gn.data() + k * ch;
#pragma omp simd
          for (int64_t i = 0; i < ch; ++i) dst[i] += gnk[i];
        }
      }
    }
  });
}

void check_transform_inputs(const at::Tensor& x, const at::Tensor& tw, const at::Tensor& tb) {
  TORCH_CHECK(x.dim() == 5 && tw.dim() == 3 && tb.dim() == 2, "adaptive_transform: x B,G,H,W,c; tw G,6,9c; tb G,6");
  TORCH_CHECK(x.device().is_cpu(), "adaptive_transform: CPU tensors only");
  TORCH_CHECK(x.is_contiguous() && tw.is_contiguous() && tb.is_contiguous(), "adaptive_transform: contiguous tensors only");
  TORCH_CHECK(tw.size(0) == x.size(1) && tw.size(1) == kOut && tw.size(2) == kTaps * x.size(4) && tb.size(0) == x.size(1) &&
                  tb.size(1) == kOut,
              "adaptive_transform: weight shape does not match the input");
  TORCH_CHECK(tw.scalar_type() == x.scalar_type() && tb.scalar_type() == x.scalar_type(),
              "adaptive_transform: one dtype for all inputs");
}

at::Tensor adaptive_transform_forward(const at::Tensor& x, const at::Tensor& tw, const at::Tensor& tb) {
  check_transform_inputs(x, tw, tb);
  auto out = at::empty({x.size(0), x.size(1), kOut, x.size(2), x.size(3)}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "adaptive_transform_forward", [&] {
    with_channels(x.size(4), [&](auto ch) { transform_forward_impl<scalar_t, decltype(ch)::value>(x, tw, tb, out); });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> adaptive_transform_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                                                           const at::Tensor& tw) {
  TORCH_CHECK(tw.dim() == 3 && tw.size(0) == x.size(1), "adaptive_transform: weight shape does not match the input");
  auto go = grad_out.contiguous();
  auto grad_x = at::zeros_like(x);
  auto grad_w = at::zeros({x.size(0), tw.size(0), tw.size(1), tw.size(2)}, x.options());
  auto grad_b = at::zeros({x.size(0), tw.size(0), kOut}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "adaptive_transform_backward", [&] {
    with_channels(x.size(4), [&](auto ch) {
      transform_backward_impl<scalar_t, decltype(ch)::value>(go, x, tw, grad_x, grad_w, grad_b);
    });
  });
  return {grad_x, grad_w.sum(0), grad_b.sum(0)};
}

}  // namespace

TORCH_LIBRARY(grmpose, m) {
  m.def("adaptive_conv_forward(Tensor x, Tensor tr, Tensor weight) -> Tensor");
  m.def("adaptive_conv_backward(Tensor grad_out, Tensor x, Tensor tr, Tensor weight) -> (Tensor, Tensor, Tensor)");
  m.def("adaptive_transform_forward(Tensor x, Tensor tw, Tensor tb) -> Tensor");
  m.def("adaptive_transform_backward(Tensor grad_out, Tensor x, Tensor tw) -> (Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(grmpose, CPU, m) {
  m.impl("adaptive_conv_forward", &adaptive_conv_forward);
  m.impl("adaptive_conv_backward", &adaptive_conv_backward);
  m.impl("adaptive_transform_forward", &adaptive_transform_forward);
  m.impl("adaptive_transform_backward", &adaptive_transform_backward);
}
