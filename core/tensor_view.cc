#include "core/tensor_view.h"

#include "absl/strings/str_cat.h"

namespace herd {

std::string TensorView::DebugString() const {
  std::string out = absl::StrCat(
      dtype_ == DType::kQuant ? quant_format_.Name() : std::string(DTypeName(dtype_)), " [");
  for (int i = 0; i < rank_; ++i) absl::StrAppend(&out, i ? ", " : "", shape_[i]);
  return out + "]";
}

}  // namespace herd
