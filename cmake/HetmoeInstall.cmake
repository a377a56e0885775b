# `cmake --install`: headers, libhetmoe.so (and the oneDNN module next to it), the hetmoe
# executable, the configs, and a CMake package (hetmoeConfig.cmake, its version file and the
# exported target hetmoe::hetmoe) so that find_package(hetmoe 0.1 REQUIRED) and
# target_link_libraries(app hetmoe::hetmoe) are all an embedding project needs.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(HETMOE_CMAKE_DIR ${CMAKE_INSTALL_LIBDIR}/cmake/hetmoe)

# Installed binaries find their libraries next to themselves, and LibTorch where it was linked.
set_target_properties(hetmoe PROPERTIES INSTALL_RPATH "$ORIGIN" INSTALL_RPATH_USE_LINK_PATH TRUE)
set_target_properties(hetmoe_cli PROPERTIES INSTALL_RPATH "$ORIGIN/../${CMAKE_INSTALL_LIBDIR}"
                                            INSTALL_RPATH_USE_LINK_PATH TRUE)
target_include_directories(hetmoe PUBLIC $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)

install(TARGETS hetmoe EXPORT hetmoeTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(TARGETS hetmoe_cli RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
if(TARGET hetmoe_dnnl)
  install(TARGETS hetmoe_dnnl LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
endif()
install(DIRECTORY ${PROJECT_SOURCE_DIR}/include/hetmoe DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
        FILES_MATCHING PATTERN "*.h")
install(FILES ${PROJECT_BINARY_DIR}/include/hetmoe/core/version.h
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}/hetmoe/core)
install(DIRECTORY ${PROJECT_SOURCE_DIR}/configs/ DESTINATION ${CMAKE_INSTALL_DATADIR}/hetmoe/configs
        FILES_MATCHING PATTERN "*.yaml")

install(EXPORT hetmoeTargets NAMESPACE hetmoe:: DESTINATION ${HETMOE_CMAKE_DIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/hetmoeConfig.cmake.in
                              ${PROJECT_BINARY_DIR}/hetmoeConfig.cmake
                              INSTALL_DESTINATION ${HETMOE_CMAKE_DIR})
# Semantic versioning, 0.x rules: a new minor version may break the API, patches do not.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/hetmoeConfigVersion.cmake
                                 VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/hetmoeConfig.cmake ${PROJECT_BINARY_DIR}/hetmoeConfigVersion.cmake
        DESTINATION ${HETMOE_CMAKE_DIR})
