# FindYaml — locate libyaml (Debian: libyaml-dev).
# Defines the imported target Yaml::Yaml.
find_package(PkgConfig QUIET)
pkg_check_modules(PC_Yaml QUIET yaml-0.1)
find_path(Yaml_INCLUDE_DIR yaml.h HINTS ${PC_Yaml_INCLUDE_DIRS})
find_library(Yaml_LIBRARY NAMES yaml HINTS ${PC_Yaml_LIBRARY_DIRS})
include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(Yaml
  REQUIRED_VARS Yaml_LIBRARY Yaml_INCLUDE_DIR VERSION_VAR PC_Yaml_VERSION)
if(Yaml_FOUND AND NOT TARGET Yaml::Yaml)
  add_library(Yaml::Yaml UNKNOWN IMPORTED)
  set_target_properties(Yaml::Yaml PROPERTIES
    IMPORTED_LOCATION "${Yaml_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${Yaml_INCLUDE_DIR}")
endif()
mark_as_advanced(Yaml_INCLUDE_DIR Yaml_LIBRARY)
