// hetmoe's one exception type and the check macros that throw it.
// Messages carry a "[component]" prefix; only the CLI turns them into exit codes.
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>

namespace hetmoe {

// Thrown for every user-facing failure: bad config, bad file, bad flag, failed collective.
class Error : public std::runtime_error {
 public:
  Error(std::string component, const std::string& message)
      : std::runtime_error("[" + component + "] " + message), component_(std::move(component)) {}
  const std::string& component() const { return component_; }

 private:
  std::string component_;
};

namespace detail {
template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}
}  // namespace detail

}  // namespace hetmoe

// HETMOE_CHECK(cond, "component", parts...) throws hetmoe::Error("[component] parts...") when cond
// is false.
#define HETMOE_CHECK(cond, component, ...)                                                \
  do {                                                                                    \
    if (!(cond)) throw ::hetmoe::Error(component, ::hetmoe::detail::concat(__VA_ARGS__)); \
  } while (0)

#define HETMOE_FAIL(component, ...) \
  throw ::hetmoe::Error(component, ::hetmoe::detail::concat(__VA_ARGS__))
