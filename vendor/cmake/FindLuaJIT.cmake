# FindLuaJIT — locate LuaJIT 2.1 (Debian: libluajit2-5.1-dev).
# Defines the imported target LuaJIT::LuaJIT and LUAJIT_EXECUTABLE.
find_package(PkgConfig QUIET)
pkg_check_modules(PC_LUAJIT QUIET luajit)
find_path(LUAJIT_INCLUDE_DIR luajit.h
  HINTS ${PC_LUAJIT_INCLUDE_DIRS} PATH_SUFFIXES luajit-2.1)
find_library(LUAJIT_LIBRARY NAMES luajit-5.1 HINTS ${PC_LUAJIT_LIBRARY_DIRS})
find_program(LUAJIT_EXECUTABLE NAMES luajit)
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(LuaJIT
  REQUIRED_VARS LUAJIT_LIBRARY LUAJIT_INCLUDE_DIR LUAJIT_EXECUTABLE
  VERSION_VAR PC_LUAJIT_VERSION)
if(LuaJIT_FOUND AND NOT TARGET LuaJIT::LuaJIT)
  add_library(LuaJIT::LuaJIT UNKNOWN IMPORTED)
  set_target_properties(LuaJIT::LuaJIT PROPERTIES
    IMPORTED_LOCATION "${LUAJIT_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${LUAJIT_INCLUDE_DIR}")
endif()
mark_as_advanced(LUAJIT_INCLUDE_DIR LUAJIT_LIBRARY)
