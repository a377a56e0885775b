// The device catalog (configs/devices.yaml): each accelerator's nominal peak, memory and price,
// so measured throughput becomes MFU against the peak and cost per trillion training tokens.
#pragma once

#include <string>
#include <vector>

namespace hetmoe {

struct CatalogDevice {
  std::string name;                // unique key, e.g. "nvidia-h100-sxm"
  std::string description;         // one line for tables
  std::vector<std::string> match;  // all must occur (case-insensitive) in a DeviceInfo name
  double peak_bf16_tflops = 0;     // dense peak; 0: unknown
  double peak_fp32_tflops = 0;     // dense peak without tensor-core TF32; 0: unknown
  double memory_gb = 0;            // device memory in GB (1e9 bytes)
  double price_per_hour = 0;       // per device, in `currency`
  std::string currency;            // e.g. "USD", "RMB"

  // The dense peak in TFLOP/s for a compute dtype ("fp32" | "bf16"); 0 when unknown.
  double peak_tflops(const std::string& dtype) const;
  // Whether a device name reported by a backend (`hetmoe devices`) is this entry.
  bool matches(const std::string& device_name) const;
};

struct DeviceCatalog {
  std::string source;  // the file it was read from
  std::vector<CatalogDevice> devices;

  // The entry named `name`, or nullptr.
  const CatalogDevice* find(const std::string& name) const;
  // The first entry whose `match` fits a backend's device name, or nullptr (entries with an
  // empty `match`, such as the Ling report's anonymous devices, never match).
  const CatalogDevice* match(const std::string& device_name) const;
};

// The nominal peak MFU is measured against, in TFLOP/s in a compute dtype, and where it came from:
// the catalog entry matching the device's name where it has a peak for the dtype (so `hetmoe
// train` and `hetmoe bench` agree), else `table_tflops`, the backend's device table (0: unknown).
struct NominalPeak {
  double tflops = 0;
  std::string source;  // "catalog entry <name>" or "device table"
};
NominalPeak nominal_peak(const DeviceCatalog* catalog, const std::string& device_name,
                         const std::string& dtype, double table_tflops);

// Reads and validates a catalog. Throws hetmoe::Error("[catalog] ...") naming the file, the entry
// and the key on a missing, unknown, mistyped or out-of-range field, or a duplicate name.
DeviceCatalog load_device_catalog(const std::string& path);
DeviceCatalog parse_device_catalog(const std::string& yaml_text, const std::string& source);

// Where `hetmoe bench` and `hetmoe plan` look by default: $HETMOE_DEVICES, else
// configs/devices.yaml under the current directory, else <prefix>/share/hetmoe/configs/devices.yaml
// of the prefix of the running executable or of libhetmoe.so (for a program that embeds hetmoe);
// the first of those when none exists.
std::string default_catalog_path();

}  // namespace hetmoe
