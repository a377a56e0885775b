# ccache for every compiler when it is installed; the PCH needs its sloppiness settings, and
# CCACHE_BASEDIR makes the cache shared between checkouts in different directories (CI clones).
find_program(HETMOE_CCACHE ccache)
if(HETMOE_CCACHE AND NOT CMAKE_CXX_COMPILER_LAUNCHER)
  set(CMAKE_CXX_COMPILER_LAUNCHER
      ${CMAKE_COMMAND} -E env CCACHE_SLOPPINESS=pch_defines,time_macros,include_file_mtime,include_file_ctime
      CCACHE_COMPRESS=1 CCACHE_BASEDIR=${PROJECT_SOURCE_DIR} ${HETMOE_CCACHE})
  set(CMAKE_CUDA_COMPILER_LAUNCHER ${HETMOE_CCACHE})
endif()
