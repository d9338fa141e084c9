// Every error the tools print links to a section of docs/troubleshooting.md, and that section exists.
#include <gtest/gtest.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "kiln/error.h"

namespace kiln {
namespace {

// The "## section" headings of docs/troubleshooting.md.
std::set<std::string> doc_sections() {
  std::ifstream in(std::string(KILN_SOURCE_DIR) + "/docs/troubleshooting.md");
  std::set<std::string> out;
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("## ", 0) == 0) out.insert(line.substr(3));
  return out;
}

TEST(ErrorHelp, EachKindLinksToAnExistingSection) {
  const auto sections = doc_sections();
  ASSERT_FALSE(sections.empty());
  const std::pair<ErrorCode, const char*> kinds[] = {
      {ErrorCode::kInvalidModel, "invalid-model"}, {ErrorCode::kUnsupported, "unsupported"},
      {ErrorCode::kInvalidArgument, "invalid-argument"}, {ErrorCode::kIo, "io-error"},
      {ErrorCode::kInternal, "internal-error"}};
  for (const auto& [code, section] : kinds) {
    Error e(code, "m.onnx: something is wrong");
    EXPECT_EQ(troubleshooting_section(e), section);
    EXPECT_EQ(error_message_with_help(e),
              std::string("m.onnx: something is wrong (see docs/troubleshooting.md#") + section + ")");
    EXPECT_TRUE(sections.count(section)) << "docs/troubleshooting.md has no section '" << section << "'";
  }
}

TEST(ErrorHelp, AMessageThatAlreadyLinksIsKept) {
  Error e(ErrorCode::kUnsupported, "node 'n' (Foo): unknown op (see docs/troubleshooting.md#unknown-op)");
  EXPECT_EQ(troubleshooting_section(e), "unknown-op");
  EXPECT_EQ(error_message_with_help(e), e.what());
}

// Every link written in the sources (src/, tools/, python/) points at a section that exists.
TEST(ErrorHelp, LinksInTheSourcesExist) {
  const auto sections = doc_sections();
  std::vector<std::string> files;
  for (const char* dir : {"/src", "/tools", "/python"}) {
    const std::filesystem::path root = std::string(KILN_SOURCE_DIR) + dir;
    if (!std::filesystem::exists(root)) continue;
    for (const auto& entry : std::filesystem::recursive_directory_iterator(root))
      if (entry.is_regular_file() && entry.path().filename() != "error_help.cpp") files.push_back(entry.path().string());
  }
  ASSERT_GT(files.size(), 50u);
  size_t links = 0;
  for (const std::string& file : files) {
    std::ifstream in(file);
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string text = ss.str();
    const std::string key = "docs/troubleshooting.md#";
    for (size_t at = text.find(key); at != std::string::npos; at = text.find(key, at + 1)) {
      size_t b = at + key.size(), e = b;
      // Sections are lower-case words; "#" alone or "#SECTION" is code building a link, not a link.
      while (e < text.size() && (std::islower(static_cast<unsigned char>(text[e])) ||
                                 std::isdigit(static_cast<unsigned char>(text[e])) || text[e] == '-'))
        ++e;
      if (e == b) continue;
      EXPECT_TRUE(sections.count(text.substr(b, e - b))) << file << " links to missing section " << text.substr(b, e - b);
      ++links;
    }
  }
  EXPECT_GE(links, 3u);
}

}  // namespace
}  // namespace kiln
