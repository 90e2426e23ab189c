// The "rows" strategy's Linear and LayerNorm as C++ autograd functions
// (gradcomp/recorder/rows/native.py builds this file and explains the protocol).
//
// Why: on a small model the Python autograd functions of gradcomp/recorder/rows/modules cost more
// in interpreter time per module than their arithmetic (d = 64: a recorded step 1.35-1.4x a plain
// one, against about 1.2x here; benchmarks/record_overhead.py).
//
// Each call gets, besides its tensors, four holders the recorder fills in before the backward:
//   slots  [2, T, T]: the Gram of the weight's and of the bias's per-task blocks are written here
//                     (numel 0: this call is not split, plain gradients only);
//   acc_w, acc_b:     when not empty ([T, out, in] and [T, out]), the blocks are added into them
//                     instead (a module called more than once, or per-unit Grams wanted);
//   state  int64 CPU [3]: T, rows per task, on (0: plain gradients, e.g. under the recorder's
//                     vmapped fallback, whose batched gradients must not be written anywhere);
//   buf:              CPU scratch for the [T, a, b] blocks (numel 0: allocate).
// Task t owns the batch rows [t * even, (t + 1) * even). The holders travel in saved_data, not
// save_for_backward, so that the recorder may resize them after the forward.
#include <torch/extension.h>

#include <cstdlib>
#include <cstring>

extern "C" {
#include "_gram.c"
}

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::Function;
using torch::autograd::variable_list;

namespace {

// Below this T * T * P the BLAS product wins (the same bound as cgram.MIN_WORK).
constexpr int64_t kMinWork = 8 * 8 * 4096;

// slot <- flat flat^T, flat [T, P] (accumulated in slot's dtype).
void gram_into(const Tensor& flat, const Tensor& slot) {
  const int64_t T = flat.size(0), P = flat.size(1);
  if (flat.device().is_cpu() && flat.scalar_type() == at::kFloat &&
      slot.scalar_type() == at::kFloat && T * T * P >= kMinWork && flat.is_contiguous() &&
      slot.is_contiguous()) {
    if (gram_f32(flat.data_ptr<float>(), T, P, P, slot.data_ptr<float>(),
                 std::max(1, at::get_num_threads())) == 0)
      return;
  }
  Tensor f = flat.scalar_type() == slot.scalar_type() ? flat : flat.to(slot.scalar_type());
  slot.copy_(at::mm(f, f.t()));
}

struct Plan {
  int64_t T = 0, even = 0;
  bool on = false;
};

Plan plan_of(AutogradContext* ctx) {
  Tensor state = ctx->saved_data["state"].toTensor();
  const int64_t* s = state.data_ptr<int64_t>();
  return Plan{s[0], s[1], s[2] != 0};
}

// Hand one split's per-task blocks to the recorder: Grams into the slots, or added to the
// accumulators. Returns false when this call is not split.
bool wanted(AutogradContext* ctx, const Plan& plan) {
  if (!plan.on || plan.T <= 0 || plan.even <= 0) return false;
  return ctx->saved_data["slots"].toTensor().numel() > 0 ||
         ctx->saved_data["acc_w"].toTensor().numel() > 0;
}

void hand_over(AutogradContext* ctx, const Tensor& bw, const Tensor& bb) {
  Tensor acc_w = ctx->saved_data["acc_w"].toTensor();
  if (acc_w.numel() > 0) {
    acc_w.add_(bw.reshape(acc_w.sizes()));
    Tensor acc_b = ctx->saved_data["acc_b"].toTensor();
    if (bb.defined() && acc_b.numel() > 0) acc_b.add_(bb.reshape(acc_b.sizes()));
    return;
  }
  Tensor slots = ctx->saved_data["slots"].toTensor();
  gram_into(bw.reshape({bw.size(0), -1}), slots[0]);
  if (bb.defined()) gram_into(bb.reshape({bb.size(0), -1}), slots[1]);
}

void keep_holders(AutogradContext* ctx, const Tensor& slots, const Tensor& acc_w,
                  const Tensor& acc_b, const Tensor& state, const Tensor& buf) {
  ctx->saved_data["slots"] = slots;
  ctx->saved_data["acc_w"] = acc_w;
  ctx->saved_data["acc_b"] = acc_b;
  ctx->saved_data["state"] = state;
  ctx->saved_data["buf"] = buf;
}

struct RowsLinear : public Function<RowsLinear> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w,
                        const c10::optional<Tensor>& b, const Tensor& slots, const Tensor& acc_w,
                        const Tensor& acc_b, const Tensor& state, const Tensor& buf) {
    ctx->save_for_backward({x, w});
    ctx->saved_data["has_b"] = b.has_value() && b->defined();
    keep_holders(ctx, slots, acc_w, acc_b, state, buf);
    return at::linear(x, w, b);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &w = saved[1];
    const Tensor& g = grads[0];
    const bool has_b = ctx->saved_data["has_b"].toBool();
    const bool need_w = ctx->needs_input_grad(1), need_b = has_b && ctx->needs_input_grad(2);
    const int64_t n_out = g.size(-1), n_in = x.size(-1), rows = g.size(0);
    Tensor gx = ctx->needs_input_grad(0) ? g.matmul(w) : Tensor();
    Tensor gw, gb;
    const Plan plan = plan_of(ctx);
    if ((need_w || need_b) && wanted(ctx, plan)) {
      const int64_t T = plan.T, cut = plan.T * plan.even;
      Tensor g3 = g.narrow(0, 0, cut).reshape({T, -1, n_out});
      Tensor x3 = x.narrow(0, 0, cut).reshape({T, -1, n_in});
      const bool wide = n_out > n_in;  // the faster product has the narrower side first
      Tensor buf = ctx->saved_data["buf"].toTensor();
      Tensor blocks = buf.numel() == T * n_out * n_in ? buf.view({T, wide ? n_in : n_out, -1})
                                                     : Tensor();
      if (wide) {
        blocks = blocks.defined() ? at::bmm_out(blocks, x3.transpose(1, 2), g3)
                                  : at::bmm(x3.transpose(1, 2), g3);  // [T, in, out]
      } else {
        blocks = blocks.defined() ? at::bmm_out(blocks, g3.transpose(1, 2), x3)
                                  : at::bmm(g3.transpose(1, 2), x3);  // [T, out, in]
      }
      Tensor bias = g3.sum(1);  // [T, out]
      const bool full = cut == rows;
      if (need_w && full) gw = wide ? blocks.sum(0).t().contiguous() : blocks.sum(0);
      if (need_b && full) gb = bias.sum(0);
      Tensor acc_w = ctx->saved_data["acc_w"].toTensor();
      hand_over(ctx, wide && acc_w.numel() > 0 ? blocks.transpose(1, 2) : blocks,
                has_b ? bias : Tensor());
    }
    if (need_w && !gw.defined())
      gw = g.reshape({-1, n_out}).t().mm(x.reshape({-1, n_in}));
    if (need_b && !gb.defined()) gb = g.reshape({-1, n_out}).sum(0);
    return {gx, gw, gb, Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

struct RowsLayerNorm : public Function<RowsLayerNorm> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& w, const Tensor& b,
                        double eps, const Tensor& slots, const Tensor& acc_w, const Tensor& acc_b,
                        const Tensor& state) {
    auto out = at::native_layer_norm(x, w.sizes(), w, b, eps);
    ctx->save_for_backward({x, w, b, std::get<1>(out), std::get<2>(out)});
    keep_holders(ctx, slots, acc_w, acc_b, state, Tensor());
    return std::get<0>(out);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &w = saved[1], &b = saved[2], &mean = saved[3],
                 &rstd = saved[4];
    const Tensor& g = grads[0];
    const bool need_x = ctx->needs_input_grad(0), need_w = ctx->needs_input_grad(1),
               need_b = ctx->needs_input_grad(2);
    const Plan plan = plan_of(ctx);
    if (!(need_w || need_b) || !wanted(ctx, plan)) {
      auto out = at::native_layer_norm_backward(g, x, w.sizes(), mean, rstd, w, b,
                                                {need_x, need_w, need_b});
      return {std::get<0>(out), std::get<1>(out), std::get<2>(out), Tensor(), Tensor(), Tensor(),
              Tensor(), Tensor()};
    }
    Tensor gx;
    if (need_x)
      gx = std::get<0>(at::native_layer_norm_backward(g, x, w.sizes(), mean, rstd, w, b,
                                                      {true, false, false}));
    const int64_t d = w.numel(), T = plan.T, cut = plan.T * plan.even;
    Tensor gxhat = g * at::sub(x, mean).mul_(rstd);
    Tensor bw = gxhat.narrow(0, 0, cut).reshape({T, -1, d}).sum(1);  // [T, d]
    Tensor bb = g.narrow(0, 0, cut).reshape({T, -1, d}).sum(1);
    Tensor gw, gb;
    if (cut == g.size(0)) {
      gw = bw.sum(0);
      gb = bb.sum(0);
    } else {
      gw = gxhat.reshape({-1, d}).sum(0);
      gb = g.reshape({-1, d}).sum(0);
    }
    hand_over(ctx, bw, bb);
    return {gx, need_w ? gw.view(w.sizes()) : Tensor(), need_b ? gb.view(b.sizes()) : Tensor(),
            Tensor(), Tensor(), Tensor(), Tensor(), Tensor()};
  }
};

Tensor linear(const Tensor& x, const Tensor& w, const c10::optional<Tensor>& b,
              const Tensor& slots, const Tensor& acc_w, const Tensor& acc_b,
              const Tensor& state, const Tensor& buf) {
  return RowsLinear::apply(x, w, b, slots, acc_w, acc_b, state, buf);
}

Tensor layer_norm(const Tensor& x, const Tensor& w, const Tensor& b, double eps,
                  const Tensor& slots, const Tensor& acc_w, const Tensor& acc_b,
                  const Tensor& state) {
  return RowsLayerNorm::apply(x, w, b, eps, slots, acc_w, acc_b, state);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "gradcomp rows strategy: Linear and LayerNorm with per-task Gram entries";
  m.def("linear", &linear, "F.linear whose backward splits the weight gradient by task rows");
  m.def("layer_norm", &layer_norm, "layer norm whose backward splits gamma, beta by task rows");
}
