# FindEditline — locate libedit (BSD line editor) (Debian: libedit-dev).
# Defines the imported target Editline::Editline.
find_package(PkgConfig QUIET)
pkg_check_modules(PC_Editline QUIET libedit)
find_path(Editline_INCLUDE_DIR histedit.h HINTS ${PC_Editline_INCLUDE_DIRS})
find_library(Editline_LIBRARY NAMES edit HINTS ${PC_Editline_LIBRARY_DIRS})
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(Editline
  REQUIRED_VARS Editline_LIBRARY Editline_INCLUDE_DIR VERSION_VAR PC_Editline_VERSION)
if(Editline_FOUND AND NOT TARGET Editline::Editline)
  add_library(Editline::Editline UNKNOWN IMPORTED)
  set_target_properties(Editline::Editline PROPERTIES
    IMPORTED_LOCATION "${Editline_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${Editline_INCLUDE_DIR}")
endif()
mark_as_advanced(Editline_INCLUDE_DIR Editline_LIBRARY)
