// The backend registry: explicit order (CPU last), tensor-to-backend mapping, device strings.
#include <ATen/ATen.h>
#include <gtest/gtest.h>

#include "hetmoe/core/error.h"
#include "hetmoe/device/registry.h"

namespace hetmoe {
namespace {

TEST(RegistryTest, CpuIsRegisteredLastAndComplete) {
  const auto& list = backends();
  ASSERT_FALSE(list.empty());
  EXPECT_EQ(list.back()->kind(), BackendKind::CPU);
  for (const Backend* b : list) EXPECT_TRUE(b->kernels().complete()) << b->name();
  const auto devs = backend(BackendKind::CPU).devices();
  ASSERT_EQ(devs.size(), 1u);
  EXPECT_GT(devs[0].memory_bytes, 0);
  EXPECT_TRUE(devs[0].details.count("isa"));
}

TEST(RegistryTest, TensorsMapToTheirBackend) {
  EXPECT_EQ(backend_for(at::zeros({1})).kind(), BackendKind::CPU);
}

TEST(RegistryTest, DeviceStrings) {
  EXPECT_EQ(resolve_device("cpu").type(), c10::DeviceType::CPU);
  const bool gpu =
      backends().front()->kind() != BackendKind::CPU && backends().front()->available();
  EXPECT_EQ(resolve_device("auto").type(), gpu ? c10::DeviceType::CUDA : c10::DeviceType::CPU);
  EXPECT_THROW(resolve_device("tpu"), Error);
  EXPECT_THROW(resolve_device("cuda:x"), Error);
  if (!gpu) {
    try {
      resolve_device("cuda");
      FAIL() << "expected an error without a visible GPU";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("cuda"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace hetmoe
