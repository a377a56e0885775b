// The message of the hetmoe::Error a call throws, for tests that check what an error says.
#pragma once

#include <string>
#include <utility>

#include "hetmoe/core/error.h"

namespace hetmoe::test_support {

// e.what() of the hetmoe::Error that `f` throws, or "<no error>" when it returns normally.
template <typename F>
std::string error_of(F&& f) {
  try {
    std::forward<F>(f)();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

}  // namespace hetmoe::test_support
