# Fix-ups needed when building ROS 2 interfaces against the ROS 2 PyPI wheels.
# On a regular ROS 2 install (apt, source) every step here is a no-op.

# Where the generated Python modules go: inside a pip build (scikit-build-core), the wheel's
# platlib relative to the data dir that is the install prefix; otherwise ament's default.
macro(omni_ros_python_install_dir)
  if(DEFINED SKBUILD_PLATLIB_DIR AND DEFINED SKBUILD_DATA_DIR)
    file(RELATIVE_PATH PYTHON_INSTALL_DIR "${SKBUILD_DATA_DIR}" "${SKBUILD_PLATLIB_DIR}")
  endif()
endmacro()

# The wheels' exported *__rosidl_generator_py targets carry the include path of the machine
# that built them (/opt/python/...). Point them at this interpreter's and NumPy's headers.
function(omni_ros_fix_generator_py_includes)
  find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Module NumPy)
  foreach(dep ${ARGN})
    set(target "${dep}::${dep}__rosidl_generator_py")
    if(TARGET ${target})
      get_target_property(dirs ${target} INTERFACE_INCLUDE_DIRECTORIES)
      set(fixed "")
      set(changed FALSE)
      foreach(dir ${dirs})
        if(NOT EXISTS "${dir}")
          set(changed TRUE)
        else()
          list(APPEND fixed "${dir}")
        endif()
      endforeach()
      if(changed)
        list(APPEND fixed ${Python3_INCLUDE_DIRS} ${Python3_NumPy_INCLUDE_DIRS})
        set_target_properties(${target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${fixed}")
      endif()
    endif()
  endforeach()
endfunction()

# A virtual environment inside the source tree (./.venv) puts NumPy's headers under the source
# directory, which CMake refuses in an exported target's interface. Our generated Python
# extension only needs them to compile, so keep them private.
function(omni_ros_private_source_tree_includes target)
  if(NOT TARGET ${target})
    return()
  endif()
  get_target_property(dirs ${target} INTERFACE_INCLUDE_DIRECTORIES)
  if(NOT dirs)
    return()
  endif()
  set(kept "")
  foreach(dir ${dirs})
    string(FIND "${dir}" "${CMAKE_SOURCE_DIR}/" position)
    if(NOT position EQUAL 0)
      list(APPEND kept "${dir}")
    else()
      target_include_directories(${target} PRIVATE "${dir}")
    endif()
  endforeach()
  set_target_properties(${target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${kept}")
endfunction()
