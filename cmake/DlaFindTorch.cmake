# dla_find_torch(): finds LibTorch >= 2.4.
# Order: Torch_DIR / CMAKE_PREFIX_PATH as given by the user, then a torch installed with pip, asking
# first the repository's own .venv (made by scripts/setup.sh), then python3 on the PATH.
function(dla_find_torch)
  find_package(Torch 2.4 QUIET)
  if(NOT Torch_FOUND)
    foreach(python "${CMAKE_CURRENT_SOURCE_DIR}/.venv/bin/python" python3)
      execute_process(COMMAND ${python} -c "import torch; print(torch.utils.cmake_prefix_path)"
                      OUTPUT_VARIABLE prefix OUTPUT_STRIP_TRAILING_WHITESPACE
                      RESULT_VARIABLE status ERROR_QUIET)
      if(status EQUAL 0 AND EXISTS "${prefix}")
        message(STATUS "dla: using the LibTorch of the pip-installed torch that ${python} sees")
        list(APPEND CMAKE_PREFIX_PATH "${prefix}")
        break()
      endif()
    endforeach()
    find_package(Torch 2.4 QUIET)
  endif()
  if(NOT Torch_FOUND)
    message(FATAL_ERROR
      "LibTorch >= 2.4 not found. Set Torch_DIR (…/share/cmake/Torch) or CMAKE_PREFIX_PATH, "
      "or run scripts/setup.sh, which installs a CPU LibTorch into .venv/.")
  endif()
  # Torch's package config puts its flags in TORCH_CXX_FLAGS; the imported targets carry the rest.
  set(Torch_VERSION ${Torch_VERSION} PARENT_SCOPE)
  set(Torch_DIR ${Torch_DIR} PARENT_SCOPE)
  set(TORCH_LIBRARIES ${TORCH_LIBRARIES} PARENT_SCOPE)
  set(TORCH_CUDA_LIBRARIES ${TORCH_CUDA_LIBRARIES} PARENT_SCOPE)
endfunction()
