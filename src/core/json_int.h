// Integer fields of JSON files hetmoe reads (checkpoint manifests, health state): nlohmann's
// get<int64_t>() converts floats by a cast that is undefined beyond int64's range, so every
// integer goes through here instead.
#pragma once

#include <cstdint>
#include <limits>
#include <nlohmann/json.hpp>
#include <string>

#include "hetmoe/core/error.h"

namespace hetmoe {

// `v` as int64; throws hetmoe::Error("[component] <what> must be an integer ...") otherwise.
inline int64_t json_int64(const nlohmann::json& v, const char* component, const std::string& what) {
  HETMOE_CHECK(v.is_number_integer(), component, what, " must be an integer, got ", v.dump());
  HETMOE_CHECK(!v.is_number_unsigned() ||
                   v.get<uint64_t>() <= static_cast<uint64_t>(std::numeric_limits<int64_t>::max()),
               component, what, " is out of range: ", v.dump());
  return v.get<int64_t>();
}

}  // namespace hetmoe
