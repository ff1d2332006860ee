// fastln.torch._native: the bridge's eager fast path in compiled glue.
//
// What it replaces: on a small input, the Python bridge spent ~7 us a no_grad call against
// ~4 us for F.layer_norm (argument checks in Python, torch.empty, data_ptr() calls, a Numba
// dispatch of 18 arguments), and a Python autograd round trip on top with gradients.  Here
// the checks, the allocations, the kernel call (a C function pointer to a Numba cfunc of
// fastln/cpu/entries.py) and the autograd node (a C++ torch::autograd::Function) cost about
// a microsecond.  Parallel work runs on torch's own thread pool.
//
// It takes only the common case: plain (not subclassed, not Python-dispatched) contiguous
// CPU float32/float64 tensors of one dtype, or bfloat16/float16 ones (converted in the
// kernels) with parameters of their dtype or float32 (torch's mixed-precision rule),
// int/sequence normalized_shape, a float eps, row kernels.  Anything else returns None, and
// the Python bridge (fastln/torch/functional.py) takes the call with its full checks and
// torch's errors; so does a backward that must build a graph (create_graph=True).  The
// kernels are the Python path's, so results are bitwise the same.  The serial/parallel choice and the backward chunking are fastln._api's,
// with its constants handed over by configure().
#include <ATen/Parallel.h>
#include <ATen/PythonTorchFunctionTLS.h>
#include <c10/core/impl/TorchDispatchModeTLS.h>
#include <torch/extension.h>
#include <torch/version.h>

#include <sys/mman.h>

#include <tuple>

#include <atomic>
#include <cstring>
#include <string>
#include <limits>
#include <optional>
#include <vector>

namespace {

using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardFn = void (*)(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                           int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, double, int64_t);
using ChunksFn = void (*)(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                          int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                          int64_t, int64_t);
using ReduceFn = void (*)(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t);
using ChunksHalfFn = void (*)(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                              int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                              int64_t, int64_t, int64_t);
using ForwardHalfFn = void (*)(int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, int64_t,
                               int64_t, int64_t, int64_t, int64_t, int64_t, int64_t, double, int64_t, int64_t);

// fastln.cpu.entries: entry 3 * dtype + kind (dtype 0 float32, 1 float64), then the
// half-precision forward and backward chunks (entries.FORWARD_HALF, BACKWARD_HALF_CHUNKS).
enum Kind { FORWARD = 0, BACKWARD_CHUNKS = 1, REDUCE = 2 };
constexpr int FORWARD_HALF_ENTRY = 6, BACKWARD_HALF_ENTRY = 7;

struct Config {
  bool configured = false;
  int64_t serial_below = 0, pool_below = 0, row_cost = 0, col_split_min = 0, max_chunks = 1;
  int64_t max_partial_bytes = 0, min_chunk_elems = 1, min_chunk_rows = 1;
  // fastln.cpu._half's format codes of the half types converted in the kernels, -1 for
  // none (float16 without the CPU's conversion instructions goes to the Python bridge).
  int64_t fmt_bf16 = -1, fmt_f16 = -1;
  std::atomic<int64_t> entries[8] = {};
  // Python callables, kept for the life of the process (never decref'd: they must outlive
  // every autograd node, and static destructors run after the interpreter is gone).
  PyObject* resolve = nullptr;   // index -> address of fastln.cpu.entries' cfunc
  PyObject* fallback = nullptr;  // the Python backward, for what the fast one does not take
};
Config cfg;

int64_t entry_at(int i) {
  int64_t a = cfg.entries[i].load(std::memory_order_acquire);
  if (a == 0) {  // first use: compile or load the cfunc (under the GIL: Numba needs it)
    py::gil_scoped_acquire gil;
    a = py::reinterpret_borrow<py::object>(cfg.resolve)(i).cast<int64_t>();
    cfg.entries[i].store(a, std::memory_order_release);
  }
  return a;
}

int64_t entry(bool f64, Kind kind) { return entry_at(3 * (f64 ? 1 : 0) + kind); }

int64_t addr(const Tensor& t) { return t.defined() ? reinterpret_cast<int64_t>(t.data_ptr()) : 0; }

// The kernels' format code of a half type, -1 for any other dtype or one they do not take.
int64_t half_fmt(at::ScalarType dt) {
  if (dt == at::kBFloat16) return cfg.fmt_bf16;
  if (dt == at::kHalf) return cfg.fmt_f16;
  return -1;
}

// A parameter as the half kernels read it: float32 (a copy for a half-precision parameter).
Tensor as_float32(const Tensor* t) {
  if (!t) return Tensor();
  return t->scalar_type() == at::kFloat ? *t : t->to(at::kFloat);
}

// fastln._api._launch's rule, with the glue's own threshold (fastln._config.POOL_BELOW):
// serial for one task or little work, else parallel.  Parallel work runs on torch's
// intra-op pool (at::parallel_for), not Numba's: after a torch op its OpenMP workers spin for
// a while, and Numba's workers would fight them for the cores.  Only where work runs is
// decided here; the backward's chunks (chunking, from serial_below) are the NumPy API's
// whatever runs them, so the bits do not depend on this threshold.
bool parallel(bool one_task, int64_t rows, int64_t size) {
  return !one_task && size + cfg.row_cost * rows >= cfg.pool_below && at::get_num_threads() > 1;
}

// fastln._api.use_column_kernels
bool use_columns(int64_t rows, int64_t cols, bool backward) {
  if (cols < cfg.col_split_min) return false;
  return rows < cfg.max_chunks || (backward && 32 * cols > cfg.max_partial_bytes);
}

// fastln._api.chunking: a function of the shape alone (never of the thread count), which is
// what makes the parameter gradients bitwise the same for any thread count.
std::pair<int64_t, int64_t> chunking(int64_t rows, int64_t cols) {
  const int64_t work = rows * (cols + cfg.row_cost);
  if (work < 2 * cfg.min_chunk_elems) {  // one chunk, or two halves of work parallel() takes
    if (work >= cfg.serial_below && rows >= 2) return {2, (rows + 1) / 2};
    return {1, std::max<int64_t>(rows, 1)};
  }
  const int64_t cap = std::min({cfg.max_chunks, rows, std::max<int64_t>(2, rows / cfg.min_chunk_rows),
                                std::max<int64_t>(2, cfg.max_partial_bytes / std::max<int64_t>(16 * cols, 1))});
  int64_t n = std::max<int64_t>(1, std::min(cap, work / cfg.min_chunk_elems));
  if (n > 1 && n % 2) n += n < cap ? 1 : -1;  // an even count keeps 2 (or 4) threads equally busy
  const int64_t per = std::max<int64_t>(1, (rows + n - 1) / n);
  return {std::max<int64_t>(1, (rows + per - 1) / per), per};
}

// An uninitialised contiguous tensor; the 2 MiB-aligned stretches of one of 2 MiB or more are
// advised onto transparent huge pages, as fastln.torch._glue.empty does (torch maps 4 KiB
// pages: one fault per page on first touch, and glibc hands a freed 3 MiB block back to the
// system often enough that 8x128x768 float32 forward+backward took 273-790 faults a call;
// advised from 2 MiB rather than 4, 5-481 across runs: python tools/page_faults.py).
// at::detail::empty_cpu is what aten::empty's CPU kernel calls, without the ~0.5 us of
// dispatch (seven allocations a forward and backward; the kernels write every element).
Tensor empty(at::IntArrayRef sizes, at::ScalarType dtype) {
  Tensor t = at::detail::empty_cpu(sizes, dtype);
  constexpr int64_t huge = 2 << 20;
  const int64_t nbytes = t.numel() * static_cast<int64_t>(t.element_size());
  if (nbytes >= huge) {
    const int64_t p = addr(t);
    const int64_t start = (p + huge - 1) / huge * huge, stop = (p + nbytes) / huge * huge;
    if (stop > start) madvise(reinterpret_cast<void*>(start), stop - start, MADV_HUGEPAGE);
  }
  return t;
}

// A tensor the kernels may read by address: plain Tensor or Parameter (subclasses may
// override torch functions), on the CPU, strided, contiguous, no lazy negation, not
// Python-dispatched (fake, functorch...), of dtype `dt`.
const Tensor* plain(py::handle o, at::ScalarType dt) {
  if (!THPVariable_CheckExact(o.ptr())) return nullptr;
  const Tensor& t = THPVariable_Unpack(o.ptr());
  if (t.scalar_type() != dt || !t.is_cpu() || t.layout() != at::kStrided || !t.is_contiguous() ||
      t.is_neg() || t.is_conj() || !t.has_storage() || t.unsafeGetTensorImpl()->is_python_dispatch())
    return nullptr;
  return &t;
}

// normalized_shape as torch's int or sequence of ints; false for anything else.
bool shape_of(py::handle o, std::vector<int64_t>& out) {
  auto one = [&](PyObject* d) {
    if (!PyLong_CheckExact(d)) return false;  // bools, floats, SymInts, NumPy ints: Python path
    int overflow = 0;
    const long long v = PyLong_AsLongLongAndOverflow(d, &overflow);
    if (overflow || v < 0) return false;
    out.push_back(v);
    return true;
  };
  PyObject* p = o.ptr();
  if (PyLong_CheckExact(p)) return one(p);
  if (!PyTuple_Check(p) && !PyList_Check(p)) return false;  // torch.Size is a tuple
  PyObject* seq = PySequence_Fast(p, "");
  if (!seq) {
    PyErr_Clear();
    return false;
  }
  const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
  bool ok = n > 0;
  for (Py_ssize_t k = 0; ok && k < n; ++k) ok = one(PySequence_Fast_GET_ITEM(seq, k));
  Py_DECREF(seq);
  return ok;
}

struct Forward {
  Tensor y, h, mean, rstd;
};

// A backward's fastln._api chunks (by shape) with their zeroed float64 partials, one row of
// `n` per chunk for grad_weight and for grad_bias (addresses 0 when n is 0), and how to run
// them: `chunks_from(first, stop)` on torch's pool, a chunk per task, or serially.  The
// partials are then summed in chunk order: the parallel kernel's bits for any thread count.
struct Partials {
  int64_t n_chunks, rows_per_chunk, dwp = 0, dbp = 0;
  Tensor parts;
  Partials(int64_t rows, int64_t cols, int64_t n) {
    std::tie(n_chunks, rows_per_chunk) = chunking(rows, cols);
    parts = empty({2, n_chunks, n}, at::kDouble);
    if (n) {
      std::memset(parts.data_ptr(), 0, parts.numel() * sizeof(double));
      dwp = addr(parts);
      dbp = dwp + n_chunks * n * 8;
    }
  }
  template <class ChunksFrom>
  void run(int64_t rows, int64_t cols, const ChunksFrom& chunks_from) const {
    if (parallel(n_chunks == 1, rows, rows * cols)) {
      at::parallel_for(0, n_chunks, 1, chunks_from);
    } else {
      chunks_from(0, n_chunks);
    }
  }
};

// A forward's rows, `rows_from(begin, end)`: serial, or split over torch's pool in tasks of
// at least half the serial threshold's work each (the GIL released around them).
template <class RowsFrom>
void over_rows(int64_t rows, int64_t cols, const RowsFrom& rows_from) {
  if (parallel(rows == 1, rows, rows * cols)) {
    const int64_t grain = std::max<int64_t>(1, (cfg.pool_below / 2 + cols + cfg.row_cost - 1) / (cols + cfg.row_cost));
    py::gil_scoped_release nogil;
    at::parallel_for(0, rows, grain, rows_from);
  } else {
    rows_from(0, rows);
  }
}

// The Python bridge's half-precision forward (bfloat16/float16 bits converted in the kernel,
// float32 weight, bias and statistics), its buffers checked and allocated in Python
// (fastln/torch/_glue.py), run here so that its parallel work is on torch's pool as the
// float32/float64 path's is.  Rows are independent: any split gives the same bits.
void forward_half(int64_t x, int64_t res, int64_t w, int64_t b, int64_t y, int64_t h, int64_t mean, int64_t rstd,
                  int64_t rows, int64_t cols, bool has_res, int64_t n_w, int64_t n_b, bool centered, double eps,
                  int64_t fmt) {
  auto fn = reinterpret_cast<ForwardHalfFn>(entry_at(FORWARD_HALF_ENTRY));
  auto rows_from = [&](int64_t begin, int64_t end) {
    const int64_t off = begin * cols * 2, soff = begin * 4, n = end - begin;
    fn(x + off, has_res ? res + off : 0, w, b, y + off, has_res ? h + off : 0, centered ? mean + soff : 0,
       rstd + soff, n, cols, has_res ? 1 : 0, n_w, n_b, centered ? n : 0, eps, centered ? 1 : 0, fmt);
  };
  if (rows > 0) over_rows(rows, cols, rows_from);
}

// The Python bridge's half-precision backward (half bits of grad_y, x, the residual_out
// gradient and grad_x; float32 statistics, weight, grad_weight and grad_bias), buffers
// checked and allocated in Python: fastln._api's fixed chunks on torch's pool, then the float32
// reduction of the float64 partials in chunk order, the Numba kernel's bits.
void backward_half_run(int64_t gy, int64_t x, int64_t mean, int64_t rstd, int64_t w, int64_t gres, int64_t gx,
                       int64_t dw, int64_t db, int64_t rows, int64_t cols, int64_t n_w, bool has_gres, int64_t n,
                       bool centered, int64_t fmt) {
  if (rows <= 0) return;
  const Partials p(rows, cols, n);
  auto chunks = reinterpret_cast<ChunksHalfFn>(entry_at(BACKWARD_HALF_ENTRY));
  auto reduce = reinterpret_cast<ReduceFn>(entry(false, REDUCE));  // float32 grad_weight/grad_bias
  auto chunks_from = [&](int64_t first, int64_t stop) {
    chunks(gy, x, centered ? mean : 0, rstd, w, has_gres ? gres : 0, gx, p.dwp, p.dbp, rows, cols,
           centered ? rows : 0, n_w, has_gres ? 1 : 0, n, p.n_chunks, p.rows_per_chunk, first, stop,
           centered ? 1 : 0, fmt);
  };
  p.run(rows, cols, chunks_from);
  if (n) reduce(p.dwp, p.dbp, dw, db, p.n_chunks, n);
}

// backward_half_run called from Python (the GIL released around it; the autograd node's
// backward runs without the GIL and calls backward_half_run itself).
void backward_half(int64_t gy, int64_t x, int64_t mean, int64_t rstd, int64_t w, int64_t gres, int64_t gx,
                   int64_t dw, int64_t db, int64_t rows, int64_t cols, int64_t n_w, bool has_gres, int64_t n,
                   bool centered, int64_t fmt) {
  py::gil_scoped_release nogil;
  backward_half_run(gy, x, mean, rstd, w, gres, gx, dw, db, rows, cols, n_w, has_gres, n, centered, fmt);
}

// The forward on checked bfloat16/float16 tensors: fastln.torch._glue.forward_impl's half
// path (float32 statistics, always kept: the half kernel writes them).
Forward run_forward_half(const Tensor& x, const Tensor* res, const Tensor* w, const Tensor* b, double eps,
                         bool centered, int64_t rows, int64_t cols, int64_t fmt) {
  Forward o;
  const at::ScalarType dt = x.scalar_type();
  o.y = empty(x.sizes(), dt);
  if (res) o.h = empty(x.sizes(), dt);
  o.mean = empty({centered ? rows : 0}, at::kFloat);
  o.rstd = empty({rows}, at::kFloat);
  const Tensor w32 = as_float32(w), b32 = as_float32(b);
  forward_half(addr(x), res ? addr(*res) : 0, addr(w32), addr(b32), addr(o.y), res ? addr(o.h) : 0,
               centered ? addr(o.mean) : 0, addr(o.rstd), rows, cols, res != nullptr, w ? cols : 0, b ? cols : 0,
               centered, eps, fmt);
  return o;
}

// The forward kernel on checked tensors.  `keep_stats`: allocate mean/rstd for a backward
// (else the kernel keeps them in scratch of its own).  Called with the GIL held: released
// around parallel work, as Numba's nogil dispatch does for the Python bridge.
Forward run_forward(const Tensor& x, const Tensor* res, const Tensor* w, const Tensor* b, double eps,
                    bool centered, int64_t rows, int64_t cols, bool keep_stats) {
  const at::ScalarType dt = x.scalar_type();
  const int64_t fmt = half_fmt(dt);
  if (fmt >= 0) return run_forward_half(x, res, w, b, eps, centered, rows, cols, fmt);
  Forward o;
  o.y = empty(x.sizes(), dt);
  if (res) o.h = empty(x.sizes(), dt);
  if (keep_stats) {
    o.mean = empty({centered ? rows : 0}, dt);  // statistics in the data's dtype (float32/64)
    o.rstd = empty({rows}, dt);
  }
  auto fn = reinterpret_cast<ForwardFn>(entry(dt == at::kDouble, FORWARD));
  const int64_t es = x.element_size();
  const bool stats = keep_stats;
  auto rows_from = [&](int64_t begin, int64_t end) {  // rows are independent: any split gives the same bits
    const int64_t off = begin * cols * es, soff = begin * es, n = end - begin;
    fn(addr(x) + off, res ? addr(*res) + off : 0, w ? addr(*w) : 0, b ? addr(*b) : 0, addr(o.y) + off,
       res ? addr(o.h) + off : 0, stats && centered ? addr(o.mean) + soff : 0, stats ? addr(o.rstd) + soff : 0,
       n, cols, res ? 1 : 0, w ? cols : 0, b ? cols : 0, stats && centered ? n : 0, eps, centered ? 1 : 0);
  };
  over_rows(rows, cols, rows_from);
  return o;
}

std::optional<Tensor> maybe(const Tensor* t) { return t ? std::optional<Tensor>(*t) : std::nullopt; }

struct NormFunction : public torch::autograd::Function<NormFunction> {
  // Outputs: (y) or (y, residual_out).  Inputs x, residual, weight, bias (undefined when
  // absent), then non-tensor arguments.
  // Absent inputs are empty optionals: an undefined Tensor cannot be an autograd input.
  static variable_list forward(AutogradContext* ctx, const Tensor& x, const std::optional<Tensor>& res,
                               const std::optional<Tensor>& w, const std::optional<Tensor>& b, double eps,
                               bool centered, int64_t rows, int64_t cols, std::vector<int64_t> norm) {
    const Tensor* r = res ? &*res : nullptr;
    Forward o = run_forward(x, r, w ? &*w : nullptr, b ? &*b : nullptr, eps, centered, rows, cols, true);
    ctx->save_for_backward({r ? o.h : x, o.mean, o.rstd, w ? *w : Tensor()});
    // Three entries (a string-keyed map: each costs a hash and an allocation).
    const bool params_f32 = x.scalar_type() != at::kFloat && ((w && w->scalar_type() == at::kFloat) ||
                                                               (b && b->scalar_type() == at::kFloat));
    ctx->saved_data["args"] = std::vector<int64_t>{rows, cols, centered, r != nullptr, w.has_value(), b.has_value(),
                                                   params_f32};
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["norm"] = std::move(norm);
    if (r) return {o.y, o.h};
    return {o.y};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &h = saved[0], &mean = saved[1], &rstd = saved[2], &w = saved[3];
    const std::vector<int64_t> args = ctx->saved_data["args"].toIntVector();
    const int64_t rows = args[0], cols = args[1];
    const bool centered = args[2], has_res = args[3], has_w = args[4], has_b = args[5];
    const std::vector<int64_t> norm = ctx->saved_data["norm"].toIntVector();
    // needs_input_grad counts the inputs present (autograd's edges); the gradients returned
    // count every argument.
    const size_t edge_w = has_res ? 2 : 1, edge_b = edge_w + (has_w ? 1 : 0);
    const bool need_x = ctx->needs_input_grad(0), need_r = has_res && ctx->needs_input_grad(1);
    const bool need_w = has_w && ctx->needs_input_grad(edge_w), need_b = has_b && ctx->needs_input_grad(edge_b);
    const Tensor& gy = grads[0];  // materialised: zeros when y took no gradient
    const Tensor gres = has_res ? grads[1] : Tensor();
    const at::ScalarType dt = h.scalar_type();
    auto usable = [&](const Tensor& g) {
      return g.scalar_type() == dt && g.is_cpu() && g.layout() == at::kStrided &&
             !g.unsafeGetTensorImpl()->is_python_dispatch() && !g.is_neg();
    };
    variable_list out(9);
    const bool params_f32 = args[6] != 0;  // float32 parameters of half-precision data
    if (torch::autograd::GradMode::is_enabled() || !usable(gy) || (gres.defined() && !usable(gres))) {
      // A graph of the gradient is asked for (double backward), or gradients of an unusual
      // kind: the Python bridge's backward, which handles both.
      py::gil_scoped_acquire gil;
      py::tuple got = py::reinterpret_borrow<py::object>(cfg.fallback)(
          gy, gres.defined() ? py::cast(gres) : py::none(), h, mean, rstd, w.defined() ? py::cast(w) : py::none(),
          py::tuple(py::cast(norm)), ctx->saved_data["eps"].toDouble(), centered,
          py::make_tuple(need_x, need_r, need_w, need_b), params_f32);
      for (int i = 0; i < 4; ++i)
        if (!got[i].is_none()) out[i] = got[i].cast<Tensor>();
      return out;
    }
    const Tensor gyc = gy.contiguous();  // gradients arrive expanded or strided at times
    const Tensor gresc = gres.defined() ? gres.contiguous() : Tensor();
    Tensor gx = empty(h.sizes(), dt);
    const bool need_params = need_w || need_b;
    const int64_t n = need_params ? cols : 0;
    Tensor dw, db;
    const int64_t fmt = half_fmt(dt);
    if (fmt >= 0) {  // bfloat16/float16: float32 parameter gradients, cast to the parameters' dtype
      dw = empty({n}, at::kFloat);
      db = empty({n}, at::kFloat);
      const Tensor w32 = as_float32(w.defined() ? &w : nullptr);
      backward_half_run(addr(gyc), addr(h), centered ? addr(mean) : 0, addr(rstd), addr(w32), addr(gresc), addr(gx),
                        addr(dw), addr(db), rows, cols, w.defined() ? cols : 0, gresc.defined(), n, centered, fmt);
      if (!params_f32) {
        dw = dw.to(dt);
        db = db.to(dt);
      }
    } else {
      dw = empty({n}, dt);
      db = empty({n}, dt);
      const Partials p(rows, cols, n);
      auto chunks = reinterpret_cast<ChunksFn>(entry(dt == at::kDouble, BACKWARD_CHUNKS));
      auto chunks_from = [&](int64_t first, int64_t stop) {
        chunks(addr(gyc), addr(h), centered ? addr(mean) : 0, addr(rstd), addr(w), addr(gresc), addr(gx), p.dwp,
               p.dbp, rows, cols, centered ? rows : 0, w.defined() ? cols : 0, gresc.defined() ? 1 : 0, n,
               p.n_chunks, p.rows_per_chunk, first, stop, centered ? 1 : 0);
      };
      p.run(rows, cols, chunks_from);
      if (n)
        reinterpret_cast<ReduceFn>(entry(dt == at::kDouble, REDUCE))(p.dwp, p.dbp, addr(dw), addr(db), p.n_chunks, n);
    }
    if (need_x) out[0] = gx;
    if (need_r) out[1] = gx;
    // A one-dimensional normalized_shape is dw's shape already: no view (~1 us each).
    if (need_w) out[2] = norm.size() == 1 ? dw : dw.view(norm);
    if (need_b) out[3] = norm.size() == 1 ? db : db.view(norm);
    return out;
  }
};

// The eager fast path: y, (y, residual_out), or None for a call it does not take.
py::object norm(py::handle xo, py::handle ro, py::handle shape, py::handle wo, py::handle bo, py::handle epso,
                bool centered) {
  if (!cfg.configured || !THPVariable_CheckExact(xo.ptr())) return py::none();
  // A TorchFunctionMode or TorchDispatchMode (FlopCounterMode, FakeTensorMode...) wants to
  // see the call's torch ops: the Python bridge's path.
  if (at::impl::torch_function_mode_enabled() || c10::impl::TorchDispatchModeTLS::stack_len() > 0)
    return py::none();
  const at::ScalarType dt = THPVariable_Unpack(xo.ptr()).scalar_type();
  const bool half = half_fmt(dt) >= 0;
  if (dt != at::kFloat && dt != at::kDouble && !half) return py::none();
  const Tensor* x = plain(xo, dt);
  if (!x) return py::none();
  const Tensor* r = nullptr;
  const Tensor* w = nullptr;
  const Tensor* b = nullptr;
  // Parameters in the data's dtype; half-precision data may have float32 ones instead
  // (torch's mixed-precision rule), both alike: any other mix is the Python bridge's error.
  at::ScalarType pdt = dt;
  if (half) {
    const py::handle p = !wo.is_none() ? wo : bo;
    if (!p.is_none() && THPVariable_Check(p.ptr()) && THPVariable_Unpack(p.ptr()).scalar_type() == at::kFloat)
      pdt = at::kFloat;
  }
  if (!ro.is_none() && !(r = plain(ro, dt))) return py::none();
  if (!wo.is_none() && !(w = plain(wo, pdt))) return py::none();
  if (!bo.is_none() && !(b = plain(bo, pdt))) return py::none();
  double eps;
  if (PyFloat_CheckExact(epso.ptr())) {
    eps = PyFloat_AS_DOUBLE(epso.ptr());
  } else if (epso.is_none() && !centered) {  // torch's RMSNorm default
    eps = dt == at::kDouble ? std::numeric_limits<double>::epsilon() : std::numeric_limits<float>::epsilon();
  } else {
    return py::none();  // ints, 0-d tensors, wrong types: the Python path converts or raises
  }
  std::vector<int64_t> ns;
  if (!shape_of(shape, ns)) return py::none();
  const int64_t nd = x->dim(), k = static_cast<int64_t>(ns.size());
  if (k > nd) return py::none();
  int64_t rows = 1, cols = 1;
  for (int64_t i = 0; i < nd - k; ++i) rows *= x->size(i);
  for (int64_t i = 0; i < k; ++i) {
    if (x->size(nd - k + i) != ns[i]) return py::none();
    cols *= ns[i];
  }
  if (rows == 0 || cols == 0 || use_columns(rows, cols, false) || use_columns(rows, cols, true))
    return py::none();
  if ((w && w->sizes() != at::IntArrayRef(ns)) || (b && b->sizes() != at::IntArrayRef(ns)) ||
      (r && r->sizes() != x->sizes()))
    return py::none();
  const bool grad = torch::autograd::GradMode::is_enabled() &&
                    (x->requires_grad() || (r && r->requires_grad()) || (w && w->requires_grad()) ||
                     (b && b->requires_grad()));
  if (!grad) {
    Forward o = run_forward(*x, r, w, b, eps, centered, rows, cols, false);
    if (r) return py::make_tuple(o.y, o.h);
    return py::cast(o.y);
  }
  variable_list got = NormFunction::apply(*x, maybe(r), maybe(w), maybe(b), eps, centered, rows, cols, ns);
  if (r) return py::make_tuple(got[0], got[1]);
  return py::cast(got[0]);
}

void configure(py::object resolve, py::object fallback, int64_t serial_below, int64_t pool_below, int64_t row_cost,
               int64_t col_split_min, int64_t max_chunks, int64_t max_partial_bytes, int64_t min_chunk_elems,
               int64_t min_chunk_rows, int64_t fmt_bf16, int64_t fmt_f16) {
  // Kept for the life of the process (see Config).  A second call (tools/pool_threshold.py,
  // tests/test_native.py, through fastln.torch._fast.configure) replaces them and leaks the
  // old references, on purpose: an autograd node's backward on another thread may be using them.
  cfg.resolve = resolve.release().ptr();
  cfg.fallback = fallback.release().ptr();
  cfg.serial_below = serial_below;
  cfg.pool_below = pool_below;
  cfg.row_cost = row_cost;
  cfg.col_split_min = col_split_min;
  cfg.max_chunks = std::max<int64_t>(1, max_chunks);
  cfg.max_partial_bytes = max_partial_bytes;
  cfg.min_chunk_elems = std::max<int64_t>(1, min_chunk_elems);
  cfg.min_chunk_rows = std::max<int64_t>(1, min_chunk_rows);
  cfg.fmt_bf16 = fmt_bf16;
  cfg.fmt_f16 = fmt_f16;
  cfg.configured = true;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastln.torch's eager fast path (see fastln/torch/_fast.py)";
  m.def("configure", &configure,
        "Hand over the entry resolver, the Python backward, fastln._config's launch constants and the "
        "format codes of the half types the kernels convert (-1: none).",
        py::arg("resolve"), py::arg("fallback"), py::arg("serial_below"), py::arg("pool_below"), py::arg("row_cost"),
        py::arg("col_split_min"), py::arg("max_chunks"), py::arg("max_partial_bytes"), py::arg("min_chunk_elems"),
        py::arg("min_chunk_rows"), py::arg("fmt_bf16") = -1, py::arg("fmt_f16") = -1);
  m.def("norm", &norm, "y, (y, residual_out), or None when the Python bridge must take the call.");
  m.def("forward_half", &forward_half,
        "The half-precision forward kernel on buffers given by address, rows split over torch's pool.");
  m.def("backward_half", &backward_half,
        "The half-precision backward on buffers given by address, its chunks over torch's pool.");
  m.def("chunking", [](int64_t rows, int64_t cols) { return chunking(rows, cols); },
        "The backward's (n_chunks, rows_per_chunk): fastln._api.chunking's port (tests compare them).");
  m.def("built_with", [] {
    return std::to_string(TORCH_VERSION_MAJOR) + "." + std::to_string(TORCH_VERSION_MINOR) + "." +
           std::to_string(TORCH_VERSION_PATCH);
  }, "The torch version this was built against.");
}
