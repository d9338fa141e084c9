// Read-only memory mapping of a whole file, shared by the tensors that view it.
#pragma once
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <vector>

namespace kiln {

class MappedFile {
 public:
  // Throws kIo naming the path if the file cannot be opened or mapped.
  static std::shared_ptr<const MappedFile> open(const std::filesystem::path& path);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }
  size_t size() const { return size_; }

 private:
  MappedFile() = default;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
};

// Reads a whole file into memory; throws kIo naming the path.
std::vector<uint8_t> read_file_bytes(const std::filesystem::path& path);

}  // namespace kiln
