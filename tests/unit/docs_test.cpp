// The user guide's links hold: every `docs/X.md#anchor` and relative `](X.md#anchor)` link in the
// docs and README.md names a file that exists and, with an anchor, a heading in it.
#include <gtest/gtest.h>

#include <cctype>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "test_support.h"

namespace {

namespace fs = std::filesystem;
const fs::path kRoot = KILN_SOURCE_DIR;

std::string read(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// GitHub's anchor for a heading: lower case, spaces to '-', other punctuation dropped.
std::string slug(const std::string& heading) {
  std::string out;
  for (char c : heading) {
    const auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u)) out += static_cast<char>(std::tolower(u));
    else if (c == ' ' || c == '-') out += '-';
    else if (c == '_') out += '_';
  }
  return out;
}

std::set<std::string> anchors(const fs::path& md) {
  std::set<std::string> out;
  std::istringstream in(read(md));
  std::string line;
  bool fence = false;
  while (std::getline(in, line)) {
    if (line.rfind("```", 0) == 0) fence = !fence;
    if (fence || line.empty() || line[0] != '#') continue;
    const size_t text = line.find_first_not_of('#');
    if (text != std::string::npos && line[text] == ' ') out.insert(slug(line.substr(text + 1)));
  }
  return out;
}

TEST(Docs, LinksPointAtFilesAndHeadings) {
  std::vector<fs::path> pages = {kRoot / "README.md"};
  for (const auto& e : fs::directory_iterator(kRoot / "docs"))
    if (e.path().extension() == ".md") pages.push_back(e.path());
  ASSERT_GT(pages.size(), 8u);
  // `docs/page.md#anchor` anywhere, and markdown links `](page.md#anchor)` relative to the page.
  const std::regex docs_ref(R"(docs/([A-Za-z0-9_.-]+\.md)(#([a-z0-9_-]+))?)");
  const std::regex md_link(R"(\]\(([A-Za-z0-9_./-]+\.md)(#([a-z0-9_-]+))?\))");
  size_t checked = 0;
  for (const auto& page : pages) {
    const std::string text = read(page);
    auto check = [&](const fs::path& target, const std::string& anchor) {
      ++checked;
      ASSERT_TRUE(fs::exists(target)) << page.filename() << " links to missing " << target;
      if (!anchor.empty()) {
        EXPECT_TRUE(anchors(target).count(anchor)) << page.filename() << " links to missing heading #" << anchor << " in "
                                                   << target.filename();
      }
    };
    for (std::sregex_iterator it(text.begin(), text.end(), docs_ref), end; it != end; ++it)
      check(kRoot / "docs" / (*it)[1].str(), (*it)[3].str());
    for (std::sregex_iterator it(text.begin(), text.end(), md_link), end; it != end; ++it) {
      const std::string rel = (*it)[1].str();
      if (rel.rfind("docs/", 0) == 0) continue;  // already checked as a docs/ reference
      check(page.parent_path() / rel, (*it)[3].str());
    }
  }
  EXPECT_GT(checked, 20u);
}

TEST(Docs, SlugFollowsGitHub) {
  EXPECT_EQ(slug("Coming from TensorRT"), "coming-from-tensorrt");
  EXPECT_EQ(slug("trtexec → kiln build / run / bench"), "trtexec--kiln-build--run--bench");
  EXPECT_EQ(slug("int8-accuracy"), "int8-accuracy");
}

// docs/cli.md documents every flag of every command, in that command's section: the flags are
// read from the built binary's --help, so a new flag without its line in the reference fails here.
TEST(Docs, CliReferenceHasEveryFlag) {
  const std::string doc = read(kRoot / "docs" / "cli.md");
  const std::vector<std::string> commands = {"inspect", "check", "optimize", "build", "run",
                                             "bench", "compare", "quantize", "debug reduce", "serve", "perf"};
  const std::regex flag(R"((?:^|[ ,])(--[a-z0-9][a-z0-9-]*))");
  for (const auto& cmd : commands) {
    const size_t begin = doc.find("\n## kiln " + cmd + "\n");
    ASSERT_NE(begin, std::string::npos) << "docs/cli.md has no section '## kiln " << cmd << "'";
    const size_t end = doc.find("\n## ", begin + 1);
    const std::string section = doc.substr(begin, end == std::string::npos ? std::string::npos : end - begin);
    const kiln_test::CliResult help = kiln_test::run_kiln_cli(cmd + " --help");
    ASSERT_EQ(help.code, 0) << help.out;
    // Only the Options block: descriptions mention other commands' flags too.
    std::istringstream in(help.out);
    std::string line;
    int flags = 0;
    while (std::getline(in, line)) {
      if (line.rfind("  -", 0) != 0) continue;
      const std::string head = line.substr(0, line.find("  ", 2));
      for (std::sregex_iterator it(head.begin(), head.end(), flag), e; it != e; ++it) {
        const std::string f = (*it)[1].str();
        if (f == "--help") continue;
        ++flags;
        EXPECT_TRUE(std::regex_search(section, std::regex("[`,]" + f + "[^a-z0-9-]")))
            << "docs/cli.md: kiln " << cmd << " lacks " << f;
      }
    }
    EXPECT_GT(flags, 0) << cmd;
  }
}

}  // namespace

