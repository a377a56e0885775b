// The device catalog: the shipped configs/devices.yaml, matching backend device names, and a
// one-line error naming the file, line, entry and key for every kind of bad entry.
#include <gtest/gtest.h>

#include <string>

#include "hetmoe/bench/catalog.h"
#include "hetmoe/core/error.h"

namespace hetmoe {
namespace {

DeviceCatalog shipped() {
  return load_device_catalog(std::string(HETMOE_SOURCE_DIR) + "/configs/devices.yaml");
}

TEST(CatalogTest, ShippedCatalogHasTheLingReportDevices) {
  const DeviceCatalog c = shipped();
  // Table 1 of the Ling report: peak TFLOPS, memory GB, RMB per hour.
  const struct {
    const char* name;
    double peak, memory, price;
  } table[] = {{"ling-A", 370, 64, 7},
               {"ling-B", 120, 96, 4.5},
               {"ling-C", 312, 80, 10},
               {"ling-D", 989, 80, 27.5},
               {"ling-E", 147, 96, 5.64}};
  for (const auto& row : table) {
    const CatalogDevice* d = c.find(row.name);
    ASSERT_NE(d, nullptr) << row.name;
    EXPECT_DOUBLE_EQ(d->peak_tflops("bf16"), row.peak) << row.name;
    EXPECT_DOUBLE_EQ(d->memory_gb, row.memory) << row.name;
    EXPECT_DOUBLE_EQ(d->price_per_hour, row.price) << row.name;
    EXPECT_EQ(d->currency, "RMB");
    EXPECT_TRUE(d->match.empty()) << "anonymous devices never match a real one";
  }
}

TEST(CatalogTest, MatchesDeviceNamesAsBackendsReportThem) {
  const DeviceCatalog c = shipped();
  ASSERT_NE(c.match("NVIDIA H100 80GB HBM3"), nullptr);
  EXPECT_EQ(c.match("NVIDIA H100 80GB HBM3")->name, "nvidia-h100-sxm");
  EXPECT_EQ(c.match("NVIDIA H100 PCIe")->name, "nvidia-h100-pcie");
  EXPECT_EQ(c.match("NVIDIA H100 NVL")->name, "nvidia-h100-nvl");
  EXPECT_EQ(c.match("NVIDIA H200")->name, "nvidia-h200");
  EXPECT_EQ(c.match("AMD Instinct MI300X")->name, "amd-mi300x");
  ASSERT_NE(c.match("AMD EPYC 9B45 (2 cores)"), nullptr);
  EXPECT_EQ(c.match("amd epyc (2 cores)")->name, "cpu-epyc-2vcpu");  // case-insensitive
  EXPECT_EQ(c.match("Intel(R) Xeon(R) Processor (2 cores)")->name, "cpu-xeon-amx-2vcpu");
  // Every match string must occur: a 4-core EPYC is another price class.
  EXPECT_EQ(c.match("AMD EPYC (4 cores)"), nullptr);
  EXPECT_EQ(c.match("Some Future Accelerator"), nullptr);
}

TEST(CatalogTest, PeakByDtypeIsZeroWhenUnknown) {
  const DeviceCatalog c = shipped();
  EXPECT_GT(c.find("nvidia-a100-80gb")->peak_tflops("fp32"), 0);
  EXPECT_EQ(c.find("ling-A")->peak_tflops("fp32"), 0);
  EXPECT_EQ(c.find("ling-A")->peak_tflops("fp8"), 0);
}

std::string error_of(const std::string& yaml) {
  try {
    parse_device_catalog(yaml, "cat.yaml");
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

const char* kGood =
    "  - name: x\n    peak_tflops: {bf16: 100}\n    memory_gb: 80\n    price_per_hour: 2\n"
    "    currency: USD\n";

TEST(CatalogTest, NominalPeakPrefersTheCatalogEntryOfTheDevice) {
  const DeviceCatalog c = shipped();
  const NominalPeak h100 = nominal_peak(&c, "NVIDIA H100 PCIe", "bf16", 900);
  EXPECT_DOUBLE_EQ(h100.tflops, 756);
  EXPECT_EQ(h100.source, "catalog entry nvidia-h100-pcie");
  // No entry, no catalog, or an entry without the dtype's peak: the device table's.
  EXPECT_DOUBLE_EQ(nominal_peak(&c, "Some NPU", "bf16", 123).tflops, 123);
  EXPECT_EQ(nominal_peak(nullptr, "NVIDIA H100 PCIe", "bf16", 0).source, "device table");
  const DeviceCatalog bf16_only = parse_device_catalog(
      "devices:\n  - name: x\n    match: [NPU]\n    peak_tflops: {bf16: 100}\n"
      "    memory_gb: 80\n    price_per_hour: 2\n    currency: USD\n",
      "cat.yaml");
  EXPECT_DOUBLE_EQ(nominal_peak(&bf16_only, "Some NPU", "bf16", 7).tflops, 100);
  EXPECT_DOUBLE_EQ(nominal_peak(&bf16_only, "Some NPU", "fp32", 7).tflops, 7);
}

TEST(CatalogTest, ParsesAMinimalEntry) {
  const DeviceCatalog c = parse_device_catalog(std::string("devices:\n") + kGood, "cat.yaml");
  ASSERT_EQ(c.devices.size(), 1u);
  EXPECT_EQ(c.devices[0].name, "x");
  EXPECT_DOUBLE_EQ(c.devices[0].peak_bf16_tflops, 100);
  EXPECT_EQ(c.source, "cat.yaml");
}

TEST(CatalogTest, BadEntriesAreNamedWithFileLineAndKey) {
  struct Case {
    std::string yaml, expect;
  } cases[] = {
      {"devices: []\n", "'devices' must be a non-empty list"},
      {"nodevices: 1\n", "a mapping with a 'devices' list"},
      {"schema: hetmoe-devices/9\ndevices:\n" + std::string(kGood), "hetmoe-devices/1"},
      {"devices:\n" + std::string(kGood) + "extra: 1\n", "unknown top-level key 'extra'"},
      {"devices:\n  - name: y\n    peak_tflops: {bf16: 1}\n    memory_gb: 8\n    currency: USD\n",
       "devices[0] 'y': missing 'price_per_hour'"},
      {"devices:\n  - name: y\n    peak_tflops: {bf16: 1}\n    memory_gb: -8\n"
       "    price_per_hour: 1\n    currency: USD\n",
       "cat.yaml:4: devices[0] 'y': 'memory_gb' must be > 0"},
      {"devices:\n  - name: y\n    peak_tflops: {bf16: 1}\n    memory_gb: lots\n"
       "    price_per_hour: 1\n    currency: USD\n",
       "'memory_gb' must be a number, not 'lots'"},
      {"devices:\n  - name: y\n    peak_tflops: {fp7: 1}\n    memory_gb: 8\n"
       "    price_per_hour: 1\n    currency: USD\n",
       "unknown dtype 'fp7'"},
      {"devices:\n  - name: y\n    peak_tflops: {bf16: 1}\n    memory_gb: 8\n"
       "    price_per_hour: 1\n    currency: USD\n    colour: red\n",
       "cat.yaml:7: devices[0] 'y': unknown key 'colour'"},
      {"devices:\n" + std::string(kGood) + kGood, "devices[1] 'x': the name is used twice"},
      {"devices:\n  - just a string\n", "devices[0] must be a mapping"},
      {"devices: [\n", "not valid YAML"},
  };
  for (const Case& c : cases) {
    const std::string what = error_of(c.yaml);
    EXPECT_NE(what.find("[catalog]"), std::string::npos) << what;
    EXPECT_NE(what.find(c.expect), std::string::npos)
        << "expected '" << c.expect << "' in: " << what;
    EXPECT_EQ(what.find('\n'), std::string::npos) << "one line: " << what;
  }
}

TEST(CatalogTest, MissingFileIsNamed) {
  try {
    load_device_catalog("/nonexistent/devices.yaml");
    FAIL() << "no error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("/nonexistent/devices.yaml"), std::string::npos);
  }
}

}  // namespace
}  // namespace hetmoe
