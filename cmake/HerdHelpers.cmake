# Small helpers so every target is declared the same way.
#
#   herd_cc_library(NAME herd_x SRCS a.cc b.cc DEPS herd_core absl::status)
#   herd_cc_test(NAME x_test SRCS x_test.cc DEPS herd_x LABELS unit)

set(HERD_WARNINGS -Wall -Wextra -Wno-unused-parameter -Wno-missing-field-initializers)

if(HERD_SANITIZE)
  if(NOT HERD_SANITIZE MATCHES "^(address|undefined|thread)$")
    message(FATAL_ERROR "HERD_SANITIZE must be address, undefined or thread, got '${HERD_SANITIZE}'")
  endif()
  add_compile_options($<$<COMPILE_LANGUAGE:CXX>:-fsanitize=${HERD_SANITIZE}>
                      $<$<COMPILE_LANGUAGE:CXX>:-fno-omit-frame-pointer>)
  add_link_options(-fsanitize=${HERD_SANITIZE})
endif()

function(herd_cc_library)
  cmake_parse_arguments(ARG "" "NAME" "SRCS;DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(${ARG_NAME} STATIC ${ARG_SRCS})
  target_include_directories(${ARG_NAME} PUBLIC ${PROJECT_SOURCE_DIR})
  target_compile_options(${ARG_NAME} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${HERD_WARNINGS}>)
  target_link_libraries(${ARG_NAME} PUBLIC ${ARG_DEPS} PRIVATE ${ARG_PRIVATE_DEPS})
endfunction()

# Tests run from the source tree's root so that tests/data/... paths resolve;
# HERD_SOURCE_DIR and HERD_BINARY_DIR are also exported for tests that need them.
function(herd_cc_test)
  cmake_parse_arguments(ARG "" "NAME;TIMEOUT" "SRCS;DEPS;LABELS" ${ARGN})
  add_executable(${ARG_NAME} ${ARG_SRCS})
  target_compile_options(${ARG_NAME} PRIVATE ${HERD_WARNINGS})
  target_link_libraries(${ARG_NAME} PRIVATE ${ARG_DEPS} GTest::gtest GTest::gmock GTest::gtest_main)
  target_compile_definitions(${ARG_NAME} PRIVATE
    HERD_SOURCE_DIR="${PROJECT_SOURCE_DIR}" HERD_BINARY_DIR="${PROJECT_BINARY_DIR}")
  if(NOT ARG_LABELS)
    set(ARG_LABELS unit)
  endif()
  if(NOT ARG_TIMEOUT)
    set(ARG_TIMEOUT 300)
  endif()
  gtest_discover_tests(${ARG_NAME}
    WORKING_DIRECTORY ${PROJECT_SOURCE_DIR}
    DISCOVERY_MODE PRE_TEST
    PROPERTIES LABELS "${ARG_LABELS}" TIMEOUT ${ARG_TIMEOUT})
endfunction()

include(GoogleTest)
