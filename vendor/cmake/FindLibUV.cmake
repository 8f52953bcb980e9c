# FindLibUV — locate libuv 1.x (Debian: libuv1-dev).
# Defines the imported target LibUV::LibUV.
find_package(PkgConfig QUIET)
pkg_check_modules(PC_LibUV QUIET libuv)
find_path(LibUV_INCLUDE_DIR uv.h HINTS ${PC_LibUV_INCLUDE_DIRS})
find_library(LibUV_LIBRARY NAMES uv HINTS ${PC_LibUV_LIBRARY_DIRS})
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(LibUV
  REQUIRED_VARS LibUV_LIBRARY LibUV_INCLUDE_DIR VERSION_VAR PC_LibUV_VERSION)
if(LibUV_FOUND AND NOT TARGET LibUV::LibUV)
  add_library(LibUV::LibUV UNKNOWN IMPORTED)
  set_target_properties(LibUV::LibUV PROPERTIES
    IMPORTED_LOCATION "${LibUV_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${LibUV_INCLUDE_DIR}")
endif()
mark_as_advanced(LibUV_INCLUDE_DIR LibUV_LIBRARY)
