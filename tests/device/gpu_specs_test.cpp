// The GPU facts hetmoe derives from a device's identity: peak FLOP/s for both vendors, where
// at::_grouped_mm is native and which expert FFNs it takes. Checked against the vendors'
// published figures and LibTorch's limits.
#include <gtest/gtest.h>

#include "device/gpu_specs.h"

namespace hetmoe {
namespace {

GpuIdentity nvidia(const char* name, int major, int minor) {
  GpuIdentity g;
  g.kind = BackendKind::CUDA;
  g.name = name;
  g.major = major;
  g.minor = minor;
  return g;
}

GpuIdentity amd(const char* name, const char* arch, int cus, int clock_khz) {
  GpuIdentity g;
  g.kind = BackendKind::ROCm;
  g.name = name;
  g.arch = arch;
  g.major = 9;
  g.multiprocessors = cus;
  g.clock_khz = clock_khz;
  return g;
}

TEST(GpuSpecsTest, NvidiaPeaksComeFromTheDatasheetTableBySku) {
  GpuPeak sxm = gpu_peak(nvidia("NVIDIA H100 80GB HBM3", 9, 0));
  EXPECT_DOUBLE_EQ(sxm.bf16_flops, 989e12);
  EXPECT_DOUBLE_EQ(sxm.fp32_flops, 66.9e12);
  EXPECT_DOUBLE_EQ(gpu_peak(nvidia("NVIDIA H100 PCIe", 9, 0)).bf16_flops, 756e12);
  EXPECT_DOUBLE_EQ(gpu_peak(nvidia("NVIDIA A100-SXM4-80GB", 8, 0)).bf16_flops, 312e12);
  // SKUs of one compute capability: the specific row before the generic one.
  EXPECT_DOUBLE_EQ(gpu_peak(nvidia("NVIDIA H100 NVL", 9, 0)).bf16_flops, 835e12);
  EXPECT_DOUBLE_EQ(gpu_peak(nvidia("NVIDIA L40S", 8, 9)).bf16_flops, 362e12);
  EXPECT_DOUBLE_EQ(gpu_peak(nvidia("NVIDIA L40", 8, 9)).bf16_flops, 181e12);
  EXPECT_DOUBLE_EQ(gpu_peak(nvidia("NVIDIA L4", 8, 9)).bf16_flops, 121e12);
  EXPECT_DOUBLE_EQ(gpu_peak(nvidia("NVIDIA GeForce RTX 4090", 8, 9)).bf16_flops, 165.2e12);
  EXPECT_FALSE(sxm.source.empty());
  GpuPeak old = gpu_peak(nvidia("Tesla P100", 6, 0));
  EXPECT_EQ(old.bf16_flops, 0);
  EXPECT_TRUE(old.source.empty());
}

// AMD's published dense figures: MI300X 1307.4 bf16 / 163.4 fp32 matrix; MI250X 383 bf16 for
// two GCDs of 110 CUs (each GCD is a device: 191.5); MI100 92.3.
TEST(GpuSpecsTest, AmdPeaksScaleComputeUnitsAndClockByTheArchitectureRate) {
  GpuPeak mi300x = gpu_peak(amd("AMD Instinct MI300X", "gfx942:sramecc+:xnack-", 304, 2100000));
  EXPECT_NEAR(mi300x.bf16_flops / 1e12, 1307.4, 0.1);
  EXPECT_NEAR(mi300x.fp32_flops / 1e12, 163.4, 0.1);
  EXPECT_NE(mi300x.source.find("gfx942"), std::string::npos);
  EXPECT_NEAR(
      gpu_peak(amd("AMD Instinct MI250X", "gfx90a:sramecc+:xnack-", 110, 1700000)).bf16_flops /
          1e12,
      191.5, 0.1);
  EXPECT_NEAR(
      gpu_peak(amd("AMD Instinct MI100", "gfx908:sramecc+:xnack-", 120, 1502000)).bf16_flops / 1e12,
      92.3, 0.1);
  // Unknown architectures and missing clocks give no figure rather than a wrong one.
  EXPECT_EQ(gpu_peak(amd("AMD Radeon", "gfx1030", 40, 2500000)).bf16_flops, 0);
  EXPECT_EQ(gpu_peak(amd("AMD Instinct MI300X", "gfx942", 304, 0)).bf16_flops, 0);
}

TEST(GpuSpecsTest, GfxTargetDropsFeatureFlags) {
  EXPECT_EQ(gfx_target("gfx90a:sramecc+:xnack-"), "gfx90a");
  EXPECT_EQ(gfx_target("gfx942"), "gfx942");
  EXPECT_EQ(gfx_target(""), "");
}

TEST(GpuSpecsTest, GroupedMmIsNativeOnHopperAndBlackwell) {
  EXPECT_TRUE(grouped_mm_native(nvidia("H100", 9, 0)));
  EXPECT_TRUE(grouped_mm_native(nvidia("B200", 10, 0)));
  EXPECT_FALSE(grouped_mm_native(nvidia("A100", 8, 0)));
  EXPECT_FALSE(grouped_mm_native(nvidia("RTX 5090", 12, 0)));
}

// LibTorch 2.11's CK grouped GEMM on ROCm reads the group offsets on the host, and its fallback
// copies them there on every call: ROCm keeps the per-expert loop, whatever the architecture.
TEST(GpuSpecsTest, GroupedMmIsNeverNativeOnRocm) {
  EXPECT_FALSE(grouped_mm_native(amd("MI300X", "gfx942:sramecc+:xnack-", 304, 2100000)));
  EXPECT_FALSE(grouped_mm_native(amd("MI355X", "gfx950", 256, 2400000)));
  EXPECT_FALSE(grouped_mm_native(amd("MI250X", "gfx90a:sramecc+:xnack-", 110, 1700000)));
  // HIP reports a compute capability of 9.x for these too: the vendor decides, not the number.
  EXPECT_FALSE(grouped_mm_native(amd("Radeon PRO W7900", "gfx1100", 96, 2500000)));
}

// _grouped_mm wants 16-byte bf16 rows and refuses 1024 groups; more experts take the loop.
TEST(GpuSpecsTest, GroupedMmFitsAlignedRowsAndFewerThan1024Experts) {
  EXPECT_TRUE(grouped_mm_fits(2048, 1408, 64));
  EXPECT_TRUE(grouped_mm_fits(64, 32, 1));
  EXPECT_TRUE(grouped_mm_fits(64, 32, 1023));
  EXPECT_FALSE(grouped_mm_fits(64, 32, 1024));
  EXPECT_FALSE(grouped_mm_fits(64, 32, 4096));
  EXPECT_FALSE(grouped_mm_fits(12, 32, 8));  // hidden not a multiple of 8
  EXPECT_FALSE(grouped_mm_fits(64, 6, 8));   // expert_hidden not a multiple of 8
}

// Where the weight gradients of an expert without tokens are zero-filled: all but sm_90.
TEST(GpuSpecsTest, EmptyGroupsAreTrustedOnlyOnHopper) {
  EXPECT_TRUE(grouped_mm_writes_empty_groups(nvidia("H100", 9, 0)));
  EXPECT_FALSE(grouped_mm_writes_empty_groups(nvidia("B200", 10, 0)));
  EXPECT_FALSE(grouped_mm_writes_empty_groups(amd("MI300X", "gfx942", 304, 2100000)));
}

}  // namespace
}  // namespace hetmoe
