// Fused int8 convolution through torch's own oneDNN, with the primitive built once per layer.
//
// Why: torch's `onednn.qconv_pointwise` rebuilds the oneDNN primitive descriptor on every call
// (a third or more of a 1x1 conv's time at ResNet-50 shapes; docs/ARCHITECTURE.md section 8).
// Here the primitive, the reordered weights and the memory objects are made at a layer's first
// call and kept, keyed by everything that shapes the primitive; a call then sets four data
// pointers and executes.
//
// Which oneDNN: the one inside libtorch_cpu (3.12 on torch 2.13 and 2.14), so numbers and
// CPU dispatch are torch's. torch ships its headers but does not export its C API; the
// functions are found in libtorch_cpu's ELF symbol table (.symtab) and called through pointers.
// `iq_onednn::status()` says why when that fails; Python then keeps torch's ops.
//
// Numerics mirror torch's op (kernels/native.py states the contract; tests/kernels pin it):
// u8/s8 activations with a runtime src scale and zero point, s8 weights with per-output-channel
// scales, f32 bias, eltwise post-ops, then the output scale and zero point (u8/s8 out) or
// nothing (f32/bf16 out).

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <c10/core/StorageImpl.h>
#include <torch/library.h>

#include <oneapi/dnnl/dnnl.h>

#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "attention_bf16.h"
#include "layer_norm_quant.h"
#include "woq_gemv.h"
#include "woq_int4.h"

namespace {

// ---- the oneDNN C API, resolved from libtorch_cpu's symbol table --------------------------

#define IQ_DNNL_FUNCTIONS(X)                       \
  X(dnnl_version)                                  \
  X(dnnl_engine_create)                            \
  X(dnnl_stream_create)                            \
  X(dnnl_memory_desc_create_with_strides)          \
  X(dnnl_memory_desc_create_with_tag)              \
  X(dnnl_memory_desc_destroy)                      \
  X(dnnl_memory_desc_clone)                        \
  X(dnnl_memory_desc_get_size)                     \
  X(dnnl_memory_create)                            \
  X(dnnl_memory_set_data_handle)                   \
  X(dnnl_memory_destroy)                           \
  X(dnnl_primitive_attr_create)                    \
  X(dnnl_primitive_attr_destroy)                   \
  X(dnnl_primitive_attr_set_scales_mask)           \
  X(dnnl_primitive_attr_set_zero_points_mask)      \
  X(dnnl_primitive_attr_set_post_ops)              \
  X(dnnl_primitive_attr_set_fpmath_mode_v2)        \
  X(dnnl_post_ops_create)                          \
  X(dnnl_post_ops_destroy)                         \
  X(dnnl_post_ops_append_eltwise)                  \
  X(dnnl_post_ops_append_sum)                      \
  X(dnnl_post_ops_append_binary)                   \
  X(dnnl_convolution_forward_primitive_desc_create) \
  X(dnnl_matmul_primitive_desc_create)             \
  X(dnnl_reorder_primitive_desc_create)            \
  X(dnnl_softmax_forward_primitive_desc_create)    \
  X(dnnl_primitive_desc_query_md)                  \
  X(dnnl_primitive_desc_destroy)                   \
  X(dnnl_primitive_create)                         \
  X(dnnl_primitive_destroy)                        \
  X(dnnl_primitive_execute)                        \
  X(dnnl_stream_wait)

struct Api {
#define IQ_MEMBER(f) decltype(&::f) f = nullptr;
  IQ_DNNL_FUNCTIONS(IQ_MEMBER)
#undef IQ_MEMBER
  dnnl_engine_t engine = nullptr;
  dnnl_stream_t stream = nullptr;
  std::string error;  // empty when ready
};

struct FoundLibrary {
  std::string path;
  uintptr_t base = 0;
};

int find_torch_cpu(struct dl_phdr_info* info, size_t, void* data) {
  const char* name = info->dlpi_name;
  const char* suffix = "/libtorch_cpu.so";
  size_t n = std::strlen(name), m = std::strlen(suffix);
  if (n >= m && std::strcmp(name + n - m, suffix) == 0) {
    auto* found = static_cast<FoundLibrary*>(data);
    found->path = name;
    found->base = info->dlpi_addr;
    return 1;
  }
  return 0;
}

// Addresses of `wanted` (defined functions of the ELF's .symtab), relative to the load base.
std::string read_symtab(const std::string& path, std::unordered_map<std::string, uintptr_t>& wanted) {
  int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) return "cannot open " + path;
  struct stat st {};
  ::fstat(fd, &st);
  void* map = ::mmap(nullptr, st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map == MAP_FAILED) return "cannot map " + path;
  const auto* bytes = static_cast<const uint8_t*>(map);
  const auto* eh = reinterpret_cast<const Elf64_Ehdr*>(bytes);
  std::string err;
  if (std::memcmp(eh->e_ident, ELFMAG, SELFMAG) != 0 || eh->e_ident[EI_CLASS] != ELFCLASS64) {
    err = path + " is not a 64-bit ELF file";
  } else {
    const auto* sh = reinterpret_cast<const Elf64_Shdr*>(bytes + eh->e_shoff);
    const Elf64_Shdr* symtab = nullptr;
    for (int i = 0; i < eh->e_shnum; ++i)
      if (sh[i].sh_type == SHT_SYMTAB) symtab = &sh[i];
    if (symtab == nullptr) {
      err = path + " has no .symtab (a stripped torch build)";
    } else {
      const char* strtab = reinterpret_cast<const char*>(bytes + sh[symtab->sh_link].sh_offset);
      const auto* syms = reinterpret_cast<const Elf64_Sym*>(bytes + symtab->sh_offset);
      size_t count = symtab->sh_size / sizeof(Elf64_Sym);
      for (size_t i = 0; i < count; ++i) {
        const Elf64_Sym& s = syms[i];
        if (ELF64_ST_TYPE(s.st_info) != STT_FUNC || s.st_shndx == SHN_UNDEF || s.st_value == 0) continue;
        const char* name = strtab + s.st_name;
        if (name[0] != 'd' || std::strncmp(name, "dnnl_", 5) != 0) continue;
        auto it = wanted.find(name);
        if (it != wanted.end()) it->second = s.st_value;
      }
    }
  }
  ::munmap(map, st.st_size);
  return err;
}

Api* load_api() {
  auto* api = new Api();
  FoundLibrary lib;
  dl_iterate_phdr(find_torch_cpu, &lib);
  if (lib.path.empty()) {
    api->error = "libtorch_cpu.so is not loaded in this process";
    return api;
  }
  std::unordered_map<std::string, uintptr_t> wanted;
#define IQ_WANT(f) wanted[#f] = 0;
  IQ_DNNL_FUNCTIONS(IQ_WANT)
#undef IQ_WANT
  api->error = read_symtab(lib.path, wanted);
  if (!api->error.empty()) return api;
  for (auto& [name, offset] : wanted)
    if (offset == 0) {
      api->error = "oneDNN function " + name + " is not in " + lib.path + "'s symbol table";
      return api;
    }
#define IQ_BIND(f) api->f = reinterpret_cast<decltype(&::f)>(lib.base + wanted[#f]);
  IQ_DNNL_FUNCTIONS(IQ_BIND)
#undef IQ_BIND
  const dnnl_version_t* v = api->dnnl_version();
  if (v == nullptr || v->major != DNNL_VERSION_MAJOR || v->minor != DNNL_VERSION_MINOR) {
    api->error = "torch's oneDNN reports a version other than its headers (" + std::to_string(DNNL_VERSION_MAJOR) +
                 "." + std::to_string(DNNL_VERSION_MINOR) + ")";
    return api;
  }
  if (api->dnnl_engine_create(&api->engine, dnnl_cpu, 0) != dnnl_success ||
      api->dnnl_stream_create(&api->stream, api->engine, dnnl_stream_default_flags) != dnnl_success)
    api->error = "cannot create a oneDNN CPU engine and stream";
  return api;
}

Api& api() {
  static Api* instance = load_api();  // thread-safe, once; never freed (lives as long as torch)
  return *instance;
}

void check(dnnl_status_t status, const char* what) {
  TORCH_CHECK(status == dnnl_success, "inductor-quant oneDNN call failed: ", what, " (status ", int(status), ")");
}

dnnl_data_type_t dnnl_type(at::ScalarType t) {
  switch (t) {
    case at::kByte: return dnnl_u8;
    case at::kChar: return dnnl_s8;
    case at::kFloat: return dnnl_f32;
    case at::kBFloat16: return dnnl_bf16;
    case at::kInt: return dnnl_s32;
    default: TORCH_CHECK(false, "inductor-quant oneDNN kernels: unsupported dtype ", t);
  }
}

// ---- post-ops: torch's unary post-ops (the codes of kernels/native.py POST_OPS) -------------

struct Eltwise {
  dnnl_alg_kind_t alg = dnnl_alg_kind_undef;  // undef: no post-op
  float alpha = 0.f, beta = 0.f;
};

// The algorithm and constants torch's op uses for each (hardtanh passes its min and max,
// leaky_relu its slope as the first).
Eltwise eltwise(int64_t code, double min_value, double max_value) {
  switch (code) {
    case 0: return {};
    case 1: return {dnnl_eltwise_relu, 0.f, 0.f};
    case 2: return {dnnl_eltwise_clip, float(min_value), float(max_value)};
    case 3: return {dnnl_eltwise_hardswish, 1.f / 6.f, 0.5f};
    case 4: return {dnnl_eltwise_swish, 1.f, 0.f};
    case 5: return {dnnl_eltwise_relu, float(min_value), 0.f};  // leaky_relu: its negative slope
    case 6: return {dnnl_eltwise_tanh, 0.f, 0.f};
    case 7: return {dnnl_eltwise_gelu_erf, 0.f, 0.f};
    case 8: return {dnnl_eltwise_gelu_tanh, 0.f, 0.f};
    default: TORCH_CHECK(false, "inductor-quant oneDNN kernels: unknown post-op code ", code);
  }
}

// ---- one cached layer ---------------------------------------------------------------------

struct MemoryDesc {
  dnnl_memory_desc_t md = nullptr;
  ~MemoryDesc() {
    if (md) api().dnnl_memory_desc_destroy(md);
  }
};

dnnl_memory_desc_t make_md(at::IntArrayRef sizes, at::IntArrayRef strides, dnnl_data_type_t dt) {
  dnnl_memory_desc_t md = nullptr;
  dnnl_dims_t d{}, s{};
  for (size_t i = 0; i < sizes.size(); ++i) d[i] = sizes[i], s[i] = strides[i];
  check(api().dnnl_memory_desc_create_with_strides(&md, int(sizes.size()), d, dt, s), "memory_desc_create");
  return md;
}

dnnl_memory_desc_t scalar_md(dnnl_data_type_t dt, int64_t n = 1) {
  dnnl_memory_desc_t md = nullptr;
  dnnl_dims_t d{n}, s{1};
  check(api().dnnl_memory_desc_create_with_strides(&md, 1, d, dt, s), "memory_desc_create");
  return md;
}

// A layer's primitive and what it owns. `weight` and `weight_scales` are checked on every call
// through weak references: a freed and reallocated tensor at the same address is a new layer.
// The oneDNN memory objects a cached entry creates, destroyed with it.
struct OwnedMemories {
  std::vector<dnnl_memory_t> owned;
  ~OwnedMemories() {
    for (auto m : owned) api().dnnl_memory_destroy(m);
  }
  dnnl_memory_t memory(const_dnnl_memory_desc_t md, void* handle) {
    dnnl_memory_t m = nullptr;
    check(api().dnnl_memory_create(&m, md, api().engine, handle), "memory_create");
    owned.push_back(m);
    return m;
  }
};

struct Layer : OwnedMemories {
  dnnl_primitive_t primitive = nullptr;
  dnnl_memory_t src = nullptr, dst = nullptr, bias = nullptr, weights = nullptr;
  dnnl_memory_t src_scale_mem = nullptr, dst_scale_mem = nullptr, src_zp_mem = nullptr, dst_zp_mem = nullptr;
  dnnl_memory_t w_scales = nullptr;
  dnnl_memory_t addend = nullptr;  // a linear's binary `add` input (post-op 0), when it has one
  std::unique_ptr<uint8_t, void (*)(void*)> packed{nullptr, std::free};
  std::shared_ptr<void> shared_packed;  // a linear's weights, shared by its layers of every row count
  std::vector<float> weight_scale_values;
  c10::weak_intrusive_ptr<c10::StorageImpl> weight_storage{c10::intrusive_ptr<c10::StorageImpl>()};
  c10::weak_intrusive_ptr<c10::StorageImpl> scale_storage{c10::intrusive_ptr<c10::StorageImpl>()};
  bool src_scale = false, src_zp = false, dst_scale = false, dst_zp = false;  // runtime arguments taken
  std::mutex mutex;  // one call at a time: the memory objects' data handles are per call

  ~Layer() {
    if (primitive) api().dnnl_primitive_destroy(primitive);
  }
  // After the primitive and the weights: the weight scales (copied), the memory objects a call
  // fills in, which runtime arguments it takes, and the weak references that identify the layer.
  void bind(const_dnnl_memory_desc_t src_md, const_dnnl_memory_desc_t dst_md, const_dnnl_memory_desc_t bias_md,
            const at::Tensor& w, const at::Tensor& w_scale, bool takes_src_scale, bool takes_src_zp,
            bool takes_dst_scale, bool takes_dst_zp) {
    at::Tensor scales = w_scale.to(at::kFloat).contiguous();
    weight_scale_values.assign(scales.data_ptr<float>(), scales.data_ptr<float>() + scales.numel());
    MemoryDesc f1, s1, fw;
    f1.md = scalar_md(dnnl_f32);
    s1.md = scalar_md(dnnl_s32);
    fw.md = scalar_md(dnnl_f32, int64_t(weight_scale_values.size()));
    w_scales = memory(fw.md, weight_scale_values.data());
    src_scale_mem = memory(f1.md, DNNL_MEMORY_NONE);
    dst_scale_mem = memory(f1.md, DNNL_MEMORY_NONE);
    src_zp_mem = memory(s1.md, DNNL_MEMORY_NONE);
    dst_zp_mem = memory(s1.md, DNNL_MEMORY_NONE);
    src = memory(src_md, DNNL_MEMORY_NONE);
    dst = memory(dst_md, DNNL_MEMORY_NONE);
    if (bias_md != nullptr) bias = memory(bias_md, DNNL_MEMORY_NONE);
    src_scale = takes_src_scale, src_zp = takes_src_zp, dst_scale = takes_dst_scale, dst_zp = takes_dst_zp;
    weight_storage = c10::weak_intrusive_ptr<c10::StorageImpl>(w.storage().getWeakStorageImpl());
    scale_storage = c10::weak_intrusive_ptr<c10::StorageImpl>(w_scale.storage().getWeakStorageImpl());
  }

  // One call: the tensors' pointers and the quantization values into the kept memory objects,
  // then execute.
  void run(const void* src_ptr, void* dst_ptr, const void* bias_ptr, float xs, int32_t xz, float os, int32_t oz,
           const char* what, const void* addend_ptr = nullptr) {
    auto& a = api();
    std::lock_guard<std::mutex> guard(mutex);
    check(a.dnnl_memory_set_data_handle(src, const_cast<void*>(src_ptr)), "src");
    check(a.dnnl_memory_set_data_handle(dst, dst_ptr), "dst");
    check(a.dnnl_memory_set_data_handle(src_scale_mem, &xs), "src scale");
    check(a.dnnl_memory_set_data_handle(src_zp_mem, &xz), "src zp");
    check(a.dnnl_memory_set_data_handle(dst_scale_mem, &os), "dst scale");
    check(a.dnnl_memory_set_data_handle(dst_zp_mem, &oz), "dst zp");
    dnnl_exec_arg_t args[11];
    int n = 0;
    args[n++] = {DNNL_ARG_SRC, src};
    args[n++] = {DNNL_ARG_WEIGHTS, weights};
    args[n++] = {DNNL_ARG_DST, dst};
    args[n++] = {DNNL_ARG_ATTR_SCALES | DNNL_ARG_WEIGHTS, w_scales};
    if (src_scale) args[n++] = {DNNL_ARG_ATTR_SCALES | DNNL_ARG_SRC, src_scale_mem};
    if (src_zp) args[n++] = {DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_SRC, src_zp_mem};
    if (dst_scale) args[n++] = {DNNL_ARG_ATTR_SCALES | DNNL_ARG_DST, dst_scale_mem};
    if (dst_zp) args[n++] = {DNNL_ARG_ATTR_ZERO_POINTS | DNNL_ARG_DST, dst_zp_mem};
    if (bias_ptr != nullptr) {
      check(a.dnnl_memory_set_data_handle(bias, const_cast<void*>(bias_ptr)), "bias");
      args[n++] = {DNNL_ARG_BIAS, bias};
    }
    if (addend != nullptr) {
      check(a.dnnl_memory_set_data_handle(addend, const_cast<void*>(addend_ptr)), "addend");
      args[n++] = {DNNL_ARG_ATTR_MULTIPLE_POST_OP(0) | DNNL_ARG_SRC_1, addend};
    }
    check(a.dnnl_primitive_execute(primitive, a.stream, n, args), what);
  }
  bool still_describes(const at::Tensor& w, const at::Tensor& w_scale) const {
    return weight_storage.lock().get() == w.storage().unsafeGetStorageImpl() &&
           scale_storage.lock().get() == w_scale.storage().unsafeGetStorageImpl();
  }
};

struct KeyHash {
  size_t operator()(const std::vector<int64_t>& k) const {
    size_t h = 1469598103934665603ull;
    for (int64_t v : k) h = (h ^ size_t(v)) * 1099511628211ull;
    return h;
  }
};

std::mutex cache_mutex;
std::unordered_map<std::vector<int64_t>, std::shared_ptr<Layer>, KeyHash> cache;

int64_t bits(double v) {
  float f = float(v);
  int32_t i;
  std::memcpy(&i, &f, sizeof(i));
  return i;
}

// ---- convolution ----------------------------------------------------------------------------

struct ConvCall {
  const at::Tensor& x;
  const at::Tensor& w;
  const at::Tensor& w_scale;
  const c10::optional<at::Tensor>& bias;
  at::IntArrayRef stride, padding, dilation;
  int64_t groups;
  at::ScalarType out_dtype;
  bool quantized_out;
  // which runtime quantization arguments the primitive takes: as torch's op, only those that
  // differ from identity (a runtime zero point costs oneDNN compensation work on every call)
  bool src_scale, src_zp, dst_scale, dst_zp;
  Eltwise post;
  std::vector<int64_t> out_sizes;
  const at::Tensor* accum = nullptr;  // the residual summed in place (oneDNN's `sum`): also the output
  float sum_scale = 1.f;
  int32_t sum_zp = 0;
};

std::vector<int64_t> conv_key(const ConvCall& c) {
  std::vector<int64_t> k{int64_t(c.x.scalar_type()), int64_t(c.out_dtype), c.groups, c.quantized_out,
                         c.src_scale, c.src_zp, c.dst_scale, c.dst_zp,
                         c.bias.has_value() ? int64_t(c.bias->scalar_type()) : -1, int64_t(c.post.alg),
                         bits(c.post.alpha), bits(c.post.beta), at::get_num_threads(),
                         int64_t(reinterpret_cast<uintptr_t>(c.w.storage().unsafeGetStorageImpl())),
                         c.w.storage_offset(),
                         int64_t(reinterpret_cast<uintptr_t>(c.w_scale.storage().unsafeGetStorageImpl())),
                         c.w_scale.storage_offset()};
  k.push_back(c.accum != nullptr);
  if (c.accum != nullptr) {
    k.push_back(bits(c.sum_scale)), k.push_back(c.sum_zp);
    for (auto v : c.accum->strides()) k.push_back(v);
  }
  for (auto v : c.x.sizes()) k.push_back(v);
  for (auto v : c.x.strides()) k.push_back(v);
  for (auto v : c.w.sizes()) k.push_back(v);
  for (auto r : {c.stride, c.padding, c.dilation})
    for (auto v : r) k.push_back(v);
  return k;
}

std::shared_ptr<Layer> build_conv(const ConvCall& c) {
  auto& a = api();
  auto layer = std::make_shared<Layer>();
  const int64_t g = c.groups, oc = c.w.size(0), ndims = c.x.dim();
  const int spatial = int(ndims - 2);

  MemoryDesc src, wei_any, wei_plain, bias, dst;
  src.md = make_md(c.x.sizes(), c.x.strides(), dnnl_type(c.x.scalar_type()));
  // output in channels-last, as torch's op allocates it
  if (c.accum != nullptr) {
    dst.md = make_md(c.accum->sizes(), c.accum->strides(), dnnl_type(c.out_dtype));
  } else {
    at::Tensor out_like = at::empty(c.out_sizes, c.x.options().dtype(c.out_dtype),
                                    ndims == 4 ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::ChannelsLast3d);
    dst.md = make_md(out_like.sizes(), out_like.strides(), dnnl_type(c.out_dtype));
  }
  std::vector<int64_t> wdims;
  if (g > 1) wdims.push_back(g), wdims.push_back(oc / g);
  else wdims.push_back(oc);
  for (int64_t i = 1; i < c.w.dim(); ++i) wdims.push_back(c.w.size(i));
  {
    dnnl_dims_t d{};
    for (size_t i = 0; i < wdims.size(); ++i) d[i] = wdims[i];
    check(a.dnnl_memory_desc_create_with_tag(&wei_any.md, int(wdims.size()), d, dnnl_s8, dnnl_format_tag_any),
          "weights md");
    std::vector<int64_t> plain_strides(wdims.size());
    int64_t s = 1;
    for (int64_t i = int64_t(wdims.size()) - 1; i >= 0; --i) plain_strides[i] = s, s *= wdims[i];
    wei_plain.md = make_md(wdims, plain_strides, dnnl_s8);
  }
  if (c.bias.has_value()) bias.md = scalar_md(dnnl_type(c.bias->scalar_type()), oc);

  dnnl_primitive_attr_t attr = nullptr;
  dnnl_post_ops_t ops = nullptr;
  check(a.dnnl_primitive_attr_create(&attr), "attr_create");
  if (c.src_scale) check(a.dnnl_primitive_attr_set_scales_mask(attr, DNNL_ARG_SRC, 0), "src scales");
  check(a.dnnl_primitive_attr_set_scales_mask(attr, DNNL_ARG_WEIGHTS, c.w_scale.numel() <= 1 ? 0 : g > 1 ? 3 : 1),
        "weight scales");
  if (c.src_zp) check(a.dnnl_primitive_attr_set_zero_points_mask(attr, DNNL_ARG_SRC, 0), "src zero point");
  if (c.dst_scale) check(a.dnnl_primitive_attr_set_scales_mask(attr, DNNL_ARG_DST, 0), "dst scales");
  if (c.dst_zp) check(a.dnnl_primitive_attr_set_zero_points_mask(attr, DNNL_ARG_DST, 0), "dst zero point");
  check(a.dnnl_post_ops_create(&ops), "post_ops_create");
  if (c.accum != nullptr) check(a.dnnl_post_ops_append_sum(ops, c.sum_scale, c.sum_zp, dnnl_data_type_undef), "sum");
  if (c.post.alg != dnnl_alg_kind_undef)
    check(a.dnnl_post_ops_append_eltwise(ops, c.post.alg, c.post.alpha, c.post.beta), "eltwise");
  check(a.dnnl_primitive_attr_set_post_ops(attr, ops), "set_post_ops");

  dnnl_dims_t strides{}, dilates{}, pad_l{}, pad_r{};
  for (int i = 0; i < spatial; ++i) {
    int64_t k = c.w.size(2 + i), d = c.dilation[i], in = c.x.size(2 + i), out = c.out_sizes[2 + i];
    strides[i] = c.stride[i];
    dilates[i] = d - 1;
    pad_l[i] = c.padding[i];
    pad_r[i] = (out - 1) * c.stride[i] + (k - 1) * d + 1 - in - c.padding[i];
  }
  dnnl_primitive_desc_t pd = nullptr;
  dnnl_status_t st = a.dnnl_convolution_forward_primitive_desc_create(
      &pd, a.engine, dnnl_forward_inference, dnnl_convolution_direct, src.md, wei_any.md, bias.md, dst.md, strides,
      dilates, pad_l, pad_r, attr);
  a.dnnl_post_ops_destroy(ops);
  a.dnnl_primitive_attr_destroy(attr);
  check(st, "convolution primitive descriptor");
  st = a.dnnl_primitive_create(&layer->primitive, pd);
  const_dnnl_memory_desc_t wei_md = a.dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0);

  // weights: reorder the plain int8 tensor once into the primitive's layout (with the
  // compensation oneDNN adds for a nonzero source zero point)
  size_t bytes = a.dnnl_memory_desc_get_size(wei_md);
  layer->packed.reset(static_cast<uint8_t*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64)));
  layer->weights = layer->memory(wei_md, layer->packed.get());
  at::Tensor w_plain = c.w.contiguous();
  dnnl_memory_t plain = layer->memory(wei_plain.md, w_plain.data_ptr());
  dnnl_primitive_desc_t rpd = nullptr;
  check(a.dnnl_reorder_primitive_desc_create(&rpd, wei_plain.md, a.engine, wei_md, a.engine, nullptr), "reorder pd");
  dnnl_primitive_t reorder = nullptr;
  check(a.dnnl_primitive_create(&reorder, rpd), "reorder");
  dnnl_exec_arg_t rargs[2] = {{DNNL_ARG_FROM, plain}, {DNNL_ARG_TO, layer->weights}};
  check(a.dnnl_primitive_execute(reorder, a.stream, 2, rargs), "reorder execute");
  check(a.dnnl_stream_wait(a.stream), "stream wait");
  a.dnnl_primitive_destroy(reorder);
  a.dnnl_primitive_desc_destroy(rpd);
  a.dnnl_primitive_desc_destroy(pd);
  check(st, "convolution primitive");

  layer->bind(src.md, dst.md, bias.md, c.w, c.w_scale, c.src_scale, c.src_zp, c.dst_scale, c.dst_zp);
  return layer;
}

std::shared_ptr<Layer> conv_layer(const ConvCall& c) {
  auto key = conv_key(c);
  std::lock_guard<std::mutex> guard(cache_mutex);
  auto it = cache.find(key);
  if (it != cache.end() && it->second->still_describes(c.w, c.w_scale)) return it->second;
  for (auto e = cache.begin(); e != cache.end();)  // layers whose weights are gone
    e = e->second->weight_storage.expired() ? cache.erase(e) : std::next(e);
  auto layer = build_conv(c);
  cache[std::move(key)] = layer;
  return layer;
}

std::vector<int64_t> conv_out_sizes(const at::Tensor& x, const at::Tensor& w, at::IntArrayRef stride,
                                    at::IntArrayRef padding, at::IntArrayRef dilation) {
  std::vector<int64_t> out{x.size(0), w.size(0)};
  for (int64_t i = 2; i < x.dim(); ++i) {
    int64_t eff = (w.size(i) - 1) * dilation[i - 2] + 1;
    out.push_back((x.size(i) + 2 * padding[i - 2] - eff) / stride[i - 2] + 1);
  }
  return out;
}

// The geometry of a 2-D conv call, from its per-dimension scalars.
struct Geometry2d {
  int64_t stride_v[2], padding_v[2], dilation_v[2];
  at::IntArrayRef stride() const { return {stride_v, 2}; }
  at::IntArrayRef padding() const { return {padding_v, 2}; }
  at::IntArrayRef dilation() const { return {dilation_v, 2}; }
};

// Checks the call, gets (or builds) its layer, executes into `out` (the accumulator for a sum).
void run_conv2d(const at::Tensor& x_in, double x_scale, int64_t x_zp, const at::Tensor& w, const at::Tensor& w_scale,
                const c10::optional<at::Tensor>& bias_in, const Geometry2d& geom, int64_t groups, double out_scale,
                int64_t out_zp, at::ScalarType odt, const Eltwise& post, const at::Tensor* accum, double sum_scale,
                int64_t sum_zp, at::Tensor& out) {
  auto& a = api();
  TORCH_CHECK(a.error.empty(), "inductor-quant oneDNN kernels are unavailable: ", a.error);
  TORCH_CHECK(x_in.dim() == 4, "qconv2d: a 4-D input (N, C, H, W), got ", x_in.dim(), " dims");
  const at::Tensor x = x_in.contiguous(at::MemoryFormat::ChannelsLast);
  TORCH_CHECK(x.scalar_type() == at::kByte, "qconv2d: uint8 activations (as torch's op), got ", x.scalar_type());
  TORCH_CHECK(w.scalar_type() == at::kChar && w.dim() == x.dim(), "qconv2d: int8 weight of the input's rank");
  // torch's op takes the bias as f32 whatever its dtype
  const c10::optional<at::Tensor> bias =
      bias_in.has_value() && bias_in->scalar_type() != at::kFloat ? c10::optional<at::Tensor>(bias_in->to(at::kFloat))
                                                                  : bias_in;
  bool quantized_out = odt == at::kByte || odt == at::kChar;
  float xs = float(x_scale), os = float(out_scale);
  int32_t xz = int32_t(x_zp), oz = int32_t(out_zp);
  TORCH_CHECK(quantized_out || (os == 1.f && oz == 0), "qconv2d: a float output takes output scale 1 and zero point 0");
  ConvCall c{x, w, w_scale, bias, geom.stride(), geom.padding(), geom.dilation(), groups, odt, quantized_out,
             xs != 1.f, xz != 0, os != 1.f, oz != 0, post,
             conv_out_sizes(x, w, geom.stride(), geom.padding(), geom.dilation()), accum, float(sum_scale),
             int32_t(sum_zp)};
  if (accum != nullptr) {
    TORCH_CHECK(accum->sizes() == at::IntArrayRef(c.out_sizes) && accum->scalar_type() == odt,
                "qconv2d_sum_: the accumulator must have the conv output's shape ", at::IntArrayRef(c.out_sizes),
                " and the output dtype ", odt, "; got ", accum->sizes(), " ", accum->scalar_type());
    TORCH_CHECK(quantized_out || (sum_scale == 1.0 && sum_zp == 0),
                "qconv2d_sum_: a float accumulator takes scale 1 and zero point 0");
  }
  auto layer = conv_layer(c);
  if (accum == nullptr) out = at::empty(c.out_sizes, x.options().dtype(odt), at::MemoryFormat::ChannelsLast);
  layer->run(x.const_data_ptr(), out.data_ptr(), bias.has_value() ? bias->const_data_ptr() : nullptr, xs, xz, os, oz,
             "convolution execute");
}

at::Tensor qconv2d(const at::Tensor& x, double x_scale, int64_t x_zp, const at::Tensor& w, const at::Tensor& w_scale,
                   const c10::optional<at::Tensor>& bias, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                   int64_t pad_w, int64_t dilation_h, int64_t dilation_w, int64_t groups, double out_scale,
                   int64_t out_zp, c10::optional<at::ScalarType> out_dtype, int64_t post_op, double post_alpha,
                   double post_beta) {
  at::Tensor out;
  run_conv2d(x, x_scale, x_zp, w, w_scale, bias, {{stride_h, stride_w}, {pad_h, pad_w}, {dilation_h, dilation_w}},
             groups, out_scale, out_zp, out_dtype.value_or(at::kFloat), eltwise(post_op, post_alpha, post_beta),
             nullptr, 1.0, 0, out);
  return out;
}

// The conv with oneDNN's `sum` post-op: out = post(conv(x) + accum_scale * (accum - accum_zp)),
// requantized, written over `accum` in place (no copy: torch's op returns a clone).
void qconv2d_sum_(const at::Tensor& x, double x_scale, int64_t x_zp, const at::Tensor& w, const at::Tensor& w_scale,
                  const c10::optional<at::Tensor>& bias, int64_t stride_h, int64_t stride_w, int64_t pad_h,
                  int64_t pad_w, int64_t dilation_h, int64_t dilation_w, int64_t groups, double out_scale,
                  int64_t out_zp, c10::optional<at::ScalarType> out_dtype, at::Tensor& accum, double accum_scale,
                  int64_t accum_zp, int64_t post_op, double post_alpha, double post_beta) {
  run_conv2d(x, x_scale, x_zp, w, w_scale, bias, {{stride_h, stride_w}, {pad_h, pad_w}, {dilation_h, dilation_w}},
             groups, out_scale, out_zp, out_dtype.value_or(at::kFloat), eltwise(post_op, post_alpha, post_beta),
             &accum, accum_scale, accum_zp, accum);
}

// ---- linear ---------------------------------------------------------------------------------
//
// As torch's qlinear: the input flattened to [M, K], a oneDNN matmul with the weight as [K, N] in
// the blocked layout torch's prepack picks (queried for M = the row count of a 2-D example input,
// else 1, with a source zero point, s32 out), the bias as [1, N] in its own dtype.

struct PackedWeights {
  std::unique_ptr<uint8_t, void (*)(void*)> data{nullptr, std::free};
  dnnl_memory_desc_t md = nullptr;
  c10::weak_intrusive_ptr<c10::StorageImpl> storage{c10::intrusive_ptr<c10::StorageImpl>()};
  ~PackedWeights() {
    if (md) api().dnnl_memory_desc_destroy(md);
  }
};

std::mutex weights_mutex;
std::unordered_map<std::vector<int64_t>, std::shared_ptr<PackedWeights>, KeyHash> linear_weights;

dnnl_memory_desc_t plain_md(std::vector<int64_t> dims, dnnl_data_type_t dt) {
  std::vector<int64_t> strides(dims.size());
  int64_t s = 1;
  for (int64_t i = int64_t(dims.size()) - 1; i >= 0; --i) strides[i] = s, s *= dims[i];
  return make_md(dims, strides, dt);
}

// Weight decompression (a weight-only linear): the int8 weights are converted in registers to
// the activations' type and the product is computed in it (bf16 with bf16 activations, f32 with f32).
dnnl_fpmath_mode_t decompression_mode(dnnl_data_type_t src) {
  return src == dnnl_bf16 ? dnnl_fpmath_mode_bf16 : dnnl_fpmath_mode_strict;
}

// The layout is queried for u8 activations whatever the call's are, as torch's prepack does: a
// query for s8 gives a layout whose s8 compensation is wrong with a source zero point from N = 96
// on (AMX Xeon; tests/kernels/test_native.py). A weight-only linear (float activations: `woq`)
// queries with its own activation type and weight decompression on.
std::shared_ptr<PackedWeights> pack_linear(const at::Tensor& w, int64_t m_hint, dnnl_data_type_t woq = dnnl_data_type_undef) {
  auto& a = api();
  const int64_t n = w.size(0), k = w.size(1);
  std::vector<int64_t> key{int64_t(reinterpret_cast<uintptr_t>(w.storage().unsafeGetStorageImpl())),
                           w.storage_offset(), n, k, m_hint, int64_t(woq)};
  std::lock_guard<std::mutex> guard(weights_mutex);
  auto it = linear_weights.find(key);
  if (it != linear_weights.end() && it->second->storage.lock().get() == w.storage().unsafeGetStorageImpl())
    return it->second;
  for (auto e = linear_weights.begin(); e != linear_weights.end();)
    e = e->second->storage.expired() ? linear_weights.erase(e) : std::next(e);

  const bool weight_only = woq != dnnl_data_type_undef;
  MemoryDesc src, wei_any, dst, wei_plain;
  src.md = plain_md({m_hint, k}, weight_only ? woq : dnnl_u8);
  dst.md = plain_md({m_hint, n}, weight_only ? woq : dnnl_s32);
  {
    dnnl_dims_t d{k, n};
    check(a.dnnl_memory_desc_create_with_tag(&wei_any.md, 2, d, dnnl_s8, dnnl_format_tag_any), "weights md");
  }
  dnnl_primitive_attr_t attr = nullptr;
  check(a.dnnl_primitive_attr_create(&attr), "attr_create");
  if (weight_only) {
    check(a.dnnl_primitive_attr_set_fpmath_mode_v2(attr, decompression_mode(woq), 1), "fpmath mode");
    check(a.dnnl_primitive_attr_set_scales_mask(attr, DNNL_ARG_WEIGHTS, 2), "weight scales");
  } else {
    check(a.dnnl_primitive_attr_set_zero_points_mask(attr, DNNL_ARG_SRC, 0), "src zero point");
  }
  dnnl_primitive_desc_t pd = nullptr;
  dnnl_status_t st = a.dnnl_matmul_primitive_desc_create(&pd, a.engine, src.md, wei_any.md, nullptr, dst.md, attr);
  a.dnnl_primitive_attr_destroy(attr);
  check(st, "matmul primitive descriptor (weight layout)");
  auto packed = std::make_shared<PackedWeights>();
  check(a.dnnl_memory_desc_clone(&packed->md, a.dnnl_primitive_desc_query_md(pd, dnnl_query_weights_md, 0)), "clone");
  a.dnnl_primitive_desc_destroy(pd);

  // the [N, K] tensor read as [K, N]
  at::Tensor w_plain = w.contiguous();
  wei_plain.md = make_md({k, n}, {1, k}, dnnl_s8);
  size_t bytes = a.dnnl_memory_desc_get_size(packed->md);
  packed->data.reset(static_cast<uint8_t*>(std::aligned_alloc(64, (bytes + 63) / 64 * 64)));
  dnnl_memory_t from = nullptr, to = nullptr;
  check(a.dnnl_memory_create(&from, wei_plain.md, a.engine, w_plain.data_ptr()), "memory_create");
  check(a.dnnl_memory_create(&to, packed->md, a.engine, packed->data.get()), "memory_create");
  dnnl_primitive_desc_t rpd = nullptr;
  dnnl_primitive_t reorder = nullptr;
  check(a.dnnl_reorder_primitive_desc_create(&rpd, wei_plain.md, a.engine, packed->md, a.engine, nullptr), "reorder pd");
  check(a.dnnl_primitive_create(&reorder, rpd), "reorder");
  dnnl_exec_arg_t rargs[2] = {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}};
  check(a.dnnl_primitive_execute(reorder, a.stream, 2, rargs), "reorder execute");
  check(a.dnnl_stream_wait(a.stream), "stream wait");
  a.dnnl_primitive_destroy(reorder);
  a.dnnl_primitive_desc_destroy(rpd);
  a.dnnl_memory_destroy(from);
  a.dnnl_memory_destroy(to);
  packed->storage = c10::weak_intrusive_ptr<c10::StorageImpl>(w.storage().getWeakStorageImpl());
  linear_weights[std::move(key)] = packed;
  return packed;
}

struct LinearCall {
  int64_t m, k, n, m_hint;
  at::ScalarType x_dtype, out_dtype;
  c10::optional<at::ScalarType> bias_dtype;
  bool src_scale, src_zp, dst_scale, dst_zp;
  int64_t w_scales;  // how many
  Eltwise post;
  bool weight_only = false;  // float activations and output: the int8 weights decompressed
  bool sum = false;          // oneDNN's `sum`: the output buffer holds a residual, accumulated in place
  float sum_scale = 1.f;
  int32_t sum_zp = 0;
  c10::optional<at::ScalarType> add_dtype;  // oneDNN's binary `add` of a float [M, N] tensor: a new output
};

std::shared_ptr<Layer> build_linear(const LinearCall& c, const at::Tensor& w, const at::Tensor& w_scale) {
  auto& a = api();
  auto layer = std::make_shared<Layer>();
  auto packed = pack_linear(w, c.m_hint, c.weight_only ? dnnl_type(c.x_dtype) : dnnl_data_type_undef);
  layer->shared_packed = packed;
  MemoryDesc src, dst, bias;
  src.md = plain_md({c.m, c.k}, dnnl_type(c.x_dtype));
  dst.md = plain_md({c.m, c.n}, dnnl_type(c.out_dtype));
  if (c.bias_dtype.has_value()) bias.md = plain_md({1, c.n}, dnnl_type(*c.bias_dtype));
  dnnl_primitive_attr_t attr = nullptr;
  dnnl_post_ops_t ops = nullptr;
  check(a.dnnl_primitive_attr_create(&attr), "attr_create");
  if (c.weight_only)
    check(a.dnnl_primitive_attr_set_fpmath_mode_v2(attr, decompression_mode(dnnl_type(c.x_dtype)), 1), "fpmath mode");
  if (c.src_scale) check(a.dnnl_primitive_attr_set_scales_mask(attr, DNNL_ARG_SRC, 0), "src scales");
  check(a.dnnl_primitive_attr_set_scales_mask(attr, DNNL_ARG_WEIGHTS, c.w_scales > 1 ? 2 : 0), "weight scales");
  if (c.src_zp) check(a.dnnl_primitive_attr_set_zero_points_mask(attr, DNNL_ARG_SRC, 0), "src zero point");
  if (c.dst_scale) check(a.dnnl_primitive_attr_set_scales_mask(attr, DNNL_ARG_DST, 0), "dst scales");
  if (c.dst_zp) check(a.dnnl_primitive_attr_set_zero_points_mask(attr, DNNL_ARG_DST, 0), "dst zero point");
  check(a.dnnl_post_ops_create(&ops), "post_ops_create");
  if (c.sum) check(a.dnnl_post_ops_append_sum(ops, c.sum_scale, c.sum_zp, dnnl_data_type_undef), "sum");
  MemoryDesc addend;
  if (c.add_dtype.has_value()) {
    addend.md = plain_md({c.m, c.n}, dnnl_type(*c.add_dtype));
    check(a.dnnl_post_ops_append_binary(ops, dnnl_binary_add, addend.md), "binary add");
  }
  if (c.post.alg != dnnl_alg_kind_undef)
    check(a.dnnl_post_ops_append_eltwise(ops, c.post.alg, c.post.alpha, c.post.beta), "eltwise");
  check(a.dnnl_primitive_attr_set_post_ops(attr, ops), "set_post_ops");
  dnnl_primitive_desc_t pd = nullptr;
  dnnl_status_t st = a.dnnl_matmul_primitive_desc_create(&pd, a.engine, src.md, packed->md, bias.md, dst.md, attr);
  a.dnnl_post_ops_destroy(ops);
  a.dnnl_primitive_attr_destroy(attr);
  check(st, "matmul primitive descriptor");
  st = a.dnnl_primitive_create(&layer->primitive, pd);
  a.dnnl_primitive_desc_destroy(pd);
  check(st, "matmul primitive");

  layer->weights = layer->memory(packed->md, packed->data.get());
  layer->bind(src.md, dst.md, bias.md, w, w_scale, c.src_scale, c.src_zp, c.dst_scale, c.dst_zp);
  if (addend.md != nullptr) layer->addend = layer->memory(addend.md, DNNL_MEMORY_NONE);
  return layer;
}

std::shared_ptr<Layer> linear_layer(const LinearCall& c, const at::Tensor& w, const at::Tensor& w_scale) {
  std::vector<int64_t> key{-1,  // not a conv key
                           c.m, c.k, c.n, c.m_hint, int64_t(c.x_dtype), int64_t(c.out_dtype),
                           c.bias_dtype.has_value() ? int64_t(*c.bias_dtype) : -1, c.src_scale, c.src_zp, c.dst_scale,
                           c.dst_zp, c.w_scales, int64_t(c.post.alg), bits(c.post.alpha), bits(c.post.beta), c.weight_only,
                           c.sum, bits(c.sum_scale), c.sum_zp,
                           c.add_dtype.has_value() ? int64_t(*c.add_dtype) : -1, at::get_num_threads(),
                           int64_t(reinterpret_cast<uintptr_t>(w.storage().unsafeGetStorageImpl())), w.storage_offset(),
                           int64_t(reinterpret_cast<uintptr_t>(w_scale.storage().unsafeGetStorageImpl())),
                           w_scale.storage_offset()};
  std::lock_guard<std::mutex> guard(cache_mutex);
  auto it = cache.find(key);
  if (it != cache.end() && it->second->still_describes(w, w_scale)) return it->second;
  for (auto e = cache.begin(); e != cache.end();)
    e = e->second->weight_storage.expired() ? cache.erase(e) : std::next(e);
  auto layer = build_linear(c, w, w_scale);
  cache[std::move(key)] = layer;
  return layer;
}

// Checks the call, gets (or builds) its layer, executes into `out` (the accumulator for a sum,
// which must be the output's size, dtype and contiguous: it is written as the [M, N] output).
void run_linear(const at::Tensor& x_in, double x_scale, int64_t x_zp, const at::Tensor& w, const at::Tensor& w_scale,
                const c10::optional<at::Tensor>& bias, int64_t m_hint, double out_scale, int64_t out_zp,
                at::ScalarType odt, const Eltwise& post, const at::Tensor* accum, double sum_scale, int64_t sum_zp,
                at::Tensor& out, const at::Tensor* addend_in = nullptr) {
  auto& a = api();
  TORCH_CHECK(a.error.empty(), "inductor-quant oneDNN kernels are unavailable: ", a.error);
  TORCH_CHECK(x_in.scalar_type() == at::kByte || x_in.scalar_type() == at::kChar,
              "qlinear: uint8 or int8 activations, got ", x_in.scalar_type());
  TORCH_CHECK(w.scalar_type() == at::kChar && w.dim() == 2 && x_in.size(-1) == w.size(1),
              "qlinear: an int8 [out, in] weight whose in matches the input's last dim");
  const int64_t k = w.size(1), n = w.size(0);
  const at::Tensor x = x_in.reshape({-1, k}).contiguous();
  bool quantized_out = odt == at::kByte || odt == at::kChar;
  float xs = float(x_scale), os = float(out_scale);
  int32_t xz = int32_t(x_zp), oz = int32_t(out_zp);
  TORCH_CHECK(quantized_out || (os == 1.f && oz == 0), "qlinear: a float output takes output scale 1 and zero point 0");
  std::vector<int64_t> out_sizes(x_in.sizes().begin(), x_in.sizes().end());
  out_sizes.back() = n;
  if (accum != nullptr) {
    TORCH_CHECK(accum->sizes() == at::IntArrayRef(out_sizes) && accum->scalar_type() == odt && accum->is_contiguous(),
                "qlinear_sum_: the accumulator must be contiguous, of the linear output's shape ",
                at::IntArrayRef(out_sizes), " and the output dtype ", odt, "; got ", accum->sizes(), " ",
                accum->scalar_type(), accum->is_contiguous() ? "" : " (not contiguous)");
    TORCH_CHECK(quantized_out || (sum_scale == 1.0 && sum_zp == 0),
                "qlinear_sum_: a float accumulator takes scale 1 and zero point 0");
  } else {
    out = at::empty(out_sizes, x.options().dtype(odt));
  }
  at::Tensor addend;
  if (addend_in != nullptr) {
    TORCH_CHECK(addend_in->sizes() == at::IntArrayRef(out_sizes) &&
                    (addend_in->scalar_type() == at::kFloat || addend_in->scalar_type() == at::kBFloat16),
                "qlinear_add: the addend must be float32 or bfloat16 of the linear output's shape ",
                at::IntArrayRef(out_sizes), "; got ", addend_in->sizes(), " ", addend_in->scalar_type());
    addend = addend_in->reshape({-1, n}).contiguous();
  }
  if (x.size(0) == 0) return;
  LinearCall c{x.size(0), k, n, m_hint, x.scalar_type(), odt,
               bias.has_value() ? c10::optional<at::ScalarType>(bias->scalar_type()) : c10::nullopt,
               xs != 1.f, xz != 0, os != 1.f, oz != 0, w_scale.numel(), post, false,
               accum != nullptr, float(sum_scale), int32_t(sum_zp),
               addend.defined() ? c10::optional<at::ScalarType>(addend.scalar_type()) : c10::nullopt};
  auto layer = linear_layer(c, w, w_scale);
  const c10::optional<at::Tensor> b = bias.has_value() ? c10::optional<at::Tensor>(bias->contiguous()) : bias;
  layer->run(x.const_data_ptr(), out.data_ptr(), b.has_value() ? b->const_data_ptr() : nullptr, xs, xz, os, oz,
             "matmul execute", addend.defined() ? addend.const_data_ptr() : nullptr);
}

at::Tensor qlinear(const at::Tensor& x, double x_scale, int64_t x_zp, const at::Tensor& w, const at::Tensor& w_scale,
                   const c10::optional<at::Tensor>& bias, int64_t m_hint, double out_scale, int64_t out_zp,
                   c10::optional<at::ScalarType> out_dtype, int64_t post_op, double post_alpha, double post_beta) {
  at::Tensor out;
  run_linear(x, x_scale, x_zp, w, w_scale, bias, m_hint, out_scale, out_zp, out_dtype.value_or(at::kFloat),
             eltwise(post_op, post_alpha, post_beta), nullptr, 1.0, 0, out);
  return out;
}

// The linear with oneDNN's `sum` post-op: out = post(linear(x) + accum_scale * (accum - accum_zp)),
// requantized, written over `accum` in place (torch's `qlinear_pointwise.binary` with `sum` writes
// into its extra input too, through ATen's layer on every call).
void qlinear_sum_(const at::Tensor& x, double x_scale, int64_t x_zp, const at::Tensor& w, const at::Tensor& w_scale,
                  const c10::optional<at::Tensor>& bias, int64_t m_hint, double out_scale, int64_t out_zp,
                  c10::optional<at::ScalarType> out_dtype, at::Tensor& accum, double accum_scale, int64_t accum_zp,
                  int64_t post_op, double post_alpha, double post_beta) {
  run_linear(x, x_scale, x_zp, w, w_scale, bias, m_hint, out_scale, out_zp, out_dtype.value_or(at::kFloat),
             eltwise(post_op, post_alpha, post_beta), &accum, accum_scale, accum_zp, accum);
}

// The linear with oneDNN's binary `add` post-op: post(linear(x) + other), requantized, in a new
// output (torch's `qlinear_pointwise.binary` with `add`: a float `other` added as it is).
at::Tensor qlinear_add(const at::Tensor& x, double x_scale, int64_t x_zp, const at::Tensor& w, const at::Tensor& w_scale,
                       const c10::optional<at::Tensor>& bias, int64_t m_hint, double out_scale, int64_t out_zp,
                       c10::optional<at::ScalarType> out_dtype, const at::Tensor& other, int64_t post_op,
                       double post_alpha, double post_beta) {
  at::Tensor out;
  run_linear(x, x_scale, x_zp, w, w_scale, bias, m_hint, out_scale, out_zp, out_dtype.value_or(at::kFloat),
             eltwise(post_op, post_alpha, post_beta), nullptr, 1.0, 0, out, &other);
  return out;
}

// A weight-only linear's weight (and scales) asked into 2 MB pages at its first GEMV
// (woq_gemv::advise_huge_pages), remembered by storage, not address: a new weight allocated where
// a freed one was is asked again (an address set skipped it, and it streamed from 4 KB pages).
void advise_huge_pages_once(const at::Tensor& t) {
  static std::mutex mutex;
  static std::unordered_map<const void*, c10::weak_intrusive_ptr<c10::StorageImpl>> advised;
  const void* data = t.const_data_ptr();
  {
    std::lock_guard<std::mutex> guard(mutex);
    auto it = advised.find(data);
    if (it != advised.end() && it->second.lock().get() == t.storage().unsafeGetStorageImpl()) return;
    for (auto e = advised.begin(); e != advised.end();) e = e->second.expired() ? advised.erase(e) : std::next(e);
    advised.insert_or_assign(data, c10::weak_intrusive_ptr<c10::StorageImpl>(t.storage().getWeakStorageImpl()));
  }
  woq_gemv::advise_huge_pages(data, t.numel() * int64_t(t.element_size()));
}

// A weight-only int8 linear: x (f32 or bf16) [..., K] times the int8 [N, K] weight, each output
// channel times its scale (w_scale [N]) or each group of K / G input channels times its own
// (w_scale [N, G], fp32, or fp16: half the scale bytes a decode step reads), plus the bias; the output in x's dtype. The weight stays int8 in memory
// (a quarter of f32's bytes, half of bf16's), which is what a memory-bound decode step reads.
// One row, and up to woq_gemv::kMaxRows rows with group scales (a decode step at a small batch):
// our GEMV, reading the weight once for all rows. More rows: oneDNN's matmul on the int8 weight
// per channel; per group, the float GEMM on the weight dequantized into x's dtype (a prompt).
at::Tensor woq_linear(const at::Tensor& x_in, const at::Tensor& w, const at::Tensor& w_scale,
                      const c10::optional<at::Tensor>& bias, int64_t m_hint) {
  auto& a = api();
  TORCH_CHECK(a.error.empty(), "inductor-quant oneDNN kernels are unavailable: ", a.error);
  TORCH_CHECK(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kBFloat16,
              "woq_linear: float32 or bfloat16 activations, got ", x_in.scalar_type());
  TORCH_CHECK(w.scalar_type() == at::kChar && w.dim() == 2 && x_in.size(-1) == w.size(1),
              "woq_linear: an int8 [out, in] weight whose in matches the input's last dim");
  const int64_t k = w.size(1), n = w.size(0);
  const bool grouped = w_scale.dim() == 2;
  const int64_t group = grouped && w_scale.size(1) > 0 ? k / w_scale.size(1) : 0;
  TORCH_CHECK(grouped ? w_scale.size(0) == n && group > 0 && group % 32 == 0 && group * w_scale.size(1) == k
                      : w_scale.numel() == n,
              "woq_linear: one weight scale per output channel [out], or per group [out, in / group] with the "
              "group a multiple of 32 dividing in");
  const at::Tensor x = x_in.reshape({-1, k}).contiguous();
  std::vector<int64_t> out_sizes(x_in.sizes().begin(), x_in.sizes().end());
  out_sizes.back() = n;
  const int64_t rows = x.size(0);
  if (grouped && rows > woq_gemv::kMaxRows) {  // a prompt: the float GEMM on the dequantized weight
    const at::Tensor wc = w.contiguous(), sc = w_scale.to(at::kFloat).contiguous();
    at::Tensor w_float = at::empty({n, k}, x.options());
    woq_gemv::dequantize(wc.const_data_ptr<int8_t>(), sc.const_data_ptr<float>(), n, k, group, w_float.data_ptr(),
                         x.scalar_type() == at::kBFloat16);
    const c10::optional<at::Tensor> b = bias.has_value() ? c10::optional<at::Tensor>(bias->to(x.scalar_type())) : bias;
    return at::linear(x, w_float, b).view(out_sizes);
  }
  at::Tensor out = at::empty(out_sizes, x.options());
  if (x.size(0) == 0) return out;
  if ((rows == 1 && w.is_contiguous()) || grouped) {  // a decode step: stream the weight
    // fp32 x as it is, bf16 x as it is where the bf16 loop takes it (group scales, AVX512-BF16),
    // else widened once into rows of its own (exact); scales and bias read in their dtypes and the
    // output written in x's: no tensor made or converted per call but the output
    std::vector<float> widened;
    const float* xf = nullptr;
    const bool bf16_rows = x.scalar_type() == at::kBFloat16 && woq_gemv::takes_bf16_rows(k, group);
    if (x.scalar_type() == at::kFloat) {
      xf = x.const_data_ptr<float>();
    } else if (!bf16_rows) {
      widened.resize(size_t(rows * k));
      const c10::BFloat16* xb = x.const_data_ptr<c10::BFloat16>();
      for (int64_t i = 0; i < rows * k; ++i) widened[size_t(i)] = float(xb[i]);
      xf = widened.data();
    }
    // fp32 scales as they are; fp16 group scales too (the GEMV widens them); anything else as fp32
    const bool half = grouped && w_scale.scalar_type() == at::kHalf;
    const at::Tensor scale = (w_scale.scalar_type() == at::kFloat || half) && w_scale.is_contiguous()
                                 ? w_scale : w_scale.to(half ? at::kHalf : at::kFloat).contiguous();
    c10::optional<at::Tensor> b;
    if (bias.has_value())
      b = (bias->scalar_type() == at::kFloat || bias->scalar_type() == at::kBFloat16) && bias->is_contiguous()
              ? *bias : bias->to(at::kFloat).contiguous();
    const at::Tensor wc = w.contiguous();
    woq_gemv::Args args{xf, wc.const_data_ptr<int8_t>(), half ? nullptr : scale.const_data_ptr<float>(),
                        half ? static_cast<const uint16_t*>(scale.const_data_ptr()) : nullptr,
                        b.has_value() ? b->const_data_ptr() : nullptr, out.data_ptr(), k, n};
    args.bias_bf16 = b.has_value() && b->scalar_type() == at::kBFloat16;
    args.y_bf16 = out.scalar_type() == at::kBFloat16;
    args.group = group;
    args.rows = rows;
    if (bf16_rows) args.xb = x.const_data_ptr<c10::BFloat16>();
    advise_huge_pages_once(wc);  // both streams of a decode step
    if (group) advise_huge_pages_once(scale);
    woq_gemv::run(args);
    return out;
  }
  LinearCall c{x.size(0), k, n, m_hint, x.scalar_type(), x.scalar_type(),
               bias.has_value() ? c10::optional<at::ScalarType>(bias->scalar_type()) : c10::nullopt,
               false, false, false, false, n, Eltwise{}, true};
  auto layer = linear_layer(c, w, w_scale);
  const c10::optional<at::Tensor> b = bias.has_value() ? c10::optional<at::Tensor>(bias->contiguous()) : bias;
  layer->run(x.const_data_ptr(), out.data_ptr(), b.has_value() ? b->const_data_ptr() : nullptr, 1.f, 0, 1.f, 0,
             "matmul execute (weight-only)");
  return out;
}


// A weight-only int4 linear: x (f32 or bf16) [..., K] times the group-wise 4-bit weight in our
// packed layout (woq_int4.h), plus the bias; the output in x's dtype. Up to woq_gemv::kMaxRows
// rows stream the packed weight once (woq_int4::run); more rows (a prompt) dequantize it into x's
// dtype and run the float GEMM.
at::Tensor woq_int4_linear(const at::Tensor& x_in, const at::Tensor& w4, const at::Tensor& sz, int64_t group,
                           const c10::optional<at::Tensor>& bias) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat || x_in.scalar_type() == at::kBFloat16,
              "woq_int4_linear: float32 or bfloat16 activations, got ", x_in.scalar_type());
  const int64_t k = x_in.size(-1), n = w4.size(0);
  TORCH_CHECK(w4.scalar_type() == at::kByte && w4.dim() == 2 && w4.size(1) * 2 == k && w4.is_contiguous(),
              "woq_int4_linear: a contiguous uint8 [out, in / 2] packed weight whose in matches the input's last dim");
  TORCH_CHECK(group > 0 && group % woq_int4::kRun == 0 && k % group == 0,
              "woq_int4_linear: the group must be a multiple of 32 dividing in, got ", group, " for in ", k);
  TORCH_CHECK(sz.scalar_type() == x_in.scalar_type() && sz.is_contiguous() && sz.dim() == 3 && sz.size(0) == n &&
                  sz.size(1) == k / group && sz.size(2) == 2,
              "woq_int4_linear: (scale, zero) pairs [out, in / group, 2] in the input's dtype");
  const bool bf16 = x_in.scalar_type() == at::kBFloat16;
  const at::Tensor x = x_in.reshape({-1, k}).contiguous();
  std::vector<int64_t> out_sizes(x_in.sizes().begin(), x_in.sizes().end());
  out_sizes.back() = n;
  c10::optional<at::Tensor> b;
  if (bias.has_value())
    b = (bias->scalar_type() == at::kFloat || bias->scalar_type() == at::kBFloat16) && bias->is_contiguous()
            ? *bias : bias->to(at::kFloat).contiguous();
  const int64_t rows = x.size(0), groups = k / group;
  if (rows > woq_int4::kMaxRows || k / woq_int4::kRun > woq_int4::kMaxRuns) {  // a prompt: the float GEMM on the dequantized weight
    at::Tensor w = at::empty({n, k}, x.options());
    woq_int4::dequantize(w4.const_data_ptr<uint8_t>(), sz.const_data_ptr(), bf16, n, k, group, w.data_ptr(), bf16);
    return at::linear(x, w, b.has_value() ? c10::optional<at::Tensor>(b->to(x.scalar_type())) : b).view(out_sizes);
  }
  at::Tensor out = at::empty(out_sizes, x.options());
  if (rows == 0) return out;
  std::vector<float> xf(static_cast<size_t>(rows * k)), xsum(static_cast<size_t>(rows * groups));
  std::vector<c10::BFloat16> xb;
  if (bf16) xb.resize(static_cast<size_t>(rows * k));
  for (int64_t r = 0; r < rows; ++r) {
    const char* row = static_cast<const char*>(x.const_data_ptr()) + r * k * x.element_size();
    if (bf16) woq_int4::reorder_for_bf16(reinterpret_cast<const c10::BFloat16*>(row), k, xb.data() + r * k);
    woq_int4::widen_x(row, bf16, k, group, xf.data() + r * k, xsum.data() + r * groups);
  }
  woq_int4::Args args{xf.data(), bf16 ? xb.data() : nullptr, xsum.data(), w4.const_data_ptr<uint8_t>(),
                      sz.const_data_ptr(), b.has_value() ? b->const_data_ptr() : nullptr, out.data_ptr(),
                      k, n, group, groups};
  args.rows = rows;
  args.sz_bf16 = bf16;
  args.bias_bf16 = b.has_value() && b->scalar_type() == at::kBFloat16;
  args.y_bf16 = bf16;
  advise_huge_pages_once(w4);  // both streams of a decode step
  advise_huge_pages_once(sz);
  woq_int4::run(args, bf16);
  return out;
}

// ---- attention -------------------------------------------------------------------------------
//
// softmax(q k^T * scale + mask) v for 4-D [B, H, S, D] q, k, v (any strides with the last dim's 1,
// as the slices of a merged Q/K/V output arrive), as three oneDNN primitives built once per shape:
// a batched matmul writing f32 scores with the scale and the mask as post-ops, softmax over the
// last dim (f32; written as bf16 for bf16 inputs), and a batched matmul with v that writes the
// context straight into a [B, S, H, D] buffer, returned as its [B, H, S, D] transpose (the layout
// torch's CPU flash attention returns, so the permute + reshape after it stays a view). The scores
// buffer is kept with the primitives: no fresh pages per call. What torch's flash attention
// computes in blocks of queries with an online softmax, this computes whole; the numbers differ
// from it by float rounding only (tests/kernels/test_native.py).

struct Attention : OwnedMemories {
  dnnl_primitive_t scores = nullptr, softmax = nullptr, context = nullptr;
  dnnl_memory_t q = nullptr, k = nullptr, v = nullptr, mask = nullptr, s = nullptr, p = nullptr, out = nullptr;
  at::Tensor s_buf, p_buf;  // the scores and (bf16) probabilities, reused by every call
  std::mutex mutex;         // one call at a time: the memory objects' data handles are per call
  ~Attention() {
    for (auto prim : {scores, softmax, context})
      if (prim) api().dnnl_primitive_destroy(prim);
  }
};

std::mutex attention_mutex;
std::unordered_map<std::vector<int64_t>, std::shared_ptr<Attention>, KeyHash> attention_cache;

dnnl_primitive_t make_primitive(dnnl_primitive_desc_t pd, dnnl_status_t st, const char* what) {
  check(st, what);
  dnnl_primitive_t prim = nullptr;
  st = api().dnnl_primitive_create(&prim, pd);
  api().dnnl_primitive_desc_destroy(pd);
  check(st, what);
  return prim;
}

// `t` with each size-1 dim given the stride of a dense layout: such a dim is never stepped, but
// Inductor may give it any stride (0 for the batch of a batch-1 slice), and oneDNN's matmul read
// q, k and v wrong with a 0 batch stride (fuzz seed 13 at batch 1).
at::Tensor unit_dims_dense(const at::Tensor& t) {
  std::vector<int64_t> strides(t.strides().begin(), t.strides().end());
  int64_t span = 1;
  for (int64_t i = t.dim() - 1; i >= 0; --i) {
    if (t.size(i) == 1) strides[i] = span;
    span = std::max(span, strides[i] * t.size(i));
  }
  return strides == t.strides().vec() ? t : t.as_strided(t.sizes(), strides);
}

// `mask4`: the mask viewed as 4-D with its broadcast dims of size 1 (undefined: none).
std::shared_ptr<Attention> build_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const at::Tensor& mask4, float scale) {
  auto& a = api();
  auto att = std::make_shared<Attention>();
  const int64_t B = q.size(0), H = q.size(1), Sq = q.size(2), D = q.size(3), Sk = k.size(2), Dv = v.size(3);
  const dnnl_data_type_t dt = dnnl_type(q.scalar_type());
  const bool reduced = dt != dnnl_f32;
  MemoryDesc q_md, kt_md, s_md, p_md, v_md, out_md, mask_md;
  q_md.md = make_md(q.sizes(), q.strides(), dt);
  kt_md.md = make_md({B, H, D, Sk}, {k.stride(0), k.stride(1), k.stride(3), k.stride(2)}, dt);
  s_md.md = plain_md({B, H, Sq, Sk}, dnnl_f32);
  p_md.md = plain_md({B, H, Sq, Sk}, dt);
  v_md.md = make_md(v.sizes(), v.strides(), dt);
  out_md.md = make_md({B, H, Sq, Dv}, {Sq * H * Dv, Dv, H * Dv, 1}, dt);
  if (mask4.defined()) mask_md.md = make_md(mask4.sizes(), mask4.strides(), dnnl_type(mask4.scalar_type()));

  dnnl_primitive_attr_t attr = nullptr;
  dnnl_post_ops_t ops = nullptr;
  check(a.dnnl_primitive_attr_create(&attr), "attr_create");
  check(a.dnnl_post_ops_create(&ops), "post_ops_create");
  check(a.dnnl_post_ops_append_eltwise(ops, dnnl_eltwise_linear, scale, 0.f), "scale");
  if (mask4.defined()) check(a.dnnl_post_ops_append_binary(ops, dnnl_binary_add, mask_md.md), "mask");
  check(a.dnnl_primitive_attr_set_post_ops(attr, ops), "set_post_ops");
  dnnl_primitive_desc_t pd = nullptr;
  dnnl_status_t st = a.dnnl_matmul_primitive_desc_create(&pd, a.engine, q_md.md, kt_md.md, nullptr, s_md.md, attr);
  a.dnnl_post_ops_destroy(ops);
  a.dnnl_primitive_attr_destroy(attr);
  att->scores = make_primitive(pd, st, "attention scores matmul");

  st = a.dnnl_softmax_forward_primitive_desc_create(&pd, a.engine, dnnl_forward_inference, dnnl_softmax_accurate,
                                                    s_md.md, reduced ? p_md.md : s_md.md, 3, nullptr);
  att->softmax = make_primitive(pd, st, "attention softmax");
  st = a.dnnl_matmul_primitive_desc_create(&pd, a.engine, reduced ? p_md.md : s_md.md, v_md.md, nullptr, out_md.md,
                                           nullptr);
  att->context = make_primitive(pd, st, "attention context matmul");

  att->s_buf = at::empty({B, H, Sq, Sk}, q.options().dtype(at::kFloat));
  att->s = att->memory(s_md.md, att->s_buf.data_ptr());
  if (reduced) {
    att->p_buf = at::empty({B, H, Sq, Sk}, q.options());
    att->p = att->memory(p_md.md, att->p_buf.data_ptr());
  } else {
    att->p = att->s;
  }
  att->q = att->memory(q_md.md, DNNL_MEMORY_NONE);
  att->k = att->memory(kt_md.md, DNNL_MEMORY_NONE);
  att->v = att->memory(v_md.md, DNNL_MEMORY_NONE);
  att->out = att->memory(out_md.md, DNNL_MEMORY_NONE);
  if (mask4.defined()) att->mask = att->memory(mask_md.md, DNNL_MEMORY_NONE);
  return att;
}

// A query row whose mask is -inf at every key attends to nothing: torch's attention gives 0 there,
// oneDNN's softmax NaN (0 / 0). Such rows are zeroed in `out` ([B, Sq, H, Dv], dense). Each mask
// row is scanned up to its first key that is not -inf (the first key of a causal row), in place:
// no temporary tensors, no reduction ops (a decode step calls this once per layer).
template <typename T, typename IsNegInf>
void zero_rows_masked_everywhere(const at::Tensor& mask4, at::Tensor& out, IsNegInf is_neg_inf) {
  const T* m = static_cast<const T*>(mask4.const_data_ptr());
  const int64_t B = out.size(0), Sq = out.size(1), H = out.size(2), Dv = out.size(3), Sk = mask4.size(3);
  const int64_t st[4] = {mask4.size(0) == 1 ? 0 : mask4.stride(0), mask4.size(1) == 1 ? 0 : mask4.stride(1),
                         mask4.size(2) == 1 ? 0 : mask4.stride(2), mask4.stride(3)};
  const size_t row_bytes = size_t(Dv) * out.element_size();
  char* o = static_cast<char*>(out.data_ptr());
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t s = 0; s < Sq; ++s) {
        const T* row = m + b * st[0] + h * st[1] + s * st[2];
        int64_t j = 0;
        while (j < Sk && is_neg_inf(row[j * st[3]])) ++j;
        if (j == Sk) std::memset(o + ((b * Sq + s) * H + h) * row_bytes, 0, row_bytes);  // 0 bits: +0 in f32 and bf16
      }
}

void zero_fully_masked_rows(const at::Tensor& mask4, at::Tensor& out) {
  if (mask4.scalar_type() == at::kBFloat16)
    zero_rows_masked_everywhere<uint16_t>(mask4, out, [](uint16_t bits) { return bits == 0xFF80; });  // bf16 -inf
  else
    zero_rows_masked_everywhere<float>(mask4, out, [](float x) { return std::isinf(x) && x < 0; });
}

// The keys [lo, hi) that some query row can see. Outside it the mask is -inf in every row, so those
// keys add exp(-inf) = 0 to every softmax sum and context: a prompt chunk or a decode step of a
// decoder attends over a cache longer than the positions written so far, and skipping the rest
// is exact (up to the summation order). Every row's tail [hi, Sk) and head [0, lo) is checked
// for -inf bits in a loop the compiler vectorizes; hi <= lo: no row sees any key.
template <typename U>
bool all_bits(const U* p, int64_t n, U bits) {
  U diff = 0;
  for (int64_t i = 0; i < n; ++i) diff |= U(p[i] ^ bits);
  return diff == 0;
}

template <typename U>
std::pair<int64_t, int64_t> visible_keys_of(const at::Tensor& mask4, U neg_inf) {
  const U* m = static_cast<const U*>(mask4.const_data_ptr());
  const int64_t Sk = mask4.size(3);
  int64_t lo = Sk, hi = 0;
  for (int64_t b = 0; b < mask4.size(0); ++b)
    for (int64_t h = 0; h < mask4.size(1); ++h)
      for (int64_t s = 0; s < mask4.size(2); ++s) {
        const U* row = m + b * mask4.stride(0) + h * mask4.stride(1) + s * mask4.stride(2);
        if (hi < Sk && !all_bits(row + hi, Sk - hi, neg_inf))
          for (int64_t j = Sk - 1; j >= hi; --j)
            if (row[j] != neg_inf) { hi = j + 1; break; }
        if (lo > 0 && !all_bits(row, lo, neg_inf))
          for (int64_t j = 0; j < lo; ++j)
            if (row[j] != neg_inf) { lo = j; break; }
      }
  return {lo, hi};
}

// The visible range rounded out to multiples of KEY_STEP (aligned blocks of keys for the kernel);
// {0, Sk} where the mask's keys are strided or broadcast.
constexpr int64_t KEY_STEP = 32;

std::pair<int64_t, int64_t> visible_keys(const at::Tensor& mask4, int64_t Sk) {
  if (mask4.size(3) != Sk || mask4.stride(3) != 1 || Sk <= KEY_STEP) return {0, Sk};
  auto [lo, hi] = mask4.scalar_type() == at::kBFloat16 ? visible_keys_of<uint16_t>(mask4, 0xFF80)
                                                       : visible_keys_of<uint32_t>(mask4, 0xFF800000u);
  if (hi <= lo) return {0, 0};
  return {lo / KEY_STEP * KEY_STEP, std::min(Sk, (hi + KEY_STEP - 1) / KEY_STEP * KEY_STEP)};
}

// Which bf16 attention runs: 0 as the CPU says (attention_bf16.h), 1 the oneDNN primitives, 2 our
// kernel (tests compare the two in one process: `attention_kernel`).
std::atomic<int> attention_choice{0};

bool own_attention_here() {
  const int c = attention_choice.load();
  return c == 2 || (c == 0 && attention_bf16::cpu_supported());
}

// bf16 q, k, v (last dims dense) through attention_bf16.h when this CPU and the shapes allow;
// false: the caller runs the oneDNN primitives
bool own_bf16_attention(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& mask4,
                        double scale, at::Tensor& out) {
  if (!own_attention_here() || !attention_bf16::shape_supported(q.size(2), k.size(2), q.size(3), v.size(3))) return false;
  attention_bf16::Args a;
  a.q = static_cast<const uint16_t*>(q.const_data_ptr());
  a.k = static_cast<const uint16_t*>(k.const_data_ptr());
  a.v = static_cast<const uint16_t*>(v.const_data_ptr());
  a.B = q.size(0), a.H = q.size(1), a.Sq = q.size(2), a.Sk = k.size(2), a.D = q.size(3), a.Dv = v.size(3);
  for (int d = 0; d < 3; ++d) a.qs[d] = q.stride(d), a.ks[d] = k.stride(d), a.vs[d] = v.stride(d);
  if (mask4.defined()) {
    for (int d = 0; d < 4; ++d) a.ms[d] = mask4.size(d) == 1 ? 0 : mask4.stride(d);
    if (a.ms[3] > 1) return false;  // keys strided: the oneDNN route reads it
    a.mask = mask4.const_data_ptr();
    a.mask_bf16 = mask4.scalar_type() == at::kBFloat16;
  }
  a.scale = float(scale);
  a.out = static_cast<uint16_t*>(out.data_ptr());
  attention_bf16::run(a);
  return true;
}

// Sets which bf16 attention runs ("auto", "onednn", "own"; "" leaves it) and names the one that
// runs now.
std::string attention_kernel(const std::string& which) {
  if (which == "auto") attention_choice = 0;
  else if (which == "onednn") attention_choice = 1;
  else if (which == "own") {
    TORCH_CHECK(attention_bf16::cpu_can_run(),
                "attention_kernel: our bf16 attention needs AVX512-BF16 and torch's AVX-512 capability");
    attention_choice = 2;
  } else
    TORCH_CHECK(which.empty(), "attention_kernel: one of auto, onednn, own");
  return own_attention_here() ? "own" : "onednn";
}

at::Tensor attention(const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& v_in,
                     const c10::optional<at::Tensor>& mask_in, double scale) {
  auto& a = api();
  TORCH_CHECK(a.error.empty(), "inductor-quant oneDNN kernels are unavailable: ", a.error);
  TORCH_CHECK(q_in.dim() == 4 && k_in.dim() == 4 && v_in.dim() == 4, "attention: 4-D q, k, v [B, H, S, D]");
  TORCH_CHECK((q_in.scalar_type() == at::kFloat || q_in.scalar_type() == at::kBFloat16) &&
                  k_in.scalar_type() == q_in.scalar_type() && v_in.scalar_type() == q_in.scalar_type(),
              "attention: q, k, v all float32 or all bfloat16");
  auto last_dense = [](const at::Tensor& t) {
    return unit_dims_dense(t.stride(3) == 1 || t.size(3) == 1 ? t : t.contiguous());
  };
  const at::Tensor q = last_dense(q_in), k = last_dense(k_in), v = last_dense(v_in);
  const int64_t B = q.size(0), H = q.size(1), Sq = q.size(2), Sk = k.size(2), Dv = v.size(3);
  TORCH_CHECK(k.size(0) == B && v.size(0) == B && k.size(1) == H && v.size(1) == H && k.size(3) == q.size(3) &&
                  v.size(2) == Sk,
              "attention: q [B, H, Sq, D], k [B, H, Sk, D] and v [B, H, Sk, Dv] of one B and H");
  at::Tensor mask4;
  if (mask_in.has_value()) {
    const at::Tensor& m = *mask_in;
    TORCH_CHECK((m.scalar_type() == at::kFloat || m.scalar_type() == at::kBFloat16) && m.dim() <= 4,
                "attention: a float32 or bfloat16 additive mask of at most 4 dims");
    // as 4-D, each broadcast dim (size 1, or expanded with stride 0) of size 1
    std::vector<int64_t> sizes(4 - m.dim(), 1), strides(4 - m.dim(), 0);
    const int64_t full[4] = {B, H, Sq, Sk};
    for (int64_t i = 0; i < m.dim(); ++i) {
      const int64_t d = 4 - m.dim() + i;
      TORCH_CHECK(m.size(i) == 1 || m.size(i) == full[d], "attention: the mask does not broadcast to [B, H, Sq, Sk]");
      const bool broadcast = m.size(i) == 1 || m.stride(i) == 0;
      sizes.push_back(broadcast ? 1 : m.size(i));
      strides.push_back(broadcast ? 0 : m.stride(i));
    }
    mask4 = unit_dims_dense(m.as_strided(sizes, strides));
  }
  at::Tensor out = at::empty({B, Sq, H, Dv}, q.options());
  if (out.numel() == 0) return out.transpose(1, 2);
  if (mask4.defined() && q.scalar_type() == at::kBFloat16 && own_attention_here()) {
    const auto [lo, hi] = visible_keys(mask4, Sk);
    if (hi == lo) return out.zero_().transpose(1, 2);  // no row sees a key: torch's attention gives 0
    // only our kernel runs on the visible keys: oneDNN's matmul on a slice of the cache (its batch
    // strides no longer dense) took a slow path, 2 ms against 42 us for a decode step's head
    if (hi - lo < Sk && q.scalar_type() == at::kBFloat16 &&
        own_bf16_attention(q, k.narrow(2, lo, hi - lo), v.narrow(2, lo, hi - lo), mask4.narrow(3, lo, hi - lo),
                           scale, out))
      return out.transpose(1, 2);
  }
  if (q.scalar_type() == at::kBFloat16 && own_bf16_attention(q, k, v, mask4, scale, out)) return out.transpose(1, 2);
  std::vector<int64_t> key{int64_t(q.scalar_type()), bits(scale), at::get_num_threads(), mask4.defined()};
  for (const at::Tensor* t : {&q, &k, &v}) {
    for (auto d : t->sizes()) key.push_back(d);
    for (auto d : t->strides()) key.push_back(d);
  }
  if (mask4.defined()) {
    key.push_back(int64_t(mask4.scalar_type()));
    for (auto d : mask4.sizes()) key.push_back(d);
    for (auto d : mask4.strides()) key.push_back(d);
  }
  std::shared_ptr<Attention> att;
  {
    std::lock_guard<std::mutex> guard(attention_mutex);
    auto it = attention_cache.find(key);
    if (it == attention_cache.end()) it = attention_cache.emplace(key, build_attention(q, k, v, mask4, float(scale))).first;
    att = it->second;
  }
  std::lock_guard<std::mutex> guard(att->mutex);
  check(a.dnnl_memory_set_data_handle(att->q, const_cast<void*>(q.const_data_ptr())), "q");
  check(a.dnnl_memory_set_data_handle(att->k, const_cast<void*>(k.const_data_ptr())), "k");
  check(a.dnnl_memory_set_data_handle(att->v, const_cast<void*>(v.const_data_ptr())), "v");
  check(a.dnnl_memory_set_data_handle(att->out, out.data_ptr()), "out");
  dnnl_exec_arg_t args[4] = {{DNNL_ARG_SRC, att->q}, {DNNL_ARG_WEIGHTS, att->k}, {DNNL_ARG_DST, att->s}};
  int n = 3;
  if (mask4.defined()) {
    check(a.dnnl_memory_set_data_handle(att->mask, const_cast<void*>(mask4.const_data_ptr())), "mask");
    args[n++] = {DNNL_ARG_ATTR_MULTIPLE_POST_OP(1) | DNNL_ARG_SRC_1, att->mask};
  }
  check(a.dnnl_primitive_execute(att->scores, a.stream, n, args), "attention scores execute");
  dnnl_exec_arg_t sargs[2] = {{DNNL_ARG_SRC, att->s}, {DNNL_ARG_DST, att->p}};
  check(a.dnnl_primitive_execute(att->softmax, a.stream, 2, sargs), "attention softmax execute");
  dnnl_exec_arg_t cargs[3] = {{DNNL_ARG_SRC, att->p}, {DNNL_ARG_WEIGHTS, att->v}, {DNNL_ARG_DST, att->out}};
  check(a.dnnl_primitive_execute(att->context, a.stream, 3, cargs), "attention context execute");
  if (mask4.defined()) zero_fully_masked_rows(mask4, out);
  return out.transpose(1, 2);
}

// Layer norm over the last dim of float32 x, then quantize_per_tensor (uint8 or int8): the
// float output (when `float_out`; else an empty tensor) and the quantized one, both x's shape.
// Plain C++ (layer_norm_quant.h), no oneDNN: it needs no primitive and no symbol of torch's.
std::tuple<at::Tensor, at::Tensor> layer_norm_quant(const at::Tensor& x_in, const c10::optional<at::Tensor>& w_in,
                                                    const c10::optional<at::Tensor>& b_in, double eps, double scale,
                                                    int64_t zero_point, int64_t qmin, int64_t qmax,
                                                    at::ScalarType dtype, bool float_out) {
  TORCH_CHECK(x_in.scalar_type() == at::kFloat && x_in.dim() >= 1, "layer_norm_quant: a float32 input");
  TORCH_CHECK(dtype == at::kByte || dtype == at::kChar, "layer_norm_quant: a uint8 or int8 output");
  const int64_t n = x_in.size(-1);
  auto param = [&](const c10::optional<at::Tensor>& p, double fill, const char* what) {
    if (!p.has_value()) return at::empty({n}, x_in.options()).fill_(fill);
    TORCH_CHECK(p->scalar_type() == at::kFloat && p->numel() == n, "layer_norm_quant: a float32 ", what,
                " of the normalized size");
    return p->contiguous();
  };
  const at::Tensor w = param(w_in, 1.0, "weight"), b = param(b_in, 0.0, "bias");
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = float_out ? at::empty(x.sizes(), x.options()) : at::empty({0}, x.options());
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(dtype));
  if (x.numel() == 0) return {y, q};
  norm_quant::run({x.const_data_ptr<float>(), w.const_data_ptr<float>(), b.const_data_ptr<float>(),
                         float_out ? y.data_ptr<float>() : nullptr, q.data_ptr(), dtype == at::kChar,
                         x.numel() / n, n, float(eps), float(1.0 / scale), zero_point, qmin, qmax});
  return {y, q};
}

std::string status() { return api().error; }

// Which loops of our own vector kernels run in this process (they follow ATEN_CPU_CAPABILITY):
// tests cap the capability to prove the AVX2 and plain loops on a newer CPU. The GEMV's
// "avx512_bf16": bf16 rows with group scales take its bf16 pair loop, the rest its AVX-512 loops.
std::string vector_code() {
  const char* gemv = woq_gemv::takes_bf16_rows(32, 32) ? "avx512_bf16" : woq_gemv::name(woq_gemv::pick());
  return std::string("woq_gemv=") + gemv + " woq_int4=" +
         woq_int4::name(woq_int4::pick(true)) + " layer_norm_quant=" +
         norm_quant::name(norm_quant::level()) + " attention_bf16=" + (own_attention_here() ? "own" : "onednn");
}

int64_t cached_layers() {
  std::lock_guard<std::mutex> guard(cache_mutex);
  return int64_t(cache.size());
}

void clear_cache() {
  std::lock_guard<std::mutex> guard(cache_mutex);
  cache.clear();
  {
    std::lock_guard<std::mutex> attention_guard(attention_mutex);
    attention_cache.clear();
  }
  std::lock_guard<std::mutex> weights_guard(weights_mutex);
  linear_weights.clear();
}

}  // namespace

TORCH_LIBRARY(iq_onednn, m) {
  m.def("status() -> str", &status);
  m.def("vector_code() -> str", &vector_code);
  m.def("attention_kernel(str which) -> str", &attention_kernel);
  m.def("cached_layers() -> int", &cached_layers);
  m.def("clear_cache() -> ()", &clear_cache);
  m.def(
      "qconv2d(Tensor x, float x_scale, int x_zero_point, Tensor w, Tensor w_scale, Tensor? bias, int stride_h, "
      "int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int groups, float output_scale, "
      "int output_zero_point, ScalarType? output_dtype, int post_op, float post_op_alpha, float post_op_beta) "
      "-> Tensor");
  m.def(
      "qlinear(Tensor x, float x_scale, int x_zero_point, Tensor w, Tensor w_scale, Tensor? bias, int m_hint, "
      "float output_scale, int output_zero_point, ScalarType? output_dtype, int post_op, float post_op_alpha, "
      "float post_op_beta) -> Tensor");
  m.def(
      "qlinear_sum_(Tensor x, float x_scale, int x_zero_point, Tensor w, Tensor w_scale, Tensor? bias, int m_hint, "
      "float output_scale, int output_zero_point, ScalarType? output_dtype, Tensor(a!) accum, float accum_scale, "
      "int accum_zero_point, int post_op, float post_op_alpha, float post_op_beta) -> ()");
  m.def(
      "qlinear_add(Tensor x, float x_scale, int x_zero_point, Tensor w, Tensor w_scale, Tensor? bias, int m_hint, "
      "float output_scale, int output_zero_point, ScalarType? output_dtype, Tensor other, int post_op, "
      "float post_op_alpha, float post_op_beta) -> Tensor");
  m.def("woq_linear(Tensor x, Tensor w, Tensor w_scale, Tensor? bias, int m_hint) -> Tensor");
  m.def("woq_int4_linear(Tensor x, Tensor w4, Tensor sz, int group, Tensor? bias) -> Tensor");
  m.def("attention(Tensor q, Tensor k, Tensor v, Tensor? mask, float scale) -> Tensor");
  m.def(
      "layer_norm_quant(Tensor x, Tensor? weight, Tensor? bias, float eps, float scale, int zero_point, int qmin, "
      "int qmax, ScalarType dtype, bool float_out) -> (Tensor, Tensor)");
  m.def(
      "qconv2d_sum_(Tensor x, float x_scale, int x_zero_point, Tensor w, Tensor w_scale, Tensor? bias, int stride_h, "
      "int stride_w, int pad_h, int pad_w, int dilation_h, int dilation_w, int groups, float output_scale, "
      "int output_zero_point, ScalarType? output_dtype, Tensor(a!) accum, float accum_scale, int accum_zero_point, "
      "int post_op, float post_op_alpha, float post_op_beta) -> ()");
}

TORCH_LIBRARY_IMPL(iq_onednn, CPU, m) {
  m.impl("qconv2d", qconv2d);
  m.impl("qconv2d_sum_", qconv2d_sum_);
  m.impl("qlinear", qlinear);
  m.impl("qlinear_sum_", qlinear_sum_);
  m.impl("qlinear_add", qlinear_add);
  m.impl("woq_linear", woq_linear);
  m.impl("woq_int4_linear", woq_int4_linear);
  m.impl("attention", attention);
  m.impl("layer_norm_quant", layer_norm_quant);
}
