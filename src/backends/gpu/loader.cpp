// Loading libkiln_cuda.so with dlopen (see loader.h).
#include "backends/gpu/loader.h"

#include <dlfcn.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <mutex>
#include <vector>

#include "ir/graph.h"

namespace kiln::gpu {
namespace {

namespace fs = std::filesystem;

struct Module {
  void* handle = nullptr;
  std::string path;
  std::string error;  // why it is not loaded
  kiln_gpu_device_count_fn count = nullptr;
  kiln_gpu_open_device_fn open = nullptr;
};

std::vector<std::string> candidates() {
  std::vector<std::string> out;
  if (const char* env = std::getenv("KILN_CUDA_MODULE"); env && *env) out.push_back(env);
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    const fs::path dir = exe.parent_path();
    for (const fs::path& p : {dir / "libkiln_cuda.so", dir / ".." / "lib" / "libkiln_cuda.so",
                              dir / "src" / "backends" / "cuda" / "libkiln_cuda.so",
                              dir / ".." / "src" / "backends" / "cuda" / "libkiln_cuda.so"})
      if (fs::exists(p, ec)) out.push_back(p.string());
  }
  out.push_back("libkiln_cuda.so");  // the dynamic loader's search
  return out;
}

Module& module() {
  static Module m;
  static std::once_flag once;
  std::call_once(once, [] {
    std::string tried;
    auto note = [&](const std::string& why) { tried += (tried.empty() ? "" : "; ") + why; };
    for (const std::string& path : candidates()) {
      void* h = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
      if (!h) {
        const char* e = dlerror();
        note(e ? e : path);
        continue;
      }
      auto version = reinterpret_cast<kiln_gpu_api_version_fn>(dlsym(h, "kiln_gpu_api_version"));
      m.count = reinterpret_cast<kiln_gpu_device_count_fn>(dlsym(h, "kiln_gpu_device_count"));
      m.open = reinterpret_cast<kiln_gpu_open_device_fn>(dlsym(h, "kiln_gpu_open_device"));
      if (!version || !m.count || !m.open) {
        note(path + " is not a Kiln GPU module of this version (entry points missing)");
        dlclose(h);
        continue;
      }
      if (version() != kApiVersion) {
        note(path + " was built for module interface " + std::to_string(version()) + ", this Kiln needs " +
             std::to_string(kApiVersion) + " (rebuild both from one tree)");
        dlclose(h);
        continue;
      }
      m.handle = h;
      m.path = path;
      return;
    }
    m.error = "the CUDA backend module libkiln_cuda.so could not be loaded (" + tried +
              "); build Kiln with -DKILN_CUDA=ON (needs the CUDA toolkit) or set KILN_CUDA_MODULE to its path";
  });
  return m;
}

std::mutex override_mu;
std::vector<std::shared_ptr<Device>> override_devices;
std::mutex open_mu;
std::map<int, std::shared_ptr<Device>> opened;  // the devices open_device has opened

}  // namespace

void set_device_override(std::vector<std::shared_ptr<Device>> devices) {
  std::lock_guard<std::mutex> lock(override_mu);
  override_devices = std::move(devices);
}

int device_count(std::string* why) {
  {
    std::lock_guard<std::mutex> lock(override_mu);
    if (!override_devices.empty()) return static_cast<int>(override_devices.size());
  }
  Module& m = module();
  if (!m.handle) {
    if (why) *why = m.error;
    return 0;
  }
  char buf[512] = {};
  const int n = m.count(buf, sizeof buf);
  if (n <= 0 && why) *why = std::string("no CUDA GPU: ") + buf;
  return n > 0 ? n : 0;
}

std::shared_ptr<Device> open_device(int index) {
  {
    std::lock_guard<std::mutex> lock(override_mu);
    if (!override_devices.empty()) {
      if (index < 0 || index >= static_cast<int>(override_devices.size()))
        throw Error(ErrorCode::kInvalidArgument, "GPU " + std::to_string(index) + " does not exist; this machine has " +
                                                     std::to_string(override_devices.size()));
      return override_devices[static_cast<size_t>(index)];
    }
  }
  std::lock_guard<std::mutex> lock(open_mu);
  if (auto it = opened.find(index); it != opened.end()) return it->second;
  std::string why;
  const int n = device_count(&why);
  if (n == 0) throw Error(ErrorCode::kUnsupported, why);
  if (index < 0 || index >= n)
    throw Error(ErrorCode::kInvalidArgument, "GPU " + std::to_string(index) + " does not exist; this machine has " +
                                                 std::to_string(n) + " (cuda:0" +
                                                 (n > 1 ? " to cuda:" + std::to_string(n - 1) : std::string()) + ")");
  char err[1024] = {};
  Device* d = module().open(index, err, sizeof err);
  if (!d) throw Error(ErrorCode::kUnsupported, std::string("cannot use GPU ") + std::to_string(index) + ": " + err);
  std::shared_ptr<Device> dev(d);
  opened[index] = dev;
  return dev;
}

std::shared_ptr<Device> any_open_device() {
  {
    std::lock_guard<std::mutex> lock(override_mu);
    if (!override_devices.empty()) return override_devices.front();
  }
  std::lock_guard<std::mutex> lock(open_mu);
  return opened.empty() ? nullptr : opened.begin()->second;
}

int parse_device(const std::string& spec) {
  if (spec.empty() || spec == "cpu") return -1;
  if (spec == "cuda" || spec == "gpu") return 0;
  if (spec.rfind("cuda:", 0) == 0 && spec.size() > 5 && spec.size() < 9 &&
      spec.find_first_not_of("0123456789", 5) == std::string::npos)
    return std::stoi(spec.substr(5));
  throw Error(ErrorCode::kInvalidArgument, "--device: '" + spec + "' is not cpu, cuda or cuda:N");
}

std::string module_path() { return module().path; }

}  // namespace kiln::gpu
