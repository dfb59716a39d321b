# Every third-party dependency, found once. All come from Debian packages
# (scripts/setup.sh installs them) or the CUDA toolkit.
find_package(Threads REQUIRED)
find_package(absl CONFIG REQUIRED)
find_package(yaml-cpp CONFIG REQUIRED)
if(TARGET yaml-cpp AND NOT TARGET yaml-cpp::yaml-cpp)
  add_library(yaml-cpp::yaml-cpp ALIAS yaml-cpp)  # same code builds with yaml-cpp >= 0.8
endif()
find_package(nlohmann_json CONFIG REQUIRED)
find_package(GTest CONFIG REQUIRED)
# Open MPI (Debian): the mpi comm backends; MPIEXEC_EXECUTABLE runs the mpi tests.
find_package(MPI REQUIRED COMPONENTS C)
# UCX (Debian libucx-dev): the ucx comm backends. Through pkg-config, whose
# target links ucp, uct, ucs and ucm (UCX's CMake config's ucx::ucp lacks ucs).
find_package(PkgConfig REQUIRED)
pkg_check_modules(UCX REQUIRED IMPORTED_TARGET ucx)

if(HERD_WITH_CUDA)
  find_package(CUDAToolkit REQUIRED)
endif()
if(HERD_WITH_NCCL)
  if(NOT HERD_WITH_CUDA)
    message(FATAL_ERROR "HERD_WITH_NCCL needs HERD_WITH_CUDA")
  endif()
  # NCCL ships no CMake config and no .pc file.
  find_path(NCCL_INCLUDE_DIR nccl.h HINTS ${CUDAToolkit_INCLUDE_DIRS})
  find_library(NCCL_LIBRARY nccl HINTS ${CUDAToolkit_LIBRARY_DIR})
  if(NOT NCCL_INCLUDE_DIR OR NOT NCCL_LIBRARY)
    message(FATAL_ERROR "HERD_WITH_NCCL=ON but nccl.h / libnccl were not found")
  endif()
  add_library(nccl::nccl UNKNOWN IMPORTED)
  set_target_properties(nccl::nccl PROPERTIES IMPORTED_LOCATION "${NCCL_LIBRARY}"
                        INTERFACE_INCLUDE_DIRECTORIES "${NCCL_INCLUDE_DIR}")
endif()

# Serving: prometheus-cpp's registry and text serializer; cpp-httplib (Debian
# builds it as a shared library with a .pc file, no CMake config).
find_package(prometheus-cpp CONFIG REQUIRED)
pkg_check_modules(HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)
