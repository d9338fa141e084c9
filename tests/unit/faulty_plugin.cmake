# The test-only plugin that replaces ai.onnx Tanh with a wrong kernel (tests/plugins/faulty_plugin.cpp):
# kiln debug reduce's tests load it with `kiln --plugin` to plant an accuracy bug.
add_library(kiln_test_faulty_plugin SHARED ${CMAKE_CURRENT_LIST_DIR}/../plugins/faulty_plugin.cpp)
target_include_directories(kiln_test_faulty_plugin PRIVATE ${PROJECT_SOURCE_DIR}/include)
set_target_properties(kiln_test_faulty_plugin PROPERTIES CXX_VISIBILITY_PRESET hidden)
add_dependencies(kiln_unit_tests kiln_test_faulty_plugin)
target_compile_definitions(kiln_unit_tests PRIVATE KILN_FAULTY_PLUGIN="$<TARGET_FILE:kiln_test_faulty_plugin>")
