// kiln serve model configs: a full Triton-style config.pbtxt parsed field by field, the Kiln
// extensions, every validation error with its message (file:line:column for syntax errors and
// unknown fields), and the check against a model with Triton's auto-complete.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "kiln/error.h"
#include "onnx/onnx_import.h"
#include "serve/model_config.h"
#include "test_support.h"

namespace fs = std::filesystem;
using namespace kiln;
using namespace kiln::serve;
using kiln_test::ModelBuilder;

namespace {

// Expects parse_model_config(text) to throw kInvalidArgument with every needle in the message.
void expect_config_error(const std::string& text, const std::vector<std::string>& needles) {
  try {
    parse_model_config(text, "models/m/config.pbtxt", "m");
    ADD_FAILURE() << "expected an error for:\n" << text;
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
    const std::string msg = e.what();
    EXPECT_NE(msg.find("models/m/config.pbtxt"), std::string::npos) << msg;
    for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "missing '" << n << "' in: " << msg;
  }
}

const char* kFullConfig = R"pb(
  name: "resnet"
  platform: "onnxruntime_onnx"
  max_batch_size: 8 input
  [ {
    name: "images"
    data_type: TYPE_FP32
    dims: [ 3, -1, 224 ]
  }
    , {
      name: "mask"
      data_type: TYPE_BOOL
      dims: [ 1 ]
      optional: false
    }]
  output {
    name: "logits"
    data_type: TYPE_FP16
    dims: [ 1000 ]
  }
  output {
    name: "ids"
    data_type: TYPE_INT64
    dims: [ -1 ]
  } instance_group
  [ { name: "cpu_pool" count: 2 kind: KIND_CPU }
    , { kind: KIND_AUTO }]
  dynamic_batching {
    preferred_batch_size: [ 4, 8 ]
    max_queue_delay_microseconds: 100
    preserve_ordering: true
    priority_levels: 3
    default_priority_level: 2
    default_queue_policy {
      timeout_action: DELAY
      default_timeout_microseconds: 5000
      allow_timeout_override: true
      max_queue_size: 64
    }
    priority_queue_policy {
      key: 1
      value: { max_queue_size: 16 }
    }
    priority_queue_policy {
      key: 3
      value: { timeout_action: REJECT default_timeout_microseconds: 200 }
    }
  }
  version_policy: { latest: { num_versions: 2 } } model_warmup
  [ {
    name: "zeros"
    batch_size: 4
    count: 3
    inputs {
      key: "images"
      value: {
        data_type: TYPE_FP32
        dims: [ 3, 16, 224 ]
        zero_data: true
      }
    }
    inputs {
      key: "mask"
      value: {
        data_type: TYPE_BOOL
        dims: [ 1 ]
        random_data: true
      }
    }
  }
    , {
      name: "file"
      inputs {
        key: "images"
        value: {
          data_type: TYPE_FP32
          dims: [ 3, 8, 224 ]
          input_data_file: "img.raw"
        }
      }
    }]
  parameters {
    key: "note"
    value: { string_value: "resnet-50 v1.5" }
  }
  parameters: {
    key: "owner"
    value: { string_value: "vision" }
  }
  kiln {
    memory_budget_bytes: 268435456
    threads_per_instance: 2
    split_batches: false
    build {
      precision: "bf16"
      opt_level: 2
      timing_cache: "caches/tc.json"
      input_range {
        name: "images"
        min: [ 3, 8, 224 ]
        opt: [ 3, 16, 224 ]
        max: [ 3, 32, 224 ]
      }
    }
  }
)pb";

TEST(ServeConfig, ParsesEveryFieldOfATritonConfig) {
  const ModelConfig c = parse_model_config(kFullConfig, "repo/resnet/config.pbtxt", "resnet");
  EXPECT_EQ(c.source, "repo/resnet/config.pbtxt");
  EXPECT_EQ(c.name, "resnet");
  EXPECT_EQ(c.platform, "onnxruntime_onnx");
  EXPECT_EQ(c.backend, "");
  EXPECT_EQ(c.max_batch_size, 8);

  ASSERT_EQ(c.inputs.size(), 2u);
  EXPECT_EQ(c.inputs[0].name, "images");
  EXPECT_EQ(c.inputs[0].data_type, DataType::kFP32);
  EXPECT_EQ(c.inputs[0].dims, (std::vector<int64_t>{3, -1, 224}));
  EXPECT_FALSE(c.inputs[0].optional);
  EXPECT_EQ(c.inputs[1].name, "mask");
  EXPECT_EQ(c.inputs[1].data_type, DataType::kBool);
  EXPECT_EQ(c.inputs[1].dims, (std::vector<int64_t>{1}));
  ASSERT_EQ(c.outputs.size(), 2u);
  EXPECT_EQ(c.outputs[0].name, "logits");
  EXPECT_EQ(c.outputs[0].data_type, DataType::kFP16);
  EXPECT_EQ(c.outputs[0].dims, (std::vector<int64_t>{1000}));
  EXPECT_EQ(c.outputs[1].data_type, DataType::kInt64);
  EXPECT_EQ(c.outputs[1].dims, (std::vector<int64_t>{-1}));

  ASSERT_EQ(c.instance_groups.size(), 2u);
  EXPECT_EQ(c.instance_groups[0].name, "cpu_pool");
  EXPECT_EQ(c.instance_groups[0].count, 2);
  EXPECT_EQ(c.instance_groups[0].kind, InstanceKind::kCpu);
  EXPECT_EQ(c.instance_groups[1].name, "resnet_1");  // Triton's default: <model>_<group index>
  EXPECT_EQ(c.instance_groups[1].count, 1);
  EXPECT_EQ(c.instance_groups[1].kind, InstanceKind::kAuto);
  EXPECT_EQ(c.instance_count(), 3);

  ASSERT_TRUE(c.dynamic_batching.has_value());
  const DynamicBatching& d = *c.dynamic_batching;
  EXPECT_EQ(d.preferred_batch_size, (std::vector<int>{4, 8}));
  EXPECT_EQ(d.max_queue_delay_microseconds, 100u);
  EXPECT_TRUE(d.preserve_ordering);
  EXPECT_EQ(d.priority_levels, 3u);
  EXPECT_EQ(d.default_priority_level, 2u);
  EXPECT_EQ(d.default_queue_policy.timeout_action, TimeoutAction::kDelay);
  EXPECT_EQ(d.default_queue_policy.default_timeout_microseconds, 5000u);
  EXPECT_TRUE(d.default_queue_policy.allow_timeout_override);
  EXPECT_EQ(d.default_queue_policy.max_queue_size, 64u);
  ASSERT_EQ(d.priority_queue_policy.size(), 2u);
  EXPECT_EQ(d.priority_queue_policy.at(1).max_queue_size, 16u);
  EXPECT_EQ(d.priority_queue_policy.at(1).timeout_action, TimeoutAction::kReject);
  EXPECT_EQ(d.priority_queue_policy.at(3).default_timeout_microseconds, 200u);
  EXPECT_FALSE(d.priority_queue_policy.at(3).allow_timeout_override);

  EXPECT_EQ(c.version_policy.kind, VersionPolicy::Kind::kLatest);
  EXPECT_EQ(c.version_policy.num_versions, 2u);

  ASSERT_EQ(c.warmups.size(), 2u);
  EXPECT_EQ(c.warmups[0].name, "zeros");
  EXPECT_EQ(c.warmups[0].batch_size, 4u);
  EXPECT_EQ(c.warmups[0].count, 3u);
  ASSERT_EQ(c.warmups[0].inputs.size(), 2u);
  EXPECT_EQ(c.warmups[0].inputs.at("images").source, WarmupInput::Source::kZero);
  EXPECT_EQ(c.warmups[0].inputs.at("images").dims, (std::vector<int64_t>{3, 16, 224}));
  EXPECT_EQ(c.warmups[0].inputs.at("mask").source, WarmupInput::Source::kRandom);
  EXPECT_EQ(c.warmups[0].inputs.at("mask").data_type, DataType::kBool);
  EXPECT_EQ(c.warmups[1].batch_size, 1u);  // defaults
  EXPECT_EQ(c.warmups[1].count, 1u);
  EXPECT_EQ(c.warmups[1].inputs.at("images").source, WarmupInput::Source::kFile);
  EXPECT_EQ(c.warmups[1].inputs.at("images").input_data_file, "img.raw");

  EXPECT_EQ(c.parameters, (std::map<std::string, std::string>{{"note", "resnet-50 v1.5"}, {"owner", "vision"}}));

  EXPECT_EQ(c.kiln.memory_budget_bytes, 268435456u);
  EXPECT_EQ(c.kiln.threads_per_instance, 2);
  EXPECT_FALSE(c.kiln.split_batches);
  EXPECT_EQ(c.kiln.build.precision, "bf16");
  EXPECT_EQ(c.kiln.build.opt_level, 2);
  EXPECT_EQ(c.kiln.build.timing_cache, "caches/tc.json");
  ASSERT_EQ(c.kiln.build.input_ranges.size(), 1u);
  EXPECT_EQ(c.kiln.build.input_ranges[0].name, "images");
  EXPECT_EQ(c.kiln.build.input_ranges[0].min, (std::vector<int64_t>{3, 8, 224}));
  EXPECT_EQ(c.kiln.build.input_ranges[0].opt, (std::vector<int64_t>{3, 16, 224}));
  EXPECT_EQ(c.kiln.build.input_ranges[0].max, (std::vector<int64_t>{3, 32, 224}));
}

TEST(ServeConfig, DefaultsOfAMinimalConfig) {
  const ModelConfig c = parse_model_config("max_batch_size: 4\n", "m/config.pbtxt", "m");
  EXPECT_EQ(c.name, "m");  // taken from the folder
  EXPECT_EQ(c.max_batch_size, 4);
  EXPECT_TRUE(c.inputs.empty());
  EXPECT_FALSE(c.dynamic_batching.has_value());
  ASSERT_EQ(c.instance_groups.size(), 1u);
  EXPECT_EQ(c.instance_groups[0].name, "m_0");
  EXPECT_EQ(c.instance_count(), 1);
  EXPECT_EQ(c.version_policy.kind, VersionPolicy::Kind::kLatest);
  EXPECT_EQ(c.version_policy.num_versions, 1u);
  EXPECT_EQ(c.kiln.memory_budget_bytes, 0u);
  EXPECT_TRUE(c.kiln.split_batches);
  EXPECT_EQ(c.kiln.build.precision, "fp32");
  EXPECT_EQ(c.kiln.build.opt_level, 3);

  const ModelConfig all =
      parse_model_config("name: \"m\" version_policy { all {} } dynamic_batching {}\nmax_batch_size: 2", "x", "");
  EXPECT_EQ(all.version_policy.kind, VersionPolicy::Kind::kAll);
  ASSERT_TRUE(all.dynamic_batching.has_value());
  EXPECT_EQ(all.dynamic_batching->priority_levels, 0u);
  EXPECT_EQ(all.dynamic_batching->default_queue_policy.timeout_action, TimeoutAction::kReject);
  const ModelConfig spec =
      parse_model_config("name: \"m\" version_policy { specific { versions: [5, 1, 5] } }", "x", "");
  EXPECT_EQ(spec.version_policy.kind, VersionPolicy::Kind::kSpecific);
  EXPECT_EQ(spec.version_policy.versions, (std::vector<int64_t>{1, 5}));
  // The platforms and backends Kiln serves.
  for (const char* text : {"platform: \"kiln\"", "platform: \"onnx\"", "backend: \"onnxruntime\"", "backend: \"kiln\""})
    EXPECT_NO_THROW(parse_model_config(text, "x", "m")) << text;
}

TEST(ServeConfig, SyntaxErrorsAndUnknownFieldsNameTheLine) {
  expect_config_error("name: \"m\"\nmax_batch_size: 4\nsequence_batching { }\n",
                      {"config.pbtxt:3:", "unknown field \"sequence_batching\" in ModelConfig"});
  expect_config_error("max_batch_size: 4\ndynamic_batching {\n  max_queue_delay: 10\n}\n",
                      {"config.pbtxt:3:3:", "unknown field \"max_queue_delay\" in ModelDynamicBatching"});
  expect_config_error("input { name: \"x\" data_type: TYPE_FP32 dims: [1] reshape: { shape: [1] } }\n",
                      {"config.pbtxt:1:", "unknown field \"reshape\" in ModelInput"});
  expect_config_error("name: \"m\"\n\nmax_batch_size: four\n", {"config.pbtxt:3:"});
  expect_config_error("input { name: \"x\" data_type: TYPE_FP128 }", {"config.pbtxt:1:", "TYPE_FP128"});
  expect_config_error("dynamic_batching { default_queue_policy { max_queue_size: -1 } }", {"config.pbtxt:1:"});
  expect_config_error("name: \"m\"\ninstance_group { kind: KIND_GPU2 }", {"config.pbtxt:2:", "KIND_GPU2"});
  expect_config_error("name: \"m\" {", {"config.pbtxt:1:"});
}

TEST(ServeConfig, ValidationErrorsNameTheField) {
  const std::vector<std::pair<std::string, std::vector<std::string>>> cases = {
      {"name: \"other\"", {"name \"other\" differs from the model's folder \"m\""}},
      {"platform: \"tensorrt_plan\"", {"platform \"tensorrt_plan\""}},
      {"backend: \"python\"", {"backend \"python\""}},
      {"max_batch_size: -1", {"max_batch_size -1 is negative"}},
      {"input { data_type: TYPE_FP32 dims: [1] }", {"an input has no name"}},
      {"input { name: \"x\" data_type: TYPE_FP32 dims: [1] } input { name: \"x\" data_type: TYPE_INT64 dims: [2] }",
       {"input \"x\" is listed twice"}},
      {"output { name: \"y\" data_type: TYPE_FP32 } output { name: \"y\" data_type: TYPE_FP32 }",
       {"output \"y\" is listed twice"}},
      {"input { name: \"x\" dims: [1] }", {"input \"x\"", "data_type is missing"}},
      {"input { name: \"s\" data_type: TYPE_STRING dims: [1] }", {"input \"s\"", "TYPE_STRING"}},
      {"input { name: \"x\" data_type: TYPE_FP32 dims: [3, 0] }", {"input \"x\"", "dims [3,0]", "0 at 1"}},
      {"output { name: \"y\" data_type: TYPE_FP32 dims: [-2] }", {"output \"y\"", "dims [-2]"}},
      {"instance_group { count: 0 }", {"instance_group \"m_0\"", "count 0 must be at least 1"}},
      {"instance_group { name: \"g\" count: -2 }", {"instance_group \"g\"", "count -2"}},
      {"instance_group { kind: KIND_GPU gpus: [0, 0] }", {"instance_group \"m_0\"", "gpus lists GPU 0 twice"}},
      {"instance_group { kind: KIND_CPU gpus: [0] }", {"gpus is set"}},
      {"dynamic_batching { }", {"dynamic_batching needs max_batch_size > 0"}},
      {"max_batch_size: 4 dynamic_batching { preferred_batch_size: [2, 8] }",
       {"preferred_batch_size 8 is outside [1, max_batch_size 4]"}},
      {"max_batch_size: 4 dynamic_batching { preferred_batch_size: [0] }", {"preferred_batch_size 0 is outside"}},
      {"max_batch_size: 4 dynamic_batching { preferred_batch_size: [2, 2] }",
       {"preferred_batch_size 2 is listed twice"}},
      {"max_batch_size: 4 dynamic_batching { priority_levels: 2 default_priority_level: 3 }",
       {"default_priority_level 3 is outside [1, priority_levels 2]"}},
      {"max_batch_size: 4 dynamic_batching { priority_levels: 2 }", {"default_priority_level 0 is outside"}},
      {"max_batch_size: 4 dynamic_batching { default_priority_level: 1 }",
       {"default_priority_level 1 is set but priority_levels is 0"}},
      {"max_batch_size: 4 dynamic_batching { priority_levels: 2 default_priority_level: 1 "
       "priority_queue_policy { key: 3 value { max_queue_size: 1 } } }",
       {"priority_queue_policy level 3 is outside [1, priority_levels 2]"}},
      {"max_batch_size: 4 dynamic_batching { priority_queue_policy { key: 1 value { } } }",
       {"priority_queue_policy is set but priority_levels is 0"}},
      {"version_policy { specific { } }", {"version_policy: specific lists no versions"}},
      {"version_policy { specific { versions: [0] } }", {"specific version 0 is not a positive number"}},
      {"version_policy { latest { num_versions: 0 } }", {"latest num_versions must be at least 1"}},
      {"max_batch_size: 4 model_warmup { name: \"w\" batch_size: 8 inputs { key: \"x\" value { data_type: TYPE_FP32 "
       "dims: [1] zero_data: true } } }",
       {"model_warmup \"w\"", "batch_size 8 exceeds max_batch_size 4"}},
      {"model_warmup { name: \"w\" batch_size: 2 inputs { key: \"x\" value { data_type: TYPE_FP32 dims: [1] "
       "zero_data: true } } }",
       {"batch_size 2 exceeds max_batch_size 0"}},
      {"model_warmup { name: \"w\" }", {"model_warmup \"w\": inputs is empty"}},
      {"model_warmup { inputs { key: \"x\" value { data_type: TYPE_FP32 dims: [1] zero_data: true } } }",
       {"a model_warmup has no name"}},
      {"model_warmup { name: \"w\" inputs { key: \"x\" value { data_type: TYPE_FP32 dims: [1] } } }",
       {"input \"x\"", "set one of zero_data, random_data or input_data_file"}},
      {"model_warmup { name: \"w\" inputs { key: \"x\" value { data_type: TYPE_FP32 dims: [-1] zero_data: true } } }",
       {"dims [-1]"}},
      {"model_warmup { name: \"w\" inputs { key: \"x\" value { data_type: TYPE_FP32 dims: [1] "
       "input_data_file: \"../../etc/passwd\" } } }",
       {"input_data_file \"../../etc/passwd\" must be a relative path"}},
      {"model_warmup { name: \"w\" count: 0 inputs { key: \"x\" value { data_type: TYPE_FP32 dims: [1] zero_data: true "
       "} } }",
       {"count must be at least 1"}},
      {"kiln { threads_per_instance: -1 }", {"kiln: threads_per_instance -1 is negative"}},
      {"kiln { build { precision: \"int8\" } }", {"precision \"int8\"", "kiln build --int8"}},
      {"kiln { build { opt_level: 6 } }", {"opt_level 6 is outside [0, 5]"}},
      {"kiln { build { timing_cache: \"/tmp/tc.json\" } }", {"timing_cache \"/tmp/tc.json\" must be a relative path"}},
      {"kiln { build { input_range { name: \"x\" min: [1] opt: [4] max: [2] } } }",
       {"input_range \"x\"", "1 <= min <= opt <= max at dim 0"}},
      {"kiln { build { input_range { name: \"x\" min: [1] opt: [1, 2] max: [2] } } }", {"different lengths"}},
      {"kiln { build { input_range { name: \"x\" min: [1] opt: [1] max: [1] } input_range { name: \"x\" } } }",
       {"input_range \"x\" is listed twice"}},
  };
  for (const auto& [text, needles] : cases) {
    SCOPED_TRACE(text);
    expect_config_error(text, needles);
  }
  // The name alone is required when there is no folder to take it from.
  EXPECT_THROW(parse_model_config("max_batch_size: 1", "x", ""), Error);
}

TEST(ServeConfig, DataTypesMapToKilnDtypes) {
  EXPECT_EQ(data_type_name(DataType::kFP32), "TYPE_FP32");
  EXPECT_EQ(data_type_name(DataType::kBF16), "TYPE_BF16");
  EXPECT_EQ(to_dtype(DataType::kFP32), DType::kF32);
  EXPECT_EQ(to_dtype(DataType::kInt64), DType::kI64);
  EXPECT_EQ(to_dtype(DataType::kUInt8), DType::kU8);
  EXPECT_EQ(to_dtype(DataType::kBool), DType::kBool);
  EXPECT_EQ(to_dtype(DataType::kFP16), DType::kF16);
  EXPECT_EQ(to_dtype(DataType::kBF16), DType::kBF16);
  EXPECT_EQ(to_dtype(DataType::kString), std::nullopt);
  EXPECT_EQ(from_dtype(DType::kI8), DataType::kInt8);
  EXPECT_EQ(from_dtype(DType::kF64), DataType::kFP64);
  EXPECT_EQ(from_dtype(DType::kUndefined), DataType::kInvalid);
}

// x: f32[batch, 4], t: i64[batch, seq] -> y = Relu(x + w): f32[batch, 4], z = Identity(t).
Model two_input_model() {
  ModelBuilder b(17);
  b.input("x", DType::kF32, Shape{Dim::sym("batch"), Dim(4)});
  b.input("t", DType::kI64, Shape{Dim::sym("batch"), Dim::sym("seq")});
  b.init("w", Tensor::from_vector<float>({4}, {1, -2, 3, -4}));
  b.node("Add", {"x", "w"}, {"s"}, {}, "add0");
  b.node("Relu", {"s"}, {"y"}, {}, "relu0");
  b.node("Identity", {"t"}, {"z"}, {}, "id0");
  b.m.graph.outputs = {"y", "z"};
  return b.m;
}

class ServeModelCheck : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("kiln_serve_config_test_" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    // Through an ONNX file, as the repository reads it: output types are not declared there.
    save_onnx(two_input_model(), dir_ / "model.onnx");
    model_ = load_onnx(dir_ / "model.onnx");
  }
  void TearDown() override { fs::remove_all(dir_); }

  void expect_check_error(const std::string& text, const std::vector<std::string>& needles,
                          const EngineInfo* info = nullptr) {
    ModelConfig c = parse_model_config(text, "repo/m/config.pbtxt", "m");
    try {
      check_against_model(c, model_, info);
      ADD_FAILURE() << "expected an error for:\n" << text;
    } catch (const Error& e) {
      EXPECT_EQ(e.code(), ErrorCode::kInvalidArgument);
      const std::string msg = e.what();
      EXPECT_NE(msg.find("repo/m/config.pbtxt"), std::string::npos) << msg;
      for (const auto& n : needles) EXPECT_NE(msg.find(n), std::string::npos) << "missing '" << n << "' in: " << msg;
    }
  }

  fs::path dir_;
  Model model_;
};

TEST_F(ServeModelCheck, MinimalConfigIsCompletedFromTheModel) {
  ModelConfig c = parse_model_config("name: \"m\"\nmax_batch_size: 8\n", "repo/m/config.pbtxt", "m");
  check_against_model(c, model_);
  ASSERT_EQ(c.inputs.size(), 2u);
  EXPECT_EQ(c.inputs[0].name, "x");
  EXPECT_EQ(c.inputs[0].data_type, DataType::kFP32);
  EXPECT_EQ(c.inputs[0].dims, (std::vector<int64_t>{4}));  // the batch dim is left out
  EXPECT_EQ(c.inputs[1].name, "t");
  EXPECT_EQ(c.inputs[1].data_type, DataType::kInt64);
  EXPECT_EQ(c.inputs[1].dims, (std::vector<int64_t>{-1}));
  ASSERT_EQ(c.outputs.size(), 2u);
  EXPECT_EQ(c.outputs[0].name, "y");
  EXPECT_EQ(c.outputs[0].data_type, DataType::kFP32);
  EXPECT_EQ(c.outputs[0].dims, (std::vector<int64_t>{4}));
  EXPECT_EQ(c.outputs[1].name, "z");
  EXPECT_EQ(c.outputs[1].dims, (std::vector<int64_t>{-1}));

  // Without batching the dims are the model's whole shape.
  ModelConfig flat = parse_model_config("max_batch_size: 0", "repo/m/config.pbtxt", "m");
  check_against_model(flat, model_);
  EXPECT_EQ(flat.inputs[0].dims, (std::vector<int64_t>{-1, 4}));
  EXPECT_EQ(flat.outputs[0].dims, (std::vector<int64_t>{-1, 4}));
}

TEST_F(ServeModelCheck, MatchingConfigPasses) {
  // A fixed size where the model is dynamic narrows it; outputs may be a subset.
  ModelConfig c = parse_model_config(
      "max_batch_size: 4\n"
      "input { name: \"t\" data_type: TYPE_INT64 dims: [16] }\n"
      "input { name: \"x\" data_type: TYPE_FP32 dims: [4] }\n"
      "output { name: \"y\" data_type: TYPE_FP32 dims: [4] }\n"
      "model_warmup { name: \"w\" batch_size: 2 inputs { key: \"x\" value { data_type: TYPE_FP32 dims: [4] zero_data: "
      "true } }"
      " inputs { key: \"t\" value { data_type: TYPE_INT64 dims: [16] random_data: true } } }\n",
      "repo/m/config.pbtxt", "m");
  ASSERT_NO_THROW(check_against_model(c, model_));
  ASSERT_EQ(c.outputs.size(), 1u);
  EXPECT_EQ(c.inputs[0].dims, (std::vector<int64_t>{16}));
}

TEST_F(ServeModelCheck, MismatchesAreErrors) {
  const std::string x = "input { name: \"x\" data_type: TYPE_FP32 dims: [4] }\n";
  const std::string t = "input { name: \"t\" data_type: TYPE_INT64 dims: [-1] }\n";
  expect_check_error("max_batch_size: 4\n" + x, {"the model's input \"t\" is missing from the config"});
  expect_check_error("max_batch_size: 4\n" + x + t + "input { name: \"q\" data_type: TYPE_FP32 dims: [1] }",
                     {"input \"q\" is not an input of the model", "x, t"});
  expect_check_error("max_batch_size: 4\ninput { name: \"x\" data_type: TYPE_FP64 dims: [4] }\n" + t,
                     {"input \"x\": data_type TYPE_FP64 but the model has TYPE_FP32"});
  expect_check_error("max_batch_size: 4\ninput { name: \"x\" data_type: TYPE_FP32 dims: [5] }\n" + t,
                     {"input \"x\": dims [5] but the model has [4]", "exclude the batch dim"});
  expect_check_error("max_batch_size: 4\ninput { name: \"x\" data_type: TYPE_FP32 dims: [-1] }\n" + t,
                     {"dims [-1] but the model has [4]"});
  // Listing the batch dim again is the classic mistake: the rank is then one too many.
  expect_check_error("max_batch_size: 4\ninput { name: \"x\" data_type: TYPE_FP32 dims: [-1, 4] }\n" + t,
                     {"dims [-1,4] but the model has [4]"});
  expect_check_error("max_batch_size: 4\ninput { name: \"x\" data_type: TYPE_FP32 dims: [4] optional: true }\n" + t,
                     {"input \"x\" is optional in the config but the model needs it"});
  expect_check_error("max_batch_size: 4\noutput { name: \"nope\" data_type: TYPE_FP32 dims: [4] }",
                     {"output \"nope\" is not an output of the model", "y, z"});
  expect_check_error("max_batch_size: 4\noutput { name: \"y\" data_type: TYPE_INT32 dims: [4] }",
                     {"output \"y\": data_type TYPE_INT32 but the model has TYPE_FP32"});
  expect_check_error("max_batch_size: 4\nkiln { build { input_range { name: \"nope\" min: [1] opt: [1] max: [1] } } }",
                     {"input_range \"nope\" is not an input"});
  expect_check_error(
      "max_batch_size: 4\nkiln { build { input_range { name: \"t\" min: [1, 1] opt: [1, 1] max: [1, 1] } } }",
      {"input_range \"t\" has 2 dims but the input has [-1]"});
  expect_check_error(
      "max_batch_size: 4\nmodel_warmup { name: \"w\" inputs { key: \"x\" value { data_type: TYPE_FP32 "
      "dims: [4] zero_data: true } } }",
      {"model_warmup \"w\": input \"t\" has no warmup data"});
  expect_check_error(
      "max_batch_size: 4\nmodel_warmup { name: \"w\" inputs { key: \"x\" value { data_type: TYPE_FP32 "
      "dims: [3] zero_data: true } } inputs { key: \"t\" value { data_type: TYPE_INT64 dims: [2] zero_data: true } } }",
      {"model_warmup input \"x\": dims [3] but the model has [4]"});
}

TEST_F(ServeModelCheck, BatchDimMustBeDynamicAndFitTheProfiles) {
  // A model whose first dim is fixed at 3 cannot take batches up to 8, but can with max_batch_size 3.
  ModelBuilder b(17);
  b.input("x", DType::kF32, Shape{Dim(3), Dim(4)});
  b.node("Relu", {"x"}, {"y"}, {}, "relu0");
  Model fixed = b.m;
  fixed.graph.types["y"] = TensorType{DType::kF32, Shape{Dim(3), Dim(4)}};
  ModelConfig c = parse_model_config("max_batch_size: 8", "repo/m/config.pbtxt", "m");
  try {
    check_against_model(c, fixed);
    ADD_FAILURE() << "a fixed batch dim of 3 passed for max_batch_size 8";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("input \"x\" has a fixed first dim of 3"), std::string::npos) << e.what();
  }
  ModelConfig three = parse_model_config("max_batch_size: 3", "repo/m/config.pbtxt", "m");
  EXPECT_NO_THROW(check_against_model(three, fixed));

  ModelBuilder s(17);
  s.input("x", DType::kF32, Shape{});
  s.node("Relu", {"x"}, {"y"}, {}, "relu0");
  s.m.graph.types["y"] = TensorType{DType::kF32, Shape{}};
  ModelConfig scalar = parse_model_config("max_batch_size: 2", "repo/m/config.pbtxt", "m");
  EXPECT_THROW(check_against_model(scalar, s.m), Error);

  // Engine profiles: x batches 1..4, t batches 2..16.
  EngineInfo info;
  OptimizationProfile p;
  p.inputs["x"] = ProfileDims{{1, 4}, {4, 4}, {4, 4}};
  p.inputs["t"] = ProfileDims{{1, 1}, {4, 8}, {16, 8}};
  info.profiles = {p};
  expect_check_error("max_batch_size: 8", {"max_batch_size 8 exceeds the engine's profiles", "input \"x\"", "up to 4"},
                     &info);
  ModelConfig ok = parse_model_config("max_batch_size: 4", "repo/m/config.pbtxt", "m");
  EXPECT_NO_THROW(check_against_model(ok, model_, &info));
  info.profiles[0].inputs["t"].min = {2, 1};
  expect_check_error("max_batch_size: 4", {"input \"t\" at batch 2", "a batch of 1 cannot run"}, &info);
  // A second profile that starts at 1 covers it.
  OptimizationProfile small;
  small.inputs["x"] = ProfileDims{{1, 4}, {1, 4}, {1, 4}};
  small.inputs["t"] = ProfileDims{{1, 1}, {1, 1}, {1, 8}};
  info.profiles.push_back(small);
  ModelConfig two = parse_model_config("max_batch_size: 4", "repo/m/config.pbtxt", "m");
  EXPECT_NO_THROW(check_against_model(two, model_, &info));
}

TEST(ServeConfig, LoadsFromAFile) {
  const fs::path dir = fs::temp_directory_path() / ("kiln_serve_cfg_file_" + std::to_string(::getpid()));
  fs::create_directories(dir / "m");
  std::ofstream(dir / "m" / "config.pbtxt") << "max_batch_size: 2\n\nbogus: 1\n";
  try {
    load_model_config(dir / "m" / "config.pbtxt", "m");
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find((dir / "m" / "config.pbtxt").string() + ":3:1: unknown field \"bogus\""),
              std::string::npos)
        << e.what();
  }
  try {
    load_model_config(dir / "m" / "missing.pbtxt", "m");
    ADD_FAILURE() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ErrorCode::kIo);
  }
  fs::remove_all(dir);
}

}  // namespace
