// A non-owning view of a tensor: dtype, shape and a pointer.
//
// Shapes are written outermost first, PyTorch style: a matrix [rows, cols] is
// `rows` contiguous rows of `cols` values, and a weight matrix [out, in] is
// applied as y[o] = sum_i W[o][i] * x[i]. For quantized dtypes the last
// dimension counts values (not blocks) and rows are packed per RowBytes().
// A matrix in one of Herd's quantized formats (DType::kQuant) also carries its
// QuantFormat and the pointers to its scales and mins; data() is its codes.
#pragma once

#include <array>
#include <cstdint>
#include <initializer_list>
#include <string>

#include "core/dtype.h"
#include "core/quant_format.h"
#include "core/status.h"

namespace herd {

class TensorView {
 public:
  static constexpr int kMaxRank = 4;

  TensorView() = default;
  TensorView(DType dtype, std::initializer_list<int64_t> shape, const void* data)
      : dtype_(dtype), data_(data) {
    HERD_CHECK(shape.size() <= kMaxRank);
    for (int64_t d : shape) shape_[rank_++] = d;
  }

  // A [rows, cols] matrix in `format` (see core/quant_format.h); mins is null
  // for symmetric formats.
  static TensorView Quantized(const QuantFormat& format, int64_t rows, int64_t cols,
                              const QuantizedMatrixData& data) {
    TensorView v(DType::kQuant, {rows, cols}, data.codes);
    v.quant_format_ = format;
    v.scales_ = data.scales;
    v.mins_ = data.mins;
    return v;
  }

  DType dtype() const { return dtype_; }
  int rank() const { return rank_; }
  int64_t dim(int i) const { return shape_[i]; }
  const void* data() const { return data_; }
  bool empty() const { return data_ == nullptr; }

  int64_t num_elements() const {
    int64_t n = 1;
    for (int i = 0; i < rank_; ++i) n *= shape_[i];
    return n;
  }
  // Values in the innermost dimension.
  int64_t row_length() const { return rank_ == 0 ? 1 : shape_[rank_ - 1]; }
  int64_t num_rows() const { return row_length() == 0 ? 0 : num_elements() / row_length(); }
  // Bytes of one row; not defined for kQuant, whose rows are interleaved.
  int64_t row_bytes() const {
    HERD_CHECK(dtype_ != DType::kQuant);
    return RowBytes(dtype_, row_length());
  }
  // Every byte of the tensor (for kQuant: codes, scales and mins).
  int64_t num_bytes() const {
    if (dtype_ == DType::kQuant) return QuantizedSizes(quant_format_, dim(0), dim(1)).total();
    return num_rows() * row_bytes();
  }

  // Pointer to row `row_idx` (flattening all outer dimensions); not for kQuant.
  const uint8_t* row(int64_t row_idx) const {
    return static_cast<const uint8_t*>(data_) + row_idx * row_bytes();
  }

  // kQuant only: the format and the three arrays.
  const QuantFormat& quant_format() const { return quant_format_; }
  QuantizedMatrixData quantized() const {
    return QuantizedMatrixData{static_cast<const uint8_t*>(data_),
                               static_cast<const uint16_t*>(scales_),
                               static_cast<const uint16_t*>(mins_)};
  }
  template <typename T>
  const T* as() const {
    return static_cast<const T*>(data_);
  }

  // "Q8_0 [8, 128, 64]", "int4-g128-sym-f16 [2816, 1024]"
  std::string DebugString() const;

 private:
  DType dtype_ = DType::kF32;
  int rank_ = 0;
  std::array<int64_t, kMaxRank> shape_{};
  const void* data_ = nullptr;
  QuantFormat quant_format_;
  const void* scales_ = nullptr;
  const void* mins_ = nullptr;
};

}  // namespace herd
