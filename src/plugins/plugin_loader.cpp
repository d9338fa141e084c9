// Plugin registries (the process-wide one, and the staging one a library registers into) and the
// shared-library loader behind kiln::loadPluginLibrary.
#include <dlfcn.h>

#include <filesystem>
#include <mutex>

#include "plugins/plugins.h"

namespace kiln {

namespace {

// Creators registered straight into the process (plugins linked into the program).
class GlobalRegistry final : public IPluginRegistry {
 public:
  bool registerCreator(std::shared_ptr<IPluginCreator> creator) noexcept override {
    try {
      plugins::register_plugin(plugins::describe_creator(std::move(creator), ""));
      return true;
    } catch (const std::exception& e) {
      set_error(e.what());
      return false;
    }
  }
  IPluginCreator* getCreator(const char* name, int32_t version, const char* ns) const noexcept override {
    if (!name) return nullptr;
    const plugins::PluginEntry* p = plugins::find_plugin(ns ? ns : "", name);
    return p && p->version == version ? p->creator.get() : nullptr;
  }
  std::vector<IPluginCreator*> getAllCreators() const override {
    std::vector<IPluginCreator*> out;
    for (const auto* p : plugins::all_plugins()) out.push_back(p->creator.get());
    return out;
  }
  const char* getLastError() const noexcept override {
    thread_local std::string copy;
    std::lock_guard lock(mu_);
    copy = error_;
    return copy.c_str();
  }

 private:
  void set_error(const std::string& e) {
    std::lock_guard lock(mu_);
    error_ = e;
  }
  mutable std::mutex mu_;
  std::string error_;
};

// What a library registers is staged, and committed only when its whole registration succeeds,
// so a failing library leaves nothing behind.
class StagingRegistry final : public IPluginRegistry {
 public:
  explicit StagingRegistry(std::string library) : library_(std::move(library)) {}

  bool registerCreator(std::shared_ptr<IPluginCreator> creator) noexcept override {
    try {
      plugins::PluginEntry e = plugins::describe_creator(std::move(creator), library_);
      plugins::check_not_registered(e);
      for (const auto& s : staged_)
        if (s.domain == e.domain && s.name == e.name)
          throw Error(ErrorCode::kInvalidArgument, "plugin " + e.tactic + " is registered twice by this library");
      staged_.push_back(std::move(e));
      return true;
    } catch (const std::exception& ex) {
      errors_.push_back(ex.what());
      return false;
    }
  }
  IPluginCreator* getCreator(const char* name, int32_t version, const char* ns) const noexcept override {
    if (!name) return nullptr;
    const std::string domain = canonical_domain(ns ? ns : "");
    for (const auto& s : staged_)
      if (s.domain == domain && s.name == name && s.version == version) return s.creator.get();
    return getPluginRegistry().getCreator(name, version, ns);
  }
  std::vector<IPluginCreator*> getAllCreators() const override {
    std::vector<IPluginCreator*> out = getPluginRegistry().getAllCreators();
    for (const auto& s : staged_) out.push_back(s.creator.get());
    return out;
  }
  const char* getLastError() const noexcept override { return errors_.empty() ? "" : errors_.back().c_str(); }

  std::vector<plugins::PluginEntry>& staged() { return staged_; }
  const std::vector<std::string>& errors() const { return errors_; }

 private:
  std::string library_;
  std::vector<plugins::PluginEntry> staged_;
  std::vector<std::string> errors_;
};

struct Loaded {
  std::mutex mu;
  std::vector<std::string> order;        // paths as given
  std::vector<std::string> canonical;    // the same, resolved: loading twice is a no-op
};
Loaded& loaded() {
  static auto* l = new Loaded;
  return *l;
}

std::string dl_error() {
  const char* e = dlerror();
  return e ? e : "unknown dlopen error";
}

}  // namespace

IPluginRegistry& getPluginRegistry() noexcept {
  static auto* r = new GlobalRegistry;
  return *r;
}

void loadPluginLibrary(const std::string& path) {
  Loaded& l = loaded();
  std::lock_guard lock(l.mu);
  const std::string what = "plugin library '" + path + "'";
  std::error_code ec;
  if (path.empty() || !std::filesystem::exists(path, ec))
    throw Error(ErrorCode::kIo, what + " does not exist");
  const std::string canonical = std::filesystem::weakly_canonical(path, ec).string();
  for (const auto& c : l.canonical)
    if (c == canonical) return;

  // dlopen searches the library path for names without a slash; the user gave a file.
  const std::string open_path = path.find('/') == std::string::npos ? "./" + path : path;
  dlerror();
  void* handle = dlopen(open_path.c_str(), RTLD_NOW | RTLD_LOCAL);
  if (!handle) throw Error(ErrorCode::kIo, "cannot load " + what + ": " + dl_error());
  auto fail = [&](ErrorCode code, const std::string& msg) {
    dlclose(handle);
    throw Error(code, what + ": " + msg);
  };
  using AbiFn = int (*)();
  if (auto abi = reinterpret_cast<AbiFn>(dlsym(handle, "kilnPluginAbiVersion")); abi && abi() != KILN_PLUGIN_ABI_VERSION)
    fail(ErrorCode::kInvalidArgument, "built against plugin ABI version " + std::to_string(abi()) + ", this Kiln has " +
                                          std::to_string(KILN_PLUGIN_ABI_VERSION) + ": rebuild it against this Kiln");
  dlerror();
  auto entry = reinterpret_cast<KilnRegisterPluginsFn>(dlsym(handle, "kilnRegisterPlugins"));
  if (!entry)
    fail(ErrorCode::kInvalidArgument,
         "does not export kilnRegisterPlugins (extern \"C\" int kilnRegisterPlugins(kiln::IPluginRegistry*)); "
         "is it a Kiln plugin?");

  StagingRegistry staging(path);
  int rc = 0;
  std::string thrown;
  try {
    rc = entry(&staging);
  } catch (const std::exception& e) {
    thrown = e.what();
  } catch (...) {
    thrown = "an unknown exception";
  }
  std::string why;
  if (!thrown.empty()) why = "kilnRegisterPlugins threw " + thrown;
  else if (rc != 0) why = "kilnRegisterPlugins returned " + std::to_string(rc);
  else if (!staging.errors().empty()) why = "registration failed";
  else if (staging.staged().empty()) why = "kilnRegisterPlugins registered no plugin";
  if (!why.empty()) {
    for (const auto& e : staging.errors()) why += "; " + e;
    staging.staged().clear();  // the creators' code lives in the library: release them before closing it
    fail(ErrorCode::kInvalidArgument, why);
  }
  // Registered creators point into the library, which therefore stays loaded for good.
  for (auto& e : staging.staged()) plugins::register_plugin(std::move(e));
  l.order.push_back(path);
  l.canonical.push_back(canonical);
}

bool loadPluginLibrary(const std::string& path, ILogger& logger) noexcept {
  try {
    loadPluginLibrary(path);
    logger.log(ILogger::Severity::kINFO, ("loaded plugin library '" + path + "'").c_str());
    return true;
  } catch (const std::exception& e) {
    logger.log(ILogger::Severity::kERROR, e.what());
    return false;
  }
}

std::vector<std::string> getLoadedPluginLibraries() {
  Loaded& l = loaded();
  std::lock_guard lock(l.mu);
  return l.order;
}

}  // namespace kiln
